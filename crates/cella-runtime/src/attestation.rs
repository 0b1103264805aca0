//! The node's attested identity: which TEE vouches for this process, the measurement of the
//! running build, and the TLS key created fresh at start-up inside this process. Its public
//! half is bound into the RA-TLS certificate's evidence and into every evidence a client asks
//! for (with the client's nonce), so a client knows the evidence speaks of the process at the
//! other end of its TLS connection, now.

use std::path::{Path, PathBuf};

use cella_ratls::AttestedCert;
use cella_store::SealingKey;
use cella_tee::hardware::{GramineAttester, TsmAttester};
use cella_tee::sim::{SimAttester, SimPlatform, SimPlatformFiles, measure_file};
use cella_tee::{
    AttestationReport, Attester, Measurement, SealingKeys, TeeType, derive_sealing_key,
    report_data_for,
};

use crate::RuntimeError;

/// Longest nonce a client may send (bytes).
pub const MAX_NONCE_BYTES: usize = 64;

pub(crate) struct Identity {
    attester: Box<dyn Attester>,
    cert: AttestedCert,
    /// Seals the registry: derived inside the TEE, bound to its platform and this build.
    pub(crate) registry_key: SealingKey,
    /// Where the simulated platform's public key (the trust anchor) is, when simulated.
    pub(crate) sim_anchor_file: Option<PathBuf>,
    /// A hardware TEE found but left unused (`--tee sim`).
    pub(crate) hardware_found: Option<TeeType>,
}

/// Which TEE a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeeMode {
    /// The hardware TEE this machine offers; the simulated one where there is none.
    #[default]
    Auto,
    /// The simulated TEE even on hardware (testing; clients see SIMULATED evidence).
    Simulated,
}

/// An attester and the root its sealing keys come from.
struct Backend {
    attester: Box<dyn Attester>,
    sealing_root: [u8; 32],
    sim_anchor_file: Option<PathBuf>,
}

impl Identity {
    /// Uses the hardware TEE when one is found (and `mode` allows it); otherwise the simulated
    /// TEE, with its platform key in `data_dir` and the SHA-384 of `executable` as the
    /// measurement. A hardware TEE whose attester fails is an error, never a quiet fallback.
    pub(crate) fn open(
        data_dir: &Path,
        sim_platform_dir: Option<&Path>,
        executable: Option<&Path>,
        mode: TeeMode,
    ) -> Result<Self, RuntimeError> {
        let internal = |what: String| RuntimeError::Internal(what);
        let hardware_found = cella_tee::detect::hardware(&cella_tee::detect::probe(Path::new("/")));
        let backend = match (mode, hardware_found) {
            (TeeMode::Auto, Some(tee)) => hardware_backend(tee, data_dir).map_err(|e| {
                internal(format!(
                    "{tee} hardware was found, but its attester failed: {e}; fix the TEE set-up \
                     (see `cella doctor`), or run with --tee sim to use the SIMULATED TEE knowingly"
                ))
            })?,
            _ => sim_backend(sim_platform_dir.unwrap_or(data_dir), executable)?,
        };
        let attester = backend.attester;
        let measurement = attester.measurement();
        let registry_key = SealingKey {
            key: derive_sealing_key(&backend.sealing_root, &measurement, "registry"),
            bound_to: format!("{} measurement {measurement}", attester.tee()),
        };
        let cert = AttestedCert::issue(
            attester.as_ref(),
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        )
        .map_err(|e| internal(e.to_string()))?;
        Ok(Identity {
            attester,
            cert,
            registry_key,
            sim_anchor_file: backend.sim_anchor_file,
            hardware_found: hardware_found.filter(|_| mode == TeeMode::Simulated),
        })
    }

    /// Signs a receipt with the identity key (the one the evidence binds).
    pub(crate) fn sign_receipt(
        &self,
        receipt: cella_receipt::Receipt,
    ) -> cella_receipt::SignedReceipt {
        cella_receipt::SignedReceipt::sign(receipt, |message| self.cert.sign(message))
    }

    /// Signs a statement with the identity key (ECDSA P-256/SHA-256, DER).
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.cert.sign(message)
    }

    pub(crate) fn public_key_hex(&self) -> String {
        hex::encode(&self.cert.public_key)
    }

    /// The rustls configuration that presents the RA-TLS certificate.
    pub(crate) fn tls_config(&self) -> Result<rustls::ServerConfig, RuntimeError> {
        self.cert
            .server_config()
            .map_err(|e| RuntimeError::Internal(e.to_string()))
    }

    pub(crate) fn attester(&self) -> &dyn Attester {
        self.attester.as_ref()
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

/// The simulated TEE, its platform key kept in `platform_dir`.
fn sim_backend(platform_dir: &Path, executable: Option<&Path>) -> Result<Backend, RuntimeError> {
    let measurement = match executable {
        Some(path) => measure(path)?,
        None => running_build()?,
    };
    let platform = SimPlatform::load_or_create(platform_dir)
        .map_err(|e| RuntimeError::Internal(e.to_string()))?;
    let sim = SimAttester::new(platform, measurement, SECURITY_VERSION);
    Ok(Backend {
        sealing_root: sim.sealing_root(),
        attester: Box::new(sim),
        sim_anchor_file: Some(platform_dir.join(SimPlatformFiles::ANCHOR)),
    })
}

fn hardware_backend(tee: TeeType, data_dir: &Path) -> Result<Backend, String> {
    match tee {
        TeeType::Sgx => {
            let gramine = GramineAttester::open(
                Path::new(cella_tee::hardware::GRAMINE_ATTESTATION),
                data_dir,
            )
            .map_err(|e| e.to_string())?;
            // The enclave's own MRENCLAVE-bound key: nothing outside the enclave can derive it.
            let key = gramine.mrenclave_sealing_key().map_err(|e| e.to_string())?;
            let sealing_root = expand_root(&key);
            Ok(Backend {
                attester: Box::new(gramine),
                sealing_root,
                sim_anchor_file: None,
            })
        }
        TeeType::Tdx | TeeType::SevSnp => {
            let tsm = TsmAttester::open(Path::new(cella_tee::hardware::TSM_REPORTS), data_dir)
                .map_err(|e| e.to_string())?;
            // configfs-tsm offers no sealing keys; a confidential VM's memory and its encrypted
            // disk are the boundary, so the root lives in the data directory on that disk.
            let sealing_root = vm_sealing_root(data_dir).map_err(|e| e.to_string())?;
            Ok(Backend {
                attester: Box::new(tsm),
                sealing_root,
                sim_anchor_file: None,
            })
        }
        TeeType::Sim => Err("the simulated TEE is not hardware".into()),
    }
}

fn expand_root(key: &[u8]) -> [u8; 32] {
    let mut root = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, key)
        .expand(b"cella sealing root v1", &mut root)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    root
}

/// The sealing root of a confidential VM: 32 random bytes made once, readable by the owner only.
fn vm_sealing_root(data_dir: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("sealing-root.key");
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::other(format!("{} is damaged (expected 32 bytes)", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut root = [0u8; 32];
            getrandom::fill(&mut root).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&root)?;
            file.sync_all()?;
            Ok(root)
        }
        Err(e) => Err(e),
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
