//! Offline commands for signed bundles: `keygen`, `bundle build`, `bundle sign`, `bundle
//! inspect`. Nothing here talks to a node.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cella_bundle::{Bundle, BundleKind, Manifest, ManifestFile, SigningKey};

use crate::Format;

/// Where `cella keygen` puts keys unless told otherwise: `<config dir>/cella/keys`.
pub(crate) fn default_key_dir() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cella")
        .join("keys")
}

/// The signing key to use: `--key FILE`/`CELLA_KEY`, else `default.key` in the key directory.
pub(crate) fn signing_key(path: Option<&Path>) -> anyhow::Result<SigningKey> {
    let path = path
        .map(Path::to_owned)
        .unwrap_or_else(|| default_key_dir().join("default.key"));
    if !path.exists() {
        bail!(
            "no signing key at {}; make one with `cella keygen` and register its public half \
             with `cella keys add`",
            path.display()
        );
    }
    Ok(SigningKey::load(&path)?)
}

pub(crate) fn keygen(name: &str, dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = dir.map(Path::to_owned).unwrap_or_else(default_key_dir);
    let key = SigningKey::generate();
    let (secret, public) = key.save(&dir, name)?;
    let verifying = key.verifying_key();
    println!(
        "secret key: {} (mode 0600; never share it)",
        secret.display()
    );
    println!("public key: {} ({})", public.display(), verifying.id());
    println!("  {verifying}");
    println!(
        "register it with the node: cella keys add {}",
        public.display()
    );
    Ok(())
}

/// What `bundle build` makes a bundle from: a directory with `cella.toml`, or one `.wasm`.
pub(crate) struct BuildArgs<'a> {
    pub source: &'a Path,
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
    pub limits: &'a [String],
    pub output: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub sign: bool,
}

pub(crate) fn build(args: BuildArgs<'_>) -> anyhow::Result<()> {
    let (manifest, payload) = if args.source.is_dir() {
        if args.name.is_some() || args.version.is_some() || !args.limits.is_empty() {
            bail!("a directory's cella.toml says name, version and limits; drop the flags");
        }
        from_directory(args.source)?
    } else {
        from_wasm(args.source, args.name, args.version, args.limits)?
    };
    let mut bundle = Bundle::new(manifest, payload);
    if args.sign {
        bundle.sign(&signing_key(args.key)?);
    }
    let output = args.output.map(Path::to_owned).unwrap_or_else(|| {
        PathBuf::from(format!(
            "{}-{}.cella",
            bundle.manifest.name, bundle.manifest.version
        ))
    });
    std::fs::write(&output, bundle.encode())
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "built {} ({} {} {}, {} bytes of payload) {}",
        output.display(),
        bundle.manifest.name,
        bundle.manifest.version,
        bundle.manifest.kind,
        bundle.payload.len(),
        bundle.hash()
    );
    if bundle.signature.is_none() {
        println!(
            "unsigned: sign it with `cella bundle sign {}`",
            output.display()
        );
    }
    Ok(())
}

fn from_directory(dir: &Path) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let manifest_path = dir.join("cella.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let file =
        ManifestFile::parse(&text).with_context(|| format!("in {}", manifest_path.display()))?;
    let payload_path = dir.join(&file.payload);
    let payload = std::fs::read(&payload_path).with_context(|| {
        format!(
            "cannot read the payload {} that `payload` in {} names",
            payload_path.display(),
            manifest_path.display()
        )
    })?;
    Ok((file.manifest()?, payload))
}

fn from_wasm(
    path: &Path,
    name: Option<&str>,
    version: Option<&str>,
    limits: &[String],
) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let payload = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(name), Some(version)) = (name, version) else {
        bail!(
            "a bundle of a single file needs --name and --version (or put a cella.toml beside it \
             and build the directory)"
        );
    };
    let kind = BundleKind::detect(&payload)
        .with_context(|| format!("{} is not WebAssembly (no `\\0asm` header)", path.display()))?;
    let mut manifest_limits = cella_core::LimitsOverride::default();
    for setting in limits {
        manifest_limits.set(setting)?;
    }
    Ok((
        Manifest {
            name: cella_core::FunctionName::new(name)?,
            version: version
                .parse()
                .with_context(|| format!("--version `{version}` is not semver (e.g. 1.2.0)"))?,
            kind,
            plugins: Vec::new(),
            permissions: Default::default(),
            limits: manifest_limits,
        },
        payload,
    ))
}

/// Reads a bundle file for the offline commands (any payload size).
fn read_bundle(path: &Path) -> anyhow::Result<Bundle> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Bundle::decode(&bytes, u64::MAX).with_context(|| format!("{}", path.display()))
}

pub(crate) fn sign(path: &Path, key: Option<&Path>, output: Option<&Path>) -> anyhow::Result<()> {
    let mut bundle = read_bundle(path)?;
    let key = signing_key(key)?;
    bundle.sign(&key);
    let output = output.unwrap_or(path);
    std::fs::write(output, bundle.encode())
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "signed {} {} with {}",
        output.display(),
        bundle.hash(),
        key.verifying_key().id()
    );
    Ok(())
}

/// ✔/✗ on the bundle's encoding, hash and signature; exits non-zero on ✗.
pub(crate) fn inspect(path: &Path, format: Format) -> anyhow::Result<()> {
    let bundle = read_bundle(path)?;
    let verdict = bundle.verify_signature();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "manifest": bundle.manifest,
                "hash": bundle.hash(),
                "payload_bytes": bundle.payload.len(),
                "signer": verdict.as_ref().ok().map(|k| k.to_string()),
                "signer_id": verdict.as_ref().ok().map(|k| k.id()),
                "signature_ok": verdict.is_ok(),
                "error": verdict.as_ref().err().map(|e| e.to_string()),
            }))?
        ),
        Format::Text => {
            let m = &bundle.manifest;
            println!("bundle {}", path.display());
            println!("  name:     {}", m.name);
            println!("  version:  {}", m.version);
            println!("  kind:     {}", m.kind);
            println!("  payload:  {} bytes", bundle.payload.len());
            println!("  limits:   {}", serde_json::to_string(&m.limits)?);
            println!("✔ encoding  canonical, nothing trailing");
            println!("✔ hash      {}", bundle.hash());
            match &verdict {
                Ok(signer) => println!("✔ signature by {} ({signer})", signer.id()),
                Err(e) => println!("✗ signature {e}"),
            }
        }
    }
    match verdict {
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
