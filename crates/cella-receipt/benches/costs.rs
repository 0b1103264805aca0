//! What trust costs per invocation: signing a receipt (on every invocation) and verifying a
//! signed bundle again (on every compiled-code cache miss), next to hashing the same bytes.
//!
//! `cargo bench -p cella-receipt --bench costs` prints a table and writes JSON to
//! `target/tmp/cella-bench-costs.json` (or `$CELLA_BENCH_OUT`).

use std::time::{Duration, Instant};

use cella_bundle::{Bundle, BundleKind, Manifest, SigningKey};
use cella_receipt::{Function, Node, Receipt, Resources, SignedReceipt, sha256};

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// Median microseconds per call of `op` over interleaved rounds.
fn measure(op: &mut dyn FnMut()) -> f64 {
    op();
    let mut per_op = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROUND_TIME {
            op();
            n += 1;
        }
        per_op.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    per_op.sort_by(f64::total_cmp);
    per_op[per_op.len() / 2]
}

fn receipt(identity_key: &[u8]) -> Receipt {
    Receipt {
        format: cella_receipt::FORMAT.into(),
        invocation_id: "0123456789abcdef".into(),
        node: Node {
            tee: "sim".into(),
            measurement: "ab".repeat(48),
            identity_key: hex::encode(identity_key),
            registry_version: 42,
        },
        function: Function {
            name: "brotli".into(),
            version: "1.2.0".into(),
            hash: sha256(b"bundle"),
            plugins: Vec::new(),
        },
        chain: Vec::new(),
        limits_hash: sha256(b"limits"),
        args_hash: cella_receipt::args_hash(&[]),
        input_hash: sha256(b"input"),
        output_hash: sha256(b"output"),
        resources: Resources {
            wall_time_us: 1234,
            memory_limit_bytes: 64 << 20,
        },
        started_at: "2026-11-28T00:00:00Z".into(),
        finished_at: "2026-11-28T00:00:01Z".into(),
        nonce: Some("07".repeat(32)),
    }
}

fn main() {
    use rcgen::SigningKey as _;
    let node_key = rcgen::KeyPair::generate().unwrap();
    let signed = SignedReceipt::sign(receipt(node_key.public_key_raw()), |m| {
        node_key.sign(m).unwrap()
    });
    let mut rows: Vec<(String, f64)> = vec![
        (
            "sign a receipt (ECDSA P-256)".into(),
            measure(&mut || {
                let r = receipt(node_key.public_key_raw());
                SignedReceipt::sign(r, |m| node_key.sign(m).unwrap());
            }),
        ),
        (
            "verify a receipt's signature".into(),
            measure(&mut || signed.verify_signature().unwrap()),
        ),
    ];
    let tenant = SigningKey::generate();
    for size in [64 * 1024, 1024 * 1024, 8 * 1024 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let mut bundle = Bundle::new(
            Manifest {
                name: cella_core::FunctionName::new("bench").unwrap(),
                version: "1.0.0".parse().unwrap(),
                kind: BundleKind::WasiCommand,
                plugins: Vec::new(),
                permissions: Default::default(),
                limits: Default::default(),
            },
            payload.clone(),
        );
        bundle.sign(&tenant);
        let bytes = bundle.encode();
        let label = if size >= 1024 * 1024 {
            format!("{} MiB", size / (1024 * 1024))
        } else {
            format!("{} KiB", size / 1024)
        };
        rows.push((
            format!("re-verify a {label} bundle (decode, hash, ed25519)"),
            measure(&mut || {
                let decoded = Bundle::decode(&bytes, u64::MAX).unwrap();
                decoded.verify_signature().unwrap();
            }),
        ));
        rows.push((
            format!("  for scale: SHA-256 of {label}"),
            measure(&mut || {
                sha256(&payload);
            }),
        ));
    }
    println!("{:<56} {:>12}", "operation", "µs each");
    for (name, us) in &rows {
        println!("{name:<56} {us:>12.1}");
    }
    let json = serde_json::json!({
        "benchmark": "receipt-and-bundle-costs",
        "rounds": ROUNDS,
        "round_ms": ROUND_TIME.as_millis() as u64,
        "us_each": rows.iter().map(|(n, us)| (n.trim().to_owned(), *us)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    let out = std::env::var_os("CELLA_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cella-bench-costs.json")
        });
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("\nresults: {}", out.display());
}
