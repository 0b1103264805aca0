//! What attestation costs a connection: full TLS 1.3 handshakes per second with RA-TLS
//! verification against plain rustls with a CA-signed certificate, measured side by side in
//! one run (rounds interleaved, medians compared), plus the time to make and to check evidence.
//!
//! `cargo bench -p cella-ratls --bench handshake` prints a table and writes JSON to
//! `target/tmp/cella-bench-ratls.json` (or to `$CELLA_BENCH_OUT`).
//!
//! Handshakes run over in-memory buffers in one thread, so they measure the cryptography and
//! certificate checks both ends do, not the network.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cella_ratls::{AttestedCert, RaTlsVerifier};
use cella_tee::sim::{SimAttester, SimPlatform};
use cella_tee::{Attester, Evidence, Measurement, Policy, TeeType, Verifier, report_data_for};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// Completes one handshake between fresh connections, moving bytes through memory.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut server = rustls::ServerConnection::new(server.clone()).unwrap();
    let mut buffer = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buffer.clear();
        while client.wants_write() {
            client.write_tls(&mut buffer).unwrap();
        }
        let mut input = buffer.as_slice();
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
        }
        server.process_new_packets().expect("server accepts");
        buffer.clear();
        while server.wants_write() {
            server.write_tls(&mut buffer).unwrap();
        }
        let mut input = buffer.as_slice();
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
        }
        client.process_new_packets().expect("client accepts");
    }
}

/// Operations per second of `op` in each round, interleaved with the other cases.
struct Case<'a> {
    name: &'static str,
    op: Box<dyn FnMut() + 'a>,
    per_second: Vec<f64>,
}

impl Case<'_> {
    fn median(&self) -> f64 {
        let mut v = self.per_second.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

fn run(cases: &mut [Case<'_>]) {
    for case in cases.iter_mut() {
        (case.op)(); // warm up
    }
    for _ in 0..ROUNDS {
        for case in cases.iter_mut() {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < ROUND_TIME {
                (case.op)();
                n += 1;
            }
            case.per_second
                .push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
}

fn plain_tls() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let platform = SimPlatform::load_or_create(dir.path()).unwrap();
    let attester = SimAttester::new(platform, Measurement([1; 48]), 1);
    let policy = Policy {
        measurements: vec![Measurement([1; 48])],
        allow_simulated: true,
        sim_anchors: vec![attester.anchor_hex()],
        ..Policy::default()
    };
    let attested = AttestedCert::issue(&attester, vec!["localhost".into()]).unwrap();
    let ratls_server = Arc::new(attested.server_config().unwrap());
    let ratls_client = Arc::new(RaTlsVerifier::new(policy.clone()).client_config().unwrap());
    let (plain_server, plain_client) = plain_tls();

    let report_data = report_data_for(&attested.public_key, b"nonce");
    let sim_evidence = attester.attest(&report_data).unwrap();
    let pinned = SystemTime::UNIX_EPOCH + Duration::from_secs(1_751_328_000);
    let tdx = Evidence {
        tee: TeeType::Tdx,
        quote: include_bytes!("../../cella-tee/testdata/dcap/tdx_quote").to_vec(),
        collateral: include_bytes!("../../cella-tee/testdata/dcap/tdx_quote_collateral.json")
            .to_vec(),
    };
    let snp = Evidence {
        tee: TeeType::SevSnp,
        quote: hex::decode(include_str!("../../cella-tee/testdata/snp/report_milan.hex").trim())
            .unwrap(),
        collateral: include_bytes!("../../cella-tee/testdata/snp/vcek_milan.der").to_vec(),
    };

    let mut handshakes = [
        Case {
            name: "plain rustls (CA-signed certificate)",
            op: Box::new(|| handshake(&plain_server, &plain_client)),
            per_second: Vec::new(),
        },
        Case {
            name: "RA-TLS (evidence checked against the policy)",
            op: Box::new(|| handshake(&ratls_server, &ratls_client)),
            per_second: Vec::new(),
        },
    ];
    run(&mut handshakes);
    let mut evidence = [
        Case {
            name: "make sim evidence",
            op: Box::new(|| {
                attester.attest(&report_data).unwrap();
            }),
            per_second: Vec::new(),
        },
        Case {
            name: "verify sim evidence + policy",
            op: Box::new(|| {
                let v = policy
                    .verify_with_anchors(&sim_evidence, Some(&report_data), SystemTime::now())
                    .unwrap();
                assert!(v.passed());
            }),
            per_second: Vec::new(),
        },
        Case {
            name: "issue an RA-TLS certificate",
            op: Box::new(|| {
                AttestedCert::issue(&attester, vec!["localhost".into()]).unwrap();
            }),
            per_second: Vec::new(),
        },
        Case {
            name: "verify a TDX quote (DCAP sample)",
            op: Box::new(|| {
                cella_tee::DcapVerifier::tdx().verify(&tdx, pinned).unwrap();
            }),
            per_second: Vec::new(),
        },
        Case {
            name: "verify an SEV-SNP report (sample)",
            op: Box::new(|| {
                cella_tee::SnpVerifier.verify(&snp, pinned).unwrap();
            }),
            per_second: Vec::new(),
        },
    ];
    run(&mut evidence);

    let plain = handshakes[0].median();
    let ratls = handshakes[1].median();
    println!(
        "{:<48} {:>14} {:>10}",
        "handshake (TLS 1.3, in memory)", "per second", "vs plain"
    );
    for case in &handshakes {
        println!(
            "{:<48} {:>14.0} {:>9.2}×",
            case.name,
            case.median(),
            case.median() / plain
        );
    }
    println!();
    println!("{:<48} {:>14} {:>10}", "evidence", "per second", "µs each");
    for case in &evidence {
        println!(
            "{:<48} {:>14.0} {:>10.1}",
            case.name,
            case.median(),
            1e6 / case.median()
        );
    }

    let json = serde_json::json!({
        "benchmark": "ratls-handshake",
        "rounds": ROUNDS,
        "round_ms": ROUND_TIME.as_millis() as u64,
        "handshakes_per_second": {
            "plain_rustls": plain,
            "ratls": ratls,
            "ratio_ratls_to_plain": ratls / plain,
        },
        "evidence_us": evidence
            .iter()
            .map(|c| (c.name, 1e6 / c.median()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    });
    let out = std::env::var_os("CELLA_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cella-bench-ratls.json")
        });
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("\nresults: {}", out.display());
}
