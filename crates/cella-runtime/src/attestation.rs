//! The node's attested identity: which TEE vouches for this process, the measurement of the
//! running build, and the TLS key created fresh at start-up inside this process. Its public
//! half is bound into the RA-TLS certificate's evidence and into every evidence a client asks
//! for (with the client's nonce), so a client knows the evidence speaks of the process at the
//! other end of its TLS connection, now.

use std::path::Path;

use cella_ratls::AttestedCert;
use cella_store::SealingKey;
use cella_tee::sim::{SimAttester, SimPlatform, SimPlatformFiles, measure_file};
use cella_tee::{AttestationReport, Attester, Measurement, SealingKeys, TeeType, report_data_for};

use crate::RuntimeError;

/// Longest nonce a client may send (bytes).
pub const MAX_NONCE_BYTES: usize = 64;

pub(crate) struct Identity {
    attester: Box<dyn Attester>,
    cert: AttestedCert,
    /// Seals the registry: derived inside the TEE, bound to its platform and this build.
    pub(crate) registry_key: SealingKey,
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
        let sim = SimAttester::new(platform, measurement, SECURITY_VERSION);
        let registry_key = SealingKey {
            key: sim.sealing_key("registry"),
            bound_to: format!("{} measurement {measurement}", TeeType::Sim),
        };
        let attester: Box<dyn Attester> = Box::new(sim);
        let cert = AttestedCert::issue(
            attester.as_ref(),
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        )
        .map_err(|e| internal(e.to_string()))?;
        Ok(Identity {
            attester,
            cert,
            registry_key,
            sim_anchor_file: Some(data_dir.join(SimPlatformFiles::ANCHOR)),
            hardware_found,
        })
    }

    /// The rustls configuration that presents the RA-TLS certificate.
    pub(crate) fn tls_config(&self) -> Result<rustls::ServerConfig, RuntimeError> {
        self.cert
            .server_config()
            .map_err(|e| RuntimeError::Internal(e.to_string()))
    }

    pub(crate) fn tee(&self) -> TeeType {
        self.attester.tee()
    }

    pub(crate) fn measurement(&self) -> Measurement {
        self.attester.measurement()
    }

    pub(crate) fn attest(&self, nonce: &[u8]) -> Result<AttestationReport, RuntimeError> {
        let report_data = report_data_for(&self.cert.public_key, nonce);
        let evidence = self
            .attester
            .attest(&report_data)
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        Ok(AttestationReport {
            tee: self.tee(),
            simulated: self.tee() == TeeType::Sim,
            measurement: self.measurement(),
            identity_key: hex::encode(&self.cert.public_key),
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
