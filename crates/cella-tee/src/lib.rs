//! Trusted execution environments: who vouches for the code that will see a client's data.
//!
//! Three small pieces, in the shape of the design brief:
//! - an [`Attester`] produces [`Evidence`] binding 64 bytes of [`ReportData`] (a hash of a
//!   public key and a client's nonce) to the running platform's [`Measurement`];
//! - a [`Verifier`] is pure: it takes evidence bytes, trust anchors and the time as arguments
//!   and returns verified [`Claims`] or a precise error — no clock, file or network inside;
//!   a [`Policy`] then judges the claims, one [`Check`] per question (✔/✗ lines);
//! - [`SealingKeys`] derive keys bound to the platform, the measurement and a purpose.
//!
//! Backends: [`sim`] (a simulated TEE for machines without hardware: same shapes, signed by a
//! per-data-directory platform key, always labelled simulated and refused unless a policy
//! allows it); [`DcapVerifier`] for Intel SGX and TDX quotes and [`SnpVerifier`] for AMD
//! SEV-SNP reports, both offline and pure-Rust. [`detect`] reports which hardware interfaces a
//! machine offers.
#![forbid(unsafe_code)]

mod dcap;
pub mod detect;
mod evidence;
pub mod hardware;
mod policy;
mod sealing;
pub mod sim;
mod snp;

pub use dcap::{DcapVerifier, sgx_measurement, tdx_measurement};
pub use evidence::{
    AttestationReport, Claims, Evidence, Measurement, ReportData, SnpPlatform, SnpTcb, TeeType,
    VerifyError, report_data_for,
};
pub use policy::{Check, Policy, Verification};
pub use sealing::{SealingKeys, derive_sealing_key};
pub use sim::SimPlatformFiles;
pub use snp::SnpVerifier;

/// Produces evidence about the platform this process runs on.
pub trait Attester: Send + Sync {
    fn tee(&self) -> TeeType;
    /// The measurement of the running platform build.
    fn measurement(&self) -> Measurement;
    /// Evidence binding `report_data` to this platform and measurement.
    fn attest(&self, report_data: &ReportData) -> Result<Evidence, AttestError>;
}

/// Checks evidence of one TEE type. Pure: the time is an argument, anchors are in `self`.
pub trait Verifier {
    fn tee(&self) -> TeeType;
    fn verify(
        &self,
        evidence: &Evidence,
        now: std::time::SystemTime,
    ) -> Result<Claims, VerifyError>;
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the TEE could not produce evidence: {0}")]
    Backend(String),
}
