//! The node's attested identity: which TEE vouches for this process, the measurement of the
//! running build, and an identity key created fresh at start-up whose public half is bound
//! into every piece of evidence (with the client's nonce), so a client knows the evidence
//! speaks of the process it is talking to, now.

use std::path::Path;

use cella_tee::sim::{SimAttester, SimPlatform, measure_file};
use cella_tee::{AttestationReport, Attester, Measurement, TeeType, report_data_for};
use ed25519_dalek::SigningKey;

use crate::RuntimeError;

/// Longest nonce a client may send (bytes).
pub const MAX_NONCE_BYTES: usize = 64;

pub(crate) struct Identity {
    attester: Box<dyn Attester>,
    key: SigningKey,
    /// Where the simulated platform's public key (the trust anchor) is, when simulated.
    pub(crate) sim_anchor_file: Option<std::path::PathBuf>,
    pub(crate) hardware_found: Option<TeeType>,
}

impl Identity {
    /// Uses the hardware TEE when one is usable; otherwise the simulated TEE, with its platform
    /// key in `data_dir` and the SHA-384 of `executable` as the measurement.
    pub(crate) fn open(data_dir: &Path, executable: Option<&Path>) -> Result<Self, RuntimeError> {
        let internal = |what: String| RuntimeError::Internal(what);
        let hardware_found = cella_tee::detect::hardware(&cella_tee::detect::probe(Path::new("/")));
        if let Some(tee) = hardware_found {
            // Real evidence needs the configfs-tsm / Gramine attesters, which this build does
            // not have yet: say so rather than pretend.
            tracing::warn!(
                "{tee} hardware found, but this build has no {tee} attester yet; using the \
                 SIMULATED TEE"
            );
        }
        let measurement = match executable {
            Some(path) => measure(path)?,
            None => running_build()?,
        };
        let platform =
            SimPlatform::load_or_create(data_dir).map_err(|e| internal(e.to_string()))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random generator");
        Ok(Identity {
            attester: Box::new(SimAttester::new(platform, measurement, SECURITY_VERSION)),
            key: SigningKey::from_bytes(&seed),
            sim_anchor_file: Some(data_dir.join(SimPlatform::ANCHOR_FILE)),
            hardware_found,
        })
    }

    pub(crate) fn tee(&self) -> TeeType {
        self.attester.tee()
    }

    pub(crate) fn measurement(&self) -> Measurement {
        self.attester.measurement()
    }

    pub(crate) fn attest(&self, nonce: &[u8]) -> Result<AttestationReport, RuntimeError> {
        let identity = self.key.verifying_key();
        let report_data = report_data_for(identity.as_bytes(), nonce);
        let evidence = self
            .attester
            .attest(&report_data)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        Ok(AttestationReport {
            tee: self.tee(),
            simulated: self.tee() == TeeType::Sim,
            measurement: self.measurement(),
            identity_key: hex::encode(identity.as_bytes()),
            nonce: hex::encode(nonce),
            evidence,
        })
    }
}

fn measure(path: &Path) -> Result<Measurement, RuntimeError> {
    measure_file(path)
        .map_err(|e| RuntimeError::Internal(format!("cannot measure {}: {e}", path.display())))
}

/// The measurement of the running executable, taken once per process (the file a process runs
/// does not change under it, and hashing a large binary for every platform opened is waste).
fn running_build() -> Result<Measurement, RuntimeError> {
    static MEASURED: std::sync::OnceLock<Measurement> = std::sync::OnceLock::new();
    if let Some(m) = MEASURED.get() {
        return Ok(*m);
    }
    let exe = std::env::current_exe()
        .map_err(|e| RuntimeError::Internal(format!("cannot find the running executable: {e}")))?;
    let measurement = measure(&exe)?;
    Ok(*MEASURED.get_or_init(|| measurement))
}

/// The security version this build reports; raised when a fix must lock out older builds.
const SECURITY_VERSION: u32 = 1;
