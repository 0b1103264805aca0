//! The TEE verifiers on arbitrary evidence: the simulated verifier, DCAP (SGX and TDX quotes
//! with their collateral JSON) and SEV-SNP (reports with their VCEK), at the time the published
//! samples in crates/cella-tee/testdata verify (see its README), and the `Evidence` JSON as a
//! client receives it, through a policy.
//!
//! Input: one selector byte, then data. The low two bits pick the backend (sim, SGX, TDX,
//! SEV-SNP); the next two what the data is:
//! - 0: the quote, beside the backend's real sample collateral;
//! - 1: the collateral, beside the backend's real sample quote (for sim, which has no
//!   collateral: the signed part of a quote, which the harness signs with a trusted key, so
//!   the code after the signature check is reached);
//! - 2: `Evidence` JSON, verified with every verifier through a policy that accepts all TEEs;
//! - 3: a quote and a collateral: a little-endian u16 length, that many quote bytes, then the
//!   collateral.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use cella_tee::sim::SimVerifier;
use cella_tee::{
    DcapVerifier, Evidence, Policy, SnpVerifier, TeeType, Verifier, VerifyError, report_data_for,
};
use ed25519_dalek::Signer as _;
use libfuzzer_sys::fuzz_target;

const SGX_QUOTE: &[u8] = include_bytes!("../../crates/cella-tee/testdata/dcap/sgx_quote");
const SGX_COLLATERAL: &[u8] =
    include_bytes!("../../crates/cella-tee/testdata/dcap/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("../../crates/cella-tee/testdata/dcap/tdx_quote");
const TDX_COLLATERAL: &[u8] =
    include_bytes!("../../crates/cella-tee/testdata/dcap/tdx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("../../crates/cella-tee/testdata/snp/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../../crates/cella-tee/testdata/snp/vcek_milan.der");

/// 2025-07-01T00:00:00Z: every sample verifies then (crates/cella-tee/testdata/README.md).
const PINNED: u64 = 1_751_328_000;

static SNP_REPORT: LazyLock<Vec<u8>> =
    LazyLock::new(|| hex::decode(SNP_REPORT_HEX.trim()).expect("the SNP sample is hex"));

/// The simulated platform the harness plays: its key signs sim quotes in mode 1.
static SIM_KEY: LazyLock<ed25519_dalek::SigningKey> =
    LazyLock::new(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]));

static SIM_ANCHOR: LazyLock<String> =
    LazyLock::new(|| hex::encode(SIM_KEY.verifying_key().as_bytes()));

static SIM: LazyLock<SimVerifier> =
    LazyLock::new(|| SimVerifier::new(&[SIM_ANCHOR.as_str()]).expect("a valid anchor"));

static POLICY: LazyLock<Policy> = LazyLock::new(|| Policy {
    allowed_tee: vec![TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp],
    allow_simulated: true,
    sim_anchors: vec![SIM_ANCHOR.clone()],
    ..Policy::default()
});

const TEES: [TeeType; 4] = [TeeType::Sim, TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp];

fn sample(tee: TeeType) -> (&'static [u8], &'static [u8]) {
    match tee {
        TeeType::Sim => (&[], &[]),
        TeeType::Sgx => (SGX_QUOTE, SGX_COLLATERAL),
        TeeType::Tdx => (TDX_QUOTE, TDX_COLLATERAL),
        TeeType::SevSnp => (&SNP_REPORT, SNP_VCEK),
    }
}

fn verify(evidence: &Evidence) -> Result<cella_tee::Claims, VerifyError> {
    let now = UNIX_EPOCH + Duration::from_secs(PINNED);
    let (sgx, tdx) = (DcapVerifier::sgx(), DcapVerifier::tdx());
    let verifier: &dyn Verifier = match evidence.tee {
        TeeType::Sim => &*SIM,
        TeeType::Sgx => &sgx,
        TeeType::Tdx => &tdx,
        TeeType::SevSnp => &SnpVerifier,
    };
    verifier.verify(evidence, now)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let tee = TEES[usize::from(selector & 3)];
    let (quote, collateral) = sample(tee);
    let evidence = match (selector >> 2) & 3 {
        0 => Evidence {
            tee,
            quote: data.to_vec(),
            collateral: collateral.to_vec(),
        },
        1 if tee == TeeType::Sim => {
            let mut quote = data.to_vec();
            quote.extend_from_slice(&SIM_KEY.sign(data).to_bytes());
            Evidence {
                tee,
                quote,
                collateral: Vec::new(),
            }
        }
        1 => Evidence {
            tee,
            quote: quote.to_vec(),
            collateral: data.to_vec(),
        },
        2 => {
            let Ok(evidence) = serde_json::from_slice::<Evidence>(data) else {
                return;
            };
            let expected = report_data_for(b"fuzz key", b"fuzz nonce");
            let now = UNIX_EPOCH + Duration::from_secs(PINNED);
            let verdict = POLICY
                .verify_with_anchors(&evidence, Some(&expected), now)
                .expect("the policy's anchors are valid");
            assert!(!verdict.checks.is_empty());
            let _ = serde_json::to_string(&verdict).expect("verdicts serialize");
            let json = serde_json::to_vec(&evidence).expect("evidence serializes");
            let again: Evidence = serde_json::from_slice(&json).expect("evidence reads back");
            assert_eq!(again, evidence);
            return;
        }
        _ => {
            let Some((length, rest)) = data.split_first_chunk::<2>() else {
                return;
            };
            let length = usize::from(u16::from_le_bytes(*length)).min(rest.len());
            let (quote, collateral) = rest.split_at(length);
            Evidence {
                tee,
                quote: quote.to_vec(),
                collateral: collateral.to_vec(),
            }
        }
    };
    match verify(&evidence) {
        Ok(claims) => {
            assert_eq!(claims.tee, tee);
            let _ = serde_json::to_string(&claims).expect("claims serialize");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
