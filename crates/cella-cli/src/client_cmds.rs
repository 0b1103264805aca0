//! The commands that talk to a running node through the HTTP API.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use cella_client::{Client, ClientError, Page, Paging};
use cella_core::FunctionRecord;
use serde_json::json;

use crate::{Format, PageArgs, Remote};

/// A client for `remote`, once the node has passed verification under the policy: the token
/// comes from --token / CELLA_TOKEN, else from the admin token file of a local node's data
/// directory.
async fn client(remote: &Remote) -> anyhow::Result<Client> {
    Ok(attested_client(remote).await?.0)
}

/// A client for the node once verified, and the attestation report it passed with.
async fn attested_client(
    remote: &Remote,
) -> anyhow::Result<(Client, Option<cella_client::AttestationReport>)> {
    let token = match &remote.token {
        Some(token) => Some(token.clone()),
        None => {
            let dir = remote
                .data_dir
                .clone()
                .unwrap_or_else(crate::config::default_data_dir);
            let path = crate::up::admin_token_path(&dir);
            std::fs::read_to_string(&path)
                .ok()
                .map(|t| t.trim().to_owned())
        }
    };
    crate::tee_cmds::verified_client(remote, token).await
}

/// Turns API errors into one readable line plus the function's log, if any.
fn explain(e: ClientError) -> anyhow::Error {
    if let ClientError::Api { log: Some(log), .. } = &e {
        let log = log.trim_end();
        if !log.is_empty() {
            return anyhow::anyhow!("{e}\nfunction log (tail):\n{log}");
        }
    }
    if e.code() == Some("unauthenticated") {
        return anyhow::anyhow!(
            "{e}\nset CELLA_TOKEN (or --token) to a tenant's token, or run on the node's machine \
             where `cella up` saved the admin token"
        );
    }
    e.into()
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) async fn tenant_create(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let tenant = client(remote)
        .await?
        .create_tenant(name)
        .await
        .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&json!({ "name": tenant.name, "token": tenant.token })),
        Format::Text => {
            println!("created tenant `{}`; its token (shown once):", tenant.name);
            println!("  {}", tenant.token);
            Ok(())
        }
    }
}

pub(crate) async fn tenant_rotate(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let tenant = client(remote)
        .await?
        .rotate_token(name)
        .await
        .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&json!({ "name": tenant.name, "token": tenant.token })),
        Format::Text => {
            println!(
                "new token for `{}` (the old one no longer works):",
                tenant.name
            );
            println!("  {}", tenant.token);
            Ok(())
        }
    }
}

/// Fetches what a list command prints: the page `--limit`/`--cursor` ask for, else every
/// page (then sorted by `key`, as pages come in no particular order).
async fn listed<T>(
    page: &PageArgs,
    fetch: impl AsyncFn(&Paging) -> Result<Page<T>, cella_client::ClientError>,
    key: impl FnMut(&T) -> String,
) -> anyhow::Result<Page<T>> {
    if page.limit.is_none() && page.cursor.is_none() {
        let mut items = cella_client::every_page(fetch).await.map_err(explain)?;
        items.sort_by_key(key);
        return Ok(Page {
            items,
            next_cursor: None,
        });
    }
    let paging = Paging {
        cursor: page.cursor.clone(),
        limit: page.limit,
    };
    fetch(&paging).await.map_err(explain)
}

/// Prints a listed page as JSON: the items alone when every page was asked for, else the page
/// with its `next_cursor`.
fn print_listed<T: serde::Serialize>(page: &PageArgs, listed: &Page<T>) -> anyhow::Result<()> {
    if page.limit.is_none() && page.cursor.is_none() {
        print_json(&listed.items)
    } else {
        print_json(listed)
    }
}

/// After a page printed as text: how to ask for the next one.
fn print_more(next: &Option<String>) {
    if let Some(next) = next {
        println!("more: repeat with --cursor {next}");
    }
}

pub(crate) async fn tenant_list(remote: &Remote, page: &PageArgs) -> anyhow::Result<()> {
    let c = client(remote).await?;
    let tenants = listed(
        page,
        async |p: &Paging| c.tenants_page(p).await,
        |t| t.name.clone(),
    )
    .await?;
    match remote.format {
        Format::Json => print_listed(page, &tenants),
        Format::Text => {
            println!("{:<24} CREATED", "TENANT");
            for t in &tenants.items {
                println!("{:<24} {}", t.name, t.created_at);
            }
            print_more(&tenants.next_cursor);
            Ok(())
        }
    }
}

/// How `cella deploy` bundles a file that is not a bundle yet.
pub(crate) struct DeployArgs<'a> {
    pub limits: &'a [String],
    pub allow: Vec<cella_core::Permission>,
    pub key: Option<&'a Path>,
    /// The plug-in the function is made from (for a .js file, default `quickjs`).
    pub plugin: Option<&'a str>,
}

fn is_javascript(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("js" | "mjs")
    )
}

pub(crate) async fn deploy(
    remote: &Remote,
    name: &str,
    file: &Path,
    how: DeployArgs<'_>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = client(remote).await?;
    let record = if cella_bundle::looks_like_bundle(&bytes) {
        if !how.limits.is_empty() {
            anyhow::bail!("a bundle's limits are in its signed manifest; drop --limit");
        }
        if !how.allow.is_empty() {
            anyhow::bail!(
                "a bundle's permissions are in its signed manifest ([permissions]); drop --allow"
            );
        }
        if how.plugin.is_some() {
            anyhow::bail!("a bundle's plug-ins are in its signed manifest; drop --plugin");
        }
        client.deploy_bundle(name, bytes).await
    } else {
        let client = client.with_signing_key(crate::bundle_cmds::signing_key(how.key)?);
        let mut options = cella_client::DeployOptions::from(how.limits);
        for permission in how.allow {
            options.permissions.grant(permission);
        }
        match (is_javascript(file), how.plugin) {
            (true, engine) => {
                let engine = engine.unwrap_or("quickjs");
                client.deploy_js(name, bytes, engine, options).await
            }
            (false, Some(plugin)) => {
                let kind = cella_bundle::BundleKind::WasiCommand;
                client
                    .deploy_from_plugin(name, kind, plugin, bytes, options)
                    .await
            }
            (false, None) => client.deploy(name, bytes, options).await,
        }
    }
    .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&record),
        Format::Text => {
            println!(
                "deployed `{}` {} ({}, {} bytes) {} signed by {}",
                record.name, record.version, record.kind, record.size, record.hash, record.signer
            );
            Ok(())
        }
    }
}

pub(crate) async fn plugin_add(remote: &Remote, name: &str, file: &Path) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let plugin = client(remote)
        .await?
        .add_plugin(name, wasm)
        .await
        .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&plugin),
        Format::Text => {
            println!(
                "plug-in `{}` {} ({} bytes), image {} ({} bytes)",
                plugin.name, plugin.hash, plugin.size, plugin.image, plugin.image_size
            );
            Ok(())
        }
    }
}

pub(crate) async fn plugin_list(remote: &Remote, page: &PageArgs) -> anyhow::Result<()> {
    let c = client(remote).await?;
    let plugins = listed(
        page,
        async |p: &Paging| c.plugins_page(p).await,
        |p| p.name.to_string(),
    )
    .await?;
    match remote.format {
        Format::Json => print_listed(page, &plugins),
        Format::Text => {
            println!("{:<16} {:<72} IMAGE", "NAME", "HASH");
            for p in &plugins.items {
                println!("{:<16} {:<72} {}", p.name, p.hash, p.image);
            }
            print_more(&plugins.next_cursor);
            Ok(())
        }
    }
}

pub(crate) async fn keys_add(remote: &Remote, key: &str) -> anyhow::Result<()> {
    let public = if key.starts_with("ed25519:") {
        key.to_owned()
    } else {
        std::fs::read_to_string(key)
            .with_context(|| format!("cannot read the public key file {key}"))?
            .trim()
            .to_owned()
    };
    let added = client(remote)
        .await?
        .add_key(&public)
        .await
        .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&added),
        Format::Text => {
            println!("registered {} for tenant `{}`", added.id, added.tenant);
            Ok(())
        }
    }
}

pub(crate) async fn keys_list(remote: &Remote, page: &PageArgs) -> anyhow::Result<()> {
    let c = client(remote).await?;
    let keys = listed(
        page,
        async |p: &Paging| c.keys_page(p).await,
        |k| k.id.clone(),
    )
    .await?;
    match remote.format {
        Format::Json => print_listed(page, &keys),
        Format::Text => {
            println!("{:<26} {:<22} STATUS", "KEY", "ADDED");
            for key in &keys.items {
                let status = match &key.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "active".to_owned(),
                };
                println!("{:<26} {:<22} {status}", key.id, key.added_at);
            }
            print_more(&keys.next_cursor);
            Ok(())
        }
    }
}

pub(crate) async fn keys_revoke(remote: &Remote, id: &str) -> anyhow::Result<()> {
    let (key, still_running) = client(remote)
        .await?
        .revoke_key(id)
        .await
        .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&json!({
            "key": key,
            "current_versions_signed_by_it": still_running,
        })),
        Format::Text => {
            println!("revoked {}: no new deploy may be signed by it", key.id);
            if !still_running.is_empty() {
                println!(
                    "still running versions it signed (deploy new versions or delete them): {}",
                    still_running.join(", ")
                );
            }
            Ok(())
        }
    }
}

fn save_receipt(
    path: &Path,
    result: &cella_client::Invocation,
    attestation: Option<cella_client::AttestationReport>,
    nonce: &[u8],
) -> anyhow::Result<()> {
    let signed = result
        .receipt
        .clone()
        .context("the node sent no receipt for this invocation")?;
    anyhow::ensure!(
        signed.receipt.nonce.as_deref() == Some(hex::encode(nonce).as_str()),
        "the receipt does not carry this request's nonce; it is not for this invocation"
    );
    let attestation = attestation.context(
        "receipts need the node's attestation report, which a plain-HTTP node does not bind to \
         its key; use https",
    )?;
    let file = cella_receipt::ReceiptFile {
        signed,
        attestation,
    };
    std::fs::write(path, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "receipt: {} (check it offline: cella verify-receipt {} --input … --output …)",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `cella verify-receipt`: ✔/✗ per check, offline; exits non-zero on any ✗.
pub(crate) fn verify_receipt(
    remote: &Remote,
    path: &Path,
    input: Option<&str>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: cella_receipt::ReceiptFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a cella receipt file", path.display()))?;
    let input = input.map(|data| read_data(Some(data))).transpose()?;
    let output = output
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let (policy, _) = remote.policy_for_offline_use()?;
    let checks = file.checks(&policy, input.as_deref(), output.as_deref());
    let passed = checks.iter().all(|c| c.ok);
    match remote.format {
        Format::Json => print_json(&json!({
            "receipt": file.signed.receipt,
            "checks": checks,
            "passed": passed,
        }))?,
        Format::Text => {
            let r = &file.signed.receipt;
            println!(
                "receipt {} for `{}` {} ({}) at {}; node evidence judged as of then",
                r.invocation_id,
                r.function.name,
                r.function.version,
                r.function.hash,
                r.finished_at
            );
            for step in &r.chain {
                println!(
                    "  then `{}` {} ({}), its input the previous step's output",
                    step.name, step.version, step.hash
                );
            }
            for plugin in r
                .function
                .plugins
                .iter()
                .chain(r.chain.iter().flat_map(|f| &f.plugins))
            {
                println!(
                    "  made from plug-in `{}` image {}",
                    plugin.name, plugin.image
                );
            }
            print!("{}", crate::tee_cmds::check_lines(&checks));
        }
    }
    if passed {
        Ok(())
    } else {
        anyhow::bail!("the receipt did not verify")
    }
}

fn read_data(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match data {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read stdin")?;
            Ok(input)
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}")),
            None => Ok(text.as_bytes().to_vec()),
        },
    }
}

/// What `cella invoke` sends.
pub(crate) struct InvokeInput<'a> {
    pub data: Option<&'a str>,
    pub args: &'a [String],
    /// Save the receipt (with the node's attestation report) here.
    pub receipt: Option<&'a Path>,
    pub expect_hash: Option<&'a str>,
}

pub(crate) async fn invoke(
    remote: &Remote,
    name: &str,
    request: InvokeInput<'_>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let input = read_data(request.data)?;
    let (client, report) = attested_client(remote).await?;
    let nonce = fresh_nonce()?;
    let result = client
        .invoke_with(
            name,
            input,
            request.args,
            &cella_client::InvokeOptions {
                expect_hash: request.expect_hash,
                nonce: Some(&nonce),
            },
        )
        .await
        .map_err(explain)?;
    if let Some(path) = request.receipt {
        save_receipt(path, &result, report, &nonce)?;
    }
    write_output(&result, output)
}

pub(crate) async fn chain(
    remote: &Remote,
    steps: &[String],
    request: InvokeInput<'_>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let input = read_data(request.data)?;
    let (client, report) = attested_client(remote).await?;
    let nonce = fresh_nonce()?;
    let result = client
        .invoke_chain(steps, input, Some(&nonce))
        .await
        .map_err(explain)?;
    if let Some(path) = request.receipt {
        save_receipt(path, &result, report, &nonce)?;
    }
    write_output(&result, output)
}

/// A fresh nonce ties the receipt to this request.
fn fresh_nonce() -> anyhow::Result<[u8; 32]> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce)
        .map_err(|e| anyhow::anyhow!("no random numbers for the nonce: {e}"))?;
    Ok(nonce)
}

fn write_output(result: &cella_client::Invocation, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            std::fs::write(path, &result.output)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} bytes to {} (invocation {}, {} ms)",
                result.output.len(),
                path.display(),
                result.invocation_id.as_deref().unwrap_or("?"),
                result.duration_ms.unwrap_or(0)
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&result.output)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

fn print_function(record: &FunctionRecord) {
    println!("name:     {}", record.name);
    println!("owner:    {}", record.owner);
    println!("kind:     {}", record.kind);
    println!(
        "version:  {} ({} kept; `cella versions {}` lists them)",
        record.version,
        record.versions.len(),
        record.name
    );
    println!("hash:     {}", record.hash);
    println!("size:     {} bytes", record.size);
    println!(
        "limits:   timeout {} ms, memory {} bytes, output {} bytes",
        record.limits.timeout_ms, record.limits.memory_bytes, record.limits.output_bytes
    );
    let grants: Vec<&str> = record.access.tenants.iter().map(|t| t.as_str()).collect();
    println!(
        "access:   owner{}{}",
        if record.access.public {
            ", every tenant (public)"
        } else {
            ""
        },
        if grants.is_empty() {
            String::new()
        } else {
            format!(", {}", grants.join(", "))
        }
    );
    println!("created:  {}", record.created_at);
    println!("updated:  {}", record.updated_at);
}

pub(crate) async fn functions(
    remote: &Remote,
    name: Option<&str>,
    page: &PageArgs,
) -> anyhow::Result<()> {
    let c = client(remote).await?;
    if let Some(name) = name {
        let record = c.function(name).await.map_err(explain)?;
        return match remote.format {
            Format::Json => print_json(&record),
            Format::Text => {
                print_function(&record);
                Ok(())
            }
        };
    }
    let records = listed(
        page,
        async |p: &Paging| c.functions_page(p).await,
        |r| r.name.to_string(),
    )
    .await?;
    match remote.format {
        Format::Json => print_listed(page, &records),
        Format::Text => {
            println!(
                "{:<20} {:<13} {:<10} {:>10}  {:<20} HASH",
                "NAME", "KIND", "VERSION", "SIZE", "UPDATED"
            );
            for r in &records.items {
                println!(
                    "{:<20} {:<13} {:<10} {:>10}  {:<20} {}",
                    r.name,
                    r.kind.as_str(),
                    r.version.to_string(),
                    r.size,
                    r.updated_at,
                    r.hash
                );
            }
            print_more(&records.next_cursor);
            Ok(())
        }
    }
}

pub(crate) async fn versions(remote: &Remote, name: &str, page: &PageArgs) -> anyhow::Result<()> {
    let c = client(remote).await?;
    let mut versions = listed(
        page,
        async |p: &Paging| c.versions_page(name, p).await,
        |v| v.deployed_at.clone(),
    )
    .await?;
    versions.items.sort_by(|a, b| a.version.cmp(&b.version));
    match remote.format {
        Format::Json => print_listed(page, &versions),
        Format::Text => {
            println!(
                "{:<12} {:<13} {:>10}  {:<20} {:<26} HASH",
                "VERSION", "KIND", "SIZE", "DEPLOYED", "SIGNER"
            );
            for v in &versions.items {
                println!(
                    "{:<12} {:<13} {:>10}  {:<20} {:<26} {}",
                    v.version.to_string(),
                    v.kind.as_str(),
                    v.size,
                    v.deployed_at,
                    v.signer,
                    v.hash
                );
            }
            print_more(&versions.next_cursor);
            Ok(())
        }
    }
}

pub(crate) async fn delete(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let record = client(remote).await?.delete(name).await.map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&record),
        Format::Text => {
            println!("deleted `{}`", record.name);
            Ok(())
        }
    }
}

pub(crate) async fn access(
    remote: &Remote,
    name: &str,
    tenant: Option<&str>,
    public: bool,
    grant: bool,
) -> anyhow::Result<()> {
    let c = client(remote).await?;
    let record = match (tenant, public) {
        (_, true) => c.set_public(name, grant).await,
        (Some(tenant), false) if grant => c.grant(name, tenant).await,
        (Some(tenant), false) => c.revoke(name, tenant).await,
        (None, false) => bail!("name a tenant, or pass --public"),
    }
    .map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&record),
        Format::Text => {
            print_function(&record);
            Ok(())
        }
    }
}

pub(crate) async fn logs(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let entries = client(remote).await?.logs(name).await.map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&entries),
        Format::Text => {
            for e in &entries {
                let denied = match e.denials {
                    0 => String::new(),
                    n => format!(", {n} denied"),
                };
                println!(
                    "{} {} {} {} ms ({} host calls{denied})",
                    e.at, e.id, e.outcome, e.duration_ms, e.host_calls
                );
                for line in e.log.lines() {
                    println!("    {line}");
                }
            }
            Ok(())
        }
    }
}

pub(crate) async fn stats(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let stats = client(remote).await?.stats(name).await.map_err(explain)?;
    match remote.format {
        Format::Json => print_json(&serde_json::json!({
            "invocations": stats.invocations,
            "host_calls": stats.host_calls,
            "denials": stats.denials,
        })),
        Format::Text => {
            println!("invocations  {}", stats.invocations);
            println!("host calls   {}", stats.host_calls);
            let denied: u64 = stats.denials.values().sum();
            println!("denied       {denied}");
            for (by, count) in &stats.denials {
                println!("  {by:<10} {count}");
            }
            Ok(())
        }
    }
}

pub(crate) async fn env_set(
    remote: &Remote,
    function: &str,
    values: &[String],
) -> anyhow::Result<()> {
    let mut changes = std::collections::BTreeMap::new();
    for pair in values {
        let Some((name, value)) = pair.split_once('=') else {
            anyhow::bail!("`{pair}` is not NAME=VALUE");
        };
        changes.insert(name.to_owned(), Some(value.to_owned()));
    }
    let env = client(remote)
        .await?
        .set_env(function, &changes)
        .await
        .map_err(explain)?;
    print_env(remote, &env)
}

pub(crate) async fn env_unset(
    remote: &Remote,
    function: &str,
    names: &[String],
) -> anyhow::Result<()> {
    let changes = names.iter().map(|n| (n.clone(), None)).collect();
    let env = client(remote)
        .await?
        .set_env(function, &changes)
        .await
        .map_err(explain)?;
    print_env(remote, &env)
}

pub(crate) async fn env_list(remote: &Remote, function: &str) -> anyhow::Result<()> {
    let env = client(remote).await?.env(function).await.map_err(explain)?;
    print_env(remote, &env)
}

fn print_env(remote: &Remote, env: &[cella_client::EnvSetting]) -> anyhow::Result<()> {
    match remote.format {
        Format::Json => print_json(
            &env.iter()
                .map(|e| {
                    serde_json::json!({
                        "name": e.name, "set": e.set, "granted": e.granted,
                    })
                })
                .collect::<Vec<_>>(),
        ),
        Format::Text => {
            println!("{:<24} {:<6} GRANTED", "NAME", "SET");
            for e in env {
                let yes = |b: bool| if b { "yes" } else { "no" };
                println!("{:<24} {:<6} {}", e.name, yes(e.set), yes(e.granted));
            }
            Ok(())
        }
    }
}

/// `cella invoke --async`: submits, prints the invocation's id and status (and with `wait`,
/// waits for it to finish and prints its output).
pub(crate) async fn invoke_async(
    remote: &Remote,
    name: &str,
    request: InvokeInput<'_>,
    idempotency_key: Option<&str>,
    wait: bool,
) -> anyhow::Result<()> {
    let input = read_data(request.data)?;
    let (client, _) = attested_client(remote).await?;
    let submitted = client
        .invoke_async(name, input, request.args, idempotency_key)
        .await
        .map_err(explain)?;
    if wait {
        return wait_for(remote, &client, &submitted.id).await;
    }
    match remote.format {
        Format::Json => print_json(&submitted),
        Format::Text => {
            println!("{} {}", submitted.id, submitted.status);
            eprintln!("follow it with: cella invocation {} --wait", submitted.id);
            Ok(())
        }
    }
}

/// `cella invocation ID`: an asynchronous invocation's status and result.
pub(crate) async fn invocation(remote: &Remote, id: &str, wait: bool) -> anyhow::Result<()> {
    let (client, _) = attested_client(remote).await?;
    if wait {
        return wait_for(remote, &client, id).await;
    }
    let invocation = client.async_invocation(id).await.map_err(explain)?;
    print_invocation(remote, &invocation)
}

/// Polls until the invocation is final, then prints it; fails unless it succeeded.
async fn wait_for(remote: &Remote, client: &cella_client::Client, id: &str) -> anyhow::Result<()> {
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let invocation = client.async_invocation(id).await.map_err(explain)?;
        if invocation.is_final() {
            print_invocation(remote, &invocation)?;
            if invocation.status != "succeeded" {
                anyhow::bail!("invocation {id} ended {}", invocation.status);
            }
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

fn print_invocation(
    remote: &Remote,
    invocation: &cella_client::AsyncInvocation,
) -> anyhow::Result<()> {
    if remote.format == Format::Json {
        return print_json(invocation);
    }
    if invocation.status == "succeeded" {
        use base64::Engine as _;
        let output = invocation
            .output_base64
            .as_deref()
            .map(|o| base64::engine::general_purpose::STANDARD.decode(o))
            .transpose()?
            .unwrap_or_default();
        use std::io::Write as _;
        std::io::stdout().write_all(&output)?;
        return Ok(());
    }
    println!(
        "{} {} after {} attempt(s)",
        invocation.id, invocation.status, invocation.attempts
    );
    if let Some(error) = &invocation.error {
        println!("last error [{}]: {}", error.code, error.message);
    }
    Ok(())
}

pub(crate) async fn trigger_add(
    remote: &Remote,
    function: &str,
    subject: &str,
    reply_subject: Option<&str>,
    public_output: bool,
) -> anyhow::Result<()> {
    let (client, _) = attested_client(remote).await?;
    let (trigger, key) = client
        .add_trigger(function, subject, reply_subject, public_output)
        .await
        .map_err(explain)?;
    if remote.format == Format::Json {
        return print_json(&json!({ "trigger": trigger, "result_key": key }));
    }
    println!(
        "trigger {} invokes `{function}` for every event on `{subject}`",
        trigger["id"].as_str().unwrap_or_default()
    );
    match (reply_subject, key) {
        (Some(reply), Some(key)) => {
            println!("results go to `{reply}` sealed; the key that opens them (shown once):");
            println!("  {key}");
            println!("open one with: cella trigger open --key KEY FILE");
        }
        (Some(reply), None) => println!("results go to `{reply}` in clear"),
        (None, _) => println!("results are kept with each invocation (cella invocation ID)"),
    }
    Ok(())
}

pub(crate) async fn trigger_list(
    remote: &Remote,
    function: &str,
    page: &PageArgs,
) -> anyhow::Result<()> {
    let (client, _) = attested_client(remote).await?;
    let triggers = listed(
        page,
        async |p: &Paging| client.triggers_page(function, p).await,
        |t| t["id"].as_str().unwrap_or_default().to_owned(),
    )
    .await?;
    if remote.format == Format::Json {
        return print_listed(page, &triggers);
    }
    for t in &triggers.items {
        let reply = t["reply_subject"].as_str().unwrap_or("-");
        let output = if t["public_output"].as_bool() == Some(true) {
            "public"
        } else {
            "sealed"
        };
        println!(
            "{}  {}  → {reply} ({output})",
            t["id"].as_str().unwrap_or_default(),
            t["subject"].as_str().unwrap_or_default()
        );
    }
    print_more(&triggers.next_cursor);
    Ok(())
}

pub(crate) async fn trigger_remove(
    remote: &Remote,
    function: &str,
    id: &str,
) -> anyhow::Result<()> {
    let (client, _) = attested_client(remote).await?;
    client.remove_trigger(function, id).await.map_err(explain)?;
    println!("removed trigger {id} of `{function}`");
    Ok(())
}

/// Opens a result a trigger published and prints the function's output.
pub(crate) fn trigger_open(file: &Path, key: Option<&str>) -> anyhow::Result<()> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let result: cella_runtime::TriggerResult =
        serde_json::from_str(&text).context("not a result a trigger published")?;
    let key = match key {
        Some(k) => Some(match k.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key file {path}"))?
                .trim()
                .to_owned(),
            None => k.to_owned(),
        }),
        None => None,
    };
    if result.status != "succeeded" {
        anyhow::bail!(
            "invocation {} ended {}{}",
            result.invocation,
            result.status,
            result.error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    let output = result
        .output(key.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    use std::io::Write as _;
    std::io::stdout().write_all(&output)?;
    Ok(())
}

pub(crate) async fn cluster_rotate(remote: &Remote) -> anyhow::Result<()> {
    let (client, _) = attested_client(remote).await?;
    let epoch = client.rotate_cluster().await.map_err(explain)?;
    println!("the cluster key is now at epoch {epoch}; workers join again to get it");
    Ok(())
}
