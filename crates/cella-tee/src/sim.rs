//! The simulated TEE: the default where no hardware is found. Its evidence has the shape of a
//! real quote and goes through the same verifier and policy code, but it is signed by a
//! platform key that lives on the machine (`<data dir>/sim-platform.key`), so it proves nothing
//! about hardware: anyone with that file can forge it. Verifiers refuse it unless a policy
//! says `allow_simulated = true`, and every output labels it SIMULATED.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256, Sha384};

use crate::{
    AttestError, Attester, Claims, Evidence, Measurement, ReportData, SealingKeys, TeeType,
    Verifier, VerifyError,
};

const MAGIC: &[u8; 8] = b"CELLASIM";
const VERSION: u16 = 1;
/// magic, version, tee, svn, measurement, report data, platform id, signature
const QUOTE_LEN: usize = 8 + 2 + 1 + 4 + 48 + 64 + 32 + 64;
const SIGNED_LEN: usize = QUOTE_LEN - 64;

/// The simulated platform's secrets: an ed25519 signing key (its public half is the trust
/// anchor) and the root of sealing keys.
pub struct SimPlatform {
    signing: SigningKey,
    sealing_root: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulated platform key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "simulated platform key {0} is damaged (expected 64 bytes); move it away to create a new \
         platform (clients must then trust the new anchor)"
    )]
    Damaged(PathBuf),
}

/// The files a simulated platform keeps in its directory.
pub struct SimPlatformFiles;

impl SimPlatformFiles {
    /// The secret platform key (mode 0600).
    pub const KEY: &'static str = "sim-platform.key";
    /// The public key: the trust anchor clients need.
    pub const ANCHOR: &'static str = "sim-platform.pub";
}

impl SimPlatform {
    /// Loads the platform from `dir`, creating it (0600 key file, public anchor file) the
    /// first time.
    pub fn load_or_create(dir: &Path) -> Result<Self, SimError> {
        let key_path = dir.join(SimPlatformFiles::KEY);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SimError::Io { path, source }
        };
        let platform = match std::fs::read(&key_path) {
            Ok(bytes) => {
                let bytes: [u8; 64] = bytes
                    .try_into()
                    .map_err(|_| SimError::Damaged(key_path.clone()))?;
                let mut seed = [0u8; 32];
                let mut sealing_root = [0u8; 32];
                seed.copy_from_slice(&bytes[..32]);
                sealing_root.copy_from_slice(&bytes[32..]);
                SimPlatform {
                    signing: SigningKey::from_bytes(&seed),
                    sealing_root,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let mut secret = [0u8; 64];
                getrandom::fill(&mut secret).expect("the operating system's random generator");
                create_private(&key_path, &secret).map_err(io(&key_path))?;
                Self::load_or_create(dir)?
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let anchor_path = dir.join(SimPlatformFiles::ANCHOR);
        let anchor = format!("{}\n", platform.anchor_hex());
        // Written only when it differs: nodes sharing the platform read it while others start.
        if std::fs::read_to_string(&anchor_path).ok().as_deref() != Some(anchor.as_str()) {
            std::fs::write(&anchor_path, anchor).map_err(io(&anchor_path))?;
        }
        Ok(platform)
    }

    /// The public key verifiers must trust to accept this platform's evidence, as hex.
    pub fn anchor_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    fn platform_id(&self) -> [u8; 32] {
        Sha256::digest(self.signing.verifying_key().as_bytes()).into()
    }
}

/// Creates `path` holding `bytes` (owner-only), whole or not at all: nodes that share a
/// simulated platform may start together, and none may read a half-written key. If another
/// process created it first, theirs stands.
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).expect("the operating system's random generator");
    let partial = path.with_extension(format!("partial-{}", hex::encode(suffix)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    // A hard link never replaces an existing file: the first key made is the key.
    let linked = written.and_then(|()| std::fs::hard_link(&partial, path));
    let _ = std::fs::remove_file(&partial);
    match linked {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// SHA-384 of a file: how the simulated TEE measures the running executable (a changed binary
/// gives a different measurement).
pub fn measure_file(path: &Path) -> std::io::Result<Measurement> {
    let bytes = std::fs::read(path)?;
    Ok(Measurement(Sha384::digest(&bytes).into()))
}

/// The simulated attester for one platform build.
pub struct SimAttester {
    platform: SimPlatform,
    measurement: Measurement,
    security_version: u32,
}

impl SimAttester {
    pub fn new(platform: SimPlatform, measurement: Measurement, security_version: u32) -> Self {
        SimAttester {
            platform,
            measurement,
            security_version,
        }
    }

    pub fn anchor_hex(&self) -> String {
        self.platform.anchor_hex()
    }
}

impl Attester for SimAttester {
    fn tee(&self) -> TeeType {
        TeeType::Sim
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn attest(&self, report_data: &ReportData) -> Result<Evidence, AttestError> {
        let mut quote = Vec::with_capacity(QUOTE_LEN);
        quote.extend_from_slice(MAGIC);
        quote.extend_from_slice(&VERSION.to_le_bytes());
        quote.push(TeeType::Sim.code());
        quote.extend_from_slice(&self.security_version.to_le_bytes());
        quote.extend_from_slice(&self.measurement.0);
        quote.extend_from_slice(&report_data.0);
        quote.extend_from_slice(&self.platform.platform_id());
        let signature = self.platform.signing.sign(&quote);
        quote.extend_from_slice(&signature.to_bytes());
        debug_assert_eq!(quote.len(), QUOTE_LEN);
        Ok(Evidence {
            tee: TeeType::Sim,
            quote,
            collateral: Vec::new(),
        })
    }
}

impl SealingKeys for SimAttester {
    fn sealing_root(&self) -> [u8; 32] {
        self.platform.sealing_root
    }
    fn measurement(&self) -> Measurement {
        self.measurement
    }
}

/// Verifies simulated evidence against trusted platform keys.
pub struct SimVerifier {
    anchors: Vec<VerifyingKey>,
}

impl SimVerifier {
    /// `anchors`: hex ed25519 public keys of simulated platforms to trust.
    pub fn new<S: AsRef<str>>(anchors: &[S]) -> Result<Self, VerifyError> {
        let anchors = anchors
            .iter()
            .map(|a| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(a.as_ref().trim(), &mut bytes)
                    .ok()
                    .and_then(|()| VerifyingKey::from_bytes(&bytes).ok())
                    .ok_or_else(|| {
                        VerifyError::Malformed(format!(
                            "trust anchor `{}` is not an ed25519 public key in hex",
                            a.as_ref().chars().take(80).collect::<String>()
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(SimVerifier { anchors })
    }
}

impl Verifier for SimVerifier {
    fn tee(&self) -> TeeType {
        TeeType::Sim
    }

    fn verify(
        &self,
        evidence: &Evidence,
        _now: std::time::SystemTime,
    ) -> Result<Claims, VerifyError> {
        let quote = &evidence.quote;
        if evidence.tee != TeeType::Sim {
            return Err(VerifyError::NoVerifier(evidence.tee));
        }
        if quote.len() != QUOTE_LEN {
            return Err(VerifyError::Malformed(format!(
                "a simulated quote has {QUOTE_LEN} bytes, this one {}",
                quote.len()
            )));
        }
        if &quote[..8] != MAGIC || quote[8..10] != VERSION.to_le_bytes() {
            return Err(VerifyError::Malformed(
                "not a version 1 simulated quote".into(),
            ));
        }
        let (signed, signature) = quote.split_at(SIGNED_LEN);
        let signature = Signature::from_slice(signature)
            .map_err(|_| VerifyError::Malformed("bad signature encoding".into()))?;
        if !self
            .anchors
            .iter()
            .any(|key| key.verify(signed, &signature).is_ok())
        {
            return Err(VerifyError::BadSignature { tee: TeeType::Sim });
        }
        // Only signed bytes are read from here on.
        let tee = TeeType::from_code(signed[10])
            .filter(|t| *t == TeeType::Sim)
            .ok_or_else(|| VerifyError::Malformed("the signed TEE type is not `sim`".into()))?;
        let mut measurement = [0u8; 48];
        measurement.copy_from_slice(&signed[15..63]);
        let mut report_data = [0u8; 64];
        report_data.copy_from_slice(&signed[63..127]);
        Ok(Claims {
            tee,
            simulated: true,
            measurement: Measurement(measurement),
            report_data,
            security_version: u32::from_le_bytes(signed[11..15].try_into().expect("4 bytes")),
            platform_id: hex::encode(&signed[127..159]),
            tcb_status: None,
            advisories: Vec::new(),
            details: Default::default(),
            snp: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report_data_for;

    fn attester(dir: &Path) -> SimAttester {
        let platform = SimPlatform::load_or_create(dir).unwrap();
        SimAttester::new(platform, Measurement([7; 48]), 3)
    }

    #[test]
    fn evidence_verifies_with_the_right_anchor_only() {
        let dir = tempfile::tempdir().unwrap();
        let attester = attester(dir.path());
        let rd = report_data_for(b"key", b"nonce");
        let evidence = attester.attest(&rd).unwrap();
        let now = std::time::SystemTime::now();

        let claims = SimVerifier::new(&[attester.anchor_hex()])
            .unwrap()
            .verify(&evidence, now)
            .unwrap();
        assert!(claims.simulated);
        assert_eq!(claims.measurement, Measurement([7; 48]));
        assert_eq!(claims.report_data, rd.0);
        assert_eq!(claims.security_version, 3);

        let other = tempfile::tempdir().unwrap();
        let stranger = SimPlatform::load_or_create(other.path())
            .unwrap()
            .anchor_hex();
        assert_eq!(
            SimVerifier::new(&[stranger])
                .unwrap()
                .verify(&evidence, now),
            Err(VerifyError::BadSignature { tee: TeeType::Sim })
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let attester = attester(dir.path());
        let evidence = attester.attest(&report_data_for(b"k", b"n")).unwrap();
        let verifier = SimVerifier::new(&[attester.anchor_hex()]).unwrap();
        let now = std::time::SystemTime::now();
        for i in 0..evidence.quote.len() {
            let mut bad = evidence.clone();
            bad.quote[i] ^= 0x01;
            assert!(
                verifier.verify(&bad, now).is_err(),
                "byte {i} flipped was accepted"
            );
        }
        let mut short = evidence.clone();
        short.quote.pop();
        assert!(matches!(
            verifier.verify(&short, now),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn the_platform_persists_and_its_key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = SimPlatform::load_or_create(dir.path())
            .unwrap()
            .anchor_hex();
        let again = SimPlatform::load_or_create(dir.path())
            .unwrap()
            .anchor_hex();
        assert_eq!(first, again);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SimPlatformFiles::KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let anchor = std::fs::read_to_string(dir.path().join(SimPlatformFiles::ANCHOR)).unwrap();
        assert_eq!(anchor.trim(), first);
    }
}
