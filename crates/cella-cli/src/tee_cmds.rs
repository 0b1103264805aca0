//! `cella attest`, `cella verify` and `cella doctor`: what a client checks before it trusts a
//! node, and what a machine offers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cella_client::{Client, NodeVerification};
use cella_tee::{Measurement, Policy, SimPlatformFiles, Verification};
use clap::Args;

use crate::{Format, Remote};

#[derive(Args, Clone)]
pub(crate) struct PolicyArgs {
    /// Verification policy (TOML: allowed_tee, measurements, min_security_version,
    /// allow_simulated, sim_anchors, allow_unbound).
    #[arg(long, env = "CELLA_POLICY", global = true)]
    policy: Option<PathBuf>,
    /// Accept evidence from the simulated TEE (for testing: it proves nothing about hardware).
    #[arg(long, global = true)]
    allow_simulated: bool,
    /// A measurement (96 hex digits) of a platform build you trust (repeatable).
    #[arg(long = "measurement", value_name = "HEX", global = true)]
    measurements: Vec<Measurement>,
    /// Public key of a simulated platform to trust, as hex or @FILE (repeatable). Defaults to
    /// the local node's `sim-platform.pub` when the policy names none.
    #[arg(long = "sim-anchor", value_name = "HEX|@FILE", global = true)]
    sim_anchors: Vec<String>,
    /// Accept a plain-HTTP node, whose evidence is not bound to the connection: only for a
    /// local `cella up --insecure-http` node (anything relaying it could read the token).
    #[arg(long, global = true)]
    allow_unbound: bool,
}

impl PolicyArgs {
    /// The policy in force: the file, then the flags; and where a default anchor came from.
    pub(crate) fn resolve(&self, remote: &Remote) -> anyhow::Result<(Policy, Option<PathBuf>)> {
        let mut policy = match &self.policy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read policy {}", path.display()))?;
                toml::from_str::<Policy>(&text)
                    .with_context(|| format!("policy {} is not valid", path.display()))?
            }
            None => Policy::default(),
        };
        policy.allow_simulated |= self.allow_simulated;
        policy.allow_unbound |= self.allow_unbound;
        policy
            .measurements
            .extend(self.measurements.iter().copied());
        for anchor in &self.sim_anchors {
            policy.sim_anchors.push(match anchor.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read trust anchor {path}"))?
                    .trim()
                    .to_owned(),
                None => anchor.clone(),
            });
        }
        let mut anchor_from = None;
        if policy.sim_anchors.is_empty() {
            let path = remote
                .data_dir
                .clone()
                .unwrap_or_else(crate::config::default_data_dir)
                .join(SimPlatformFiles::ANCHOR);
            if let Ok(anchor) = std::fs::read_to_string(&path) {
                policy.sim_anchors.push(anchor.trim().to_owned());
                anchor_from = Some(path);
            }
        }
        Ok((policy, anchor_from))
    }
}

/// Long hex values are cut to their first 32 digits (enough to compare by eye; `--format json`
/// has them whole); text stays whole.
fn short(text: &str) -> String {
    if text.len() > 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}…", &text[..32])
    } else {
        text.to_owned()
    }
}

fn verification_text(url: &str, verification: &Verification, anchor_from: Option<&Path>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let label = match &verification.claims {
        Some(claims) if claims.simulated => {
            "SIMULATED TEE (no hardware protection is proven)".to_owned()
        }
        Some(claims) => format!("{} TEE", claims.tee),
        None => "evidence not verified".to_owned(),
    };
    let _ = writeln!(out, "node {url}: {label}");
    if let Some(claims) = &verification.claims {
        for (register, value) in &claims.details {
            let _ = writeln!(out, "  {register}: {}", short(value));
        }
    }
    if let Some(path) = anchor_from {
        let _ = writeln!(
            out,
            "  (trusting the simulated platform key in {})",
            path.display()
        );
    }
    out.push_str(&check_lines(&verification.checks));
    out
}

/// One ✔/✗ line per check, with the fix under each failure.
pub(crate) fn check_lines(checks: &[cella_tee::Check]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for check in checks {
        let mark = if check.ok { "✔" } else { "✗" };
        let _ = writeln!(
            out,
            "{mark} {:<17} expected {}, got {}",
            check.name,
            short(&check.expected),
            short(&check.actual)
        );
        if let Some(fix) = check.fix.as_ref().filter(|_| !check.ok) {
            let _ = writeln!(out, "    fix: {fix}");
        }
    }
    out
}

/// The node's verdict under the remote's policy: over HTTPS the RA-TLS handshake checks the
/// certificate's evidence first (a refused handshake is reported with its checks), then a
/// fresh-nonce attestation over that connection.
async fn check_node(
    remote: &Remote,
    policy: &Policy,
) -> anyhow::Result<(Verification, Option<NodeVerification>)> {
    // No token on this client: nothing secret goes out before the verdict.
    let client = Client::with_policy(&remote.url, None, policy)?;
    match client.verify_node(policy).await {
        Ok(result) => Ok((result.verification.clone(), Some(result))),
        Err(e) => match client.tls_verification() {
            Some(tls) if !tls.passed() => Ok((tls, None)),
            _ => Err(e.into()),
        },
    }
}

/// A client for the node once it has passed verification under the policy: over HTTPS every
/// connection it makes is checked again by RA-TLS. On failure nothing is sent (not even the
/// token) and the failing checks say what to do.
pub(crate) async fn verified_client(
    remote: &Remote,
    token: Option<String>,
) -> anyhow::Result<(Client, Option<cella_client::AttestationReport>)> {
    let (policy, anchor_from) = remote.policy.resolve(remote)?;
    let (verification, node) = check_node(remote, &policy).await?;
    if !verification.passed() {
        eprint!(
            "{}",
            verification_text(&remote.url, &verification, anchor_from.as_deref())
        );
        anyhow::bail!(
            "the node did not pass verification, so nothing was sent to it; pin what you trust \
             with --measurement/--sim-anchor/--allow-simulated or a policy file (--policy, \
             CELLA_POLICY)"
        );
    }
    let report = node
        .map(|n| n.report)
        .filter(|_| remote.url.starts_with("https://"));
    Ok((Client::with_policy(&remote.url, token, &policy)?, report))
}

pub(crate) async fn verify(remote: &Remote) -> anyhow::Result<()> {
    let (policy, anchor_from) = remote.policy.resolve(remote)?;
    let (verification, result) = check_node(remote, &policy).await?;
    match remote.format {
        Format::Json => match &result {
            Some(result) => println!("{}", serde_json::to_string_pretty(result)?),
            None => println!("{}", serde_json::to_string_pretty(&verification)?),
        },
        Format::Text => print!(
            "{}",
            verification_text(&remote.url, &verification, anchor_from.as_deref())
        ),
    }
    if verification.passed() {
        if remote.format == Format::Text {
            println!("verified: this node may be trusted under the policy");
        }
        Ok(())
    } else {
        anyhow::bail!("the node did not pass verification; nothing was sent to it")
    }
}

pub(crate) async fn attest(remote: &Remote, nonce: Option<&str>) -> anyhow::Result<()> {
    let nonce = match nonce {
        Some(hex_nonce) => hex::decode(hex_nonce).context("--nonce must be hex")?,
        None => Vec::new(),
    };
    // Evidence is printed, not trusted: the connection is not verified either.
    let report = Client::new(&remote.url, None).attestation(&nonce).await?;
    match remote.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!(
                "tee:          {}{}",
                report.tee,
                if report.simulated { " (SIMULATED)" } else { "" }
            );
            println!("measurement:  {}", report.measurement);
            println!("identity key: {}", report.identity_key);
            println!("nonce:        {}", report.nonce);
            println!("evidence:     {} bytes", report.evidence.quote.len());
            println!("unverified: run `cella verify` to check it against a policy");
        }
    }
    Ok(())
}

pub(crate) async fn doctor(format: Format, nats: Option<&str>) -> anyhow::Result<()> {
    let probes = cella_tee::detect::probe(Path::new("/"));
    let hardware = cella_tee::detect::hardware(&probes);
    let nats = match nats {
        Some(url) => Some(cella_cluster::probe(url).await.map_err(|e| e.to_string())),
        None => None,
    };
    let nats_ok = nats
        .as_ref()
        .is_none_or(|n| n.as_ref().is_ok_and(|h| h.jetstream.is_ok()));
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "probes": probes,
                "hardware": hardware,
                "up_uses": hardware.map_or("sim", |tee| tee.as_str()),
                "nats": nats.as_ref().map(|n| match n {
                    Ok(health) => serde_json::json!({
                        "url": health.url,
                        "server_version": health.server_version,
                        "max_payload": health.max_payload,
                        "jetstream": health.jetstream.as_ref().err(),
                    }),
                    Err(e) => serde_json::json!({ "error": e }),
                }),
            }))?
        ),
        Format::Text => {
            for p in &probes {
                let mark = if p.found { "✔" } else { "✗" };
                println!(
                    "{mark} {:<8} {:<46} {}",
                    p.tee.as_str(),
                    p.interface,
                    p.detail
                );
            }
            match hardware {
                Some(tee) => {
                    println!("`cella up` will use: {tee} (the simulated TEE only with --tee sim)")
                }
                None => println!(
                    "`cella up` will use: SIMULATED (no hardware TEE found; simulated evidence \
                     proves nothing about hardware)"
                ),
            }
            match &nats {
                None => {}
                Some(Err(e)) => println!("✗ nats     {e}"),
                Some(Ok(health)) => {
                    println!(
                        "✔ nats     {} (nats-server {}, messages up to {} bytes)",
                        health.url, health.server_version, health.max_payload
                    );
                    match &health.jetstream {
                        Ok(()) => println!("✔ nats     JetStream enabled"),
                        Err(e) => println!("✗ nats     JetStream: {e}"),
                    }
                }
            }
        }
    }
    if !nats_ok {
        anyhow::bail!("the NATS server cannot carry a cluster; see ✗ above");
    }
    Ok(())
}

#[cfg(test)]
mod golden {
    //! The ✔/✗ lines of `cella verify`, pinned as snapshots. Hardware cases use the published
    //! sample quotes at a fixed time, so the output is the same on every run.
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use cella_tee::{Evidence, Policy, TeeType};

    use super::verification_text;

    const URL: &str = "https://node.example:7070";

    fn pinned() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_751_328_000)
    }

    fn sample(tee: TeeType) -> Evidence {
        let (quote, collateral): (&[u8], &[u8]) = match tee {
            TeeType::Tdx => (
                include_bytes!("../../cella-tee/testdata/dcap/tdx_quote"),
                include_bytes!("../../cella-tee/testdata/dcap/tdx_quote_collateral.json"),
            ),
            _ => (
                include_bytes!("../../cella-tee/testdata/dcap/sgx_quote"),
                include_bytes!("../../cella-tee/testdata/dcap/sgx_quote_collateral.json"),
            ),
        };
        Evidence {
            tee,
            quote: quote.to_vec(),
            collateral: collateral.to_vec(),
        }
    }

    #[test]
    fn a_pinned_tdx_node_passes() {
        let evidence = sample(TeeType::Tdx);
        let mut policy = Policy::default();
        let claims = policy
            .verify_with_anchors(&evidence, None, pinned())
            .unwrap();
        policy.measurements = vec![claims.claims.unwrap().measurement];
        let verdict = policy
            .verify_with_anchors(&evidence, None, pinned())
            .unwrap();
        assert!(verdict.passed());
        insta::assert_snapshot!(verification_text(URL, &verdict, None));
    }

    #[test]
    fn an_unpinned_sgx_node_that_needs_patches_fails_with_fixes() {
        let verdict = Policy::default()
            .verify_with_anchors(&sample(TeeType::Sgx), None, pinned())
            .unwrap();
        assert!(!verdict.passed());
        insta::assert_snapshot!(verification_text(URL, &verdict, None));
    }

    #[test]
    fn expired_collateral_fails_at_the_evidence() {
        let later = pinned() + Duration::from_secs(90 * 86_400);
        let verdict = Policy::default()
            .verify_with_anchors(&sample(TeeType::Tdx), None, later)
            .unwrap();
        insta::assert_snapshot!(verification_text(URL, &verdict, None));
    }

    #[test]
    fn simulated_evidence_is_refused_unless_allowed() {
        use cella_tee::sim::{SimAttester, SimPlatform};
        use cella_tee::{Attester, Measurement, report_data_for};
        let dir = tempfile::tempdir().unwrap();
        let platform = SimPlatform::load_or_create(dir.path()).unwrap();
        let attester = SimAttester::new(platform, Measurement([7; 48]), 1);
        let evidence = attester
            .attest(&report_data_for(b"node key", b"nonce"))
            .unwrap();
        let policy = Policy {
            sim_anchors: vec![attester.anchor_hex()],
            ..Policy::default()
        };
        let stale = report_data_for(b"node key", b"another nonce");
        let verdict = policy
            .verify_with_anchors(&evidence, Some(&stale), SystemTime::now())
            .unwrap();
        let anchor_file = dir.path().join("sim-platform.pub");
        insta::with_settings!({filters => vec![
            (r"platform [0-9a-f]{64}", "platform [platform id]"),
            (r"/[^ ]*/sim-platform.pub", "[data dir]/sim-platform.pub"),
        ]}, {
            insta::assert_snapshot!(verification_text(URL, &verdict, Some(&anchor_file)));
        });
    }
}
