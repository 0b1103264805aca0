//! Attesters for real TEEs, through the files their Linux interfaces expose:
//!
//! - **TDX and SEV-SNP** through configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+):
//!   make an entry directory, write the 64 bytes of report data to `inblob`, read the quote
//!   (TDX) or report (SNP) from `outblob` and, for SNP, the certificate table with the chip's
//!   VCEK from `auxblob`; `generation` tells whether another writer raced us.
//! - **SGX** through Gramine's `/dev/attestation`: write `user_report_data`, read `quote`.
//!
//! Everything read here comes from the (untrusted) kernel or host: it is parsed with bounds
//! checks only, never trusted — the verifier on the client's side is what checks it.
//! DCAP quotes are verified against collateral (TCB info, QE identity, CRLs) that the platform's
//! caching service (PCCS) serves; the operator keeps a copy in the data directory
//! ([`DCAP_COLLATERAL_FILE`]), which travels with each quote.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{
    AttestError, Attester, Evidence, Measurement, ReportData, TeeType, sgx_measurement,
    tdx_measurement,
};

/// Where configfs-tsm reports are requested.
pub const TSM_REPORTS: &str = "/sys/kernel/config/tsm/report";
/// Gramine's attestation pseudo-files.
pub const GRAMINE_ATTESTATION: &str = "/dev/attestation";
/// DCAP collateral (JSON as PCCS serves it) that the operator keeps fresh in the data dir.
pub const DCAP_COLLATERAL_FILE: &str = "dcap-collateral.json";

/// The GUID of the VCEK entry in an SEV-SNP certificate table (bytes in string order).
const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

fn backend(what: impl std::fmt::Display) -> AttestError {
    AttestError::Backend(what.to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AttestError + '_ {
    move |e| backend(format!("{}: {e}", path.display()))
}

/// What one configfs-tsm request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    pub tee: TeeType,
    pub outblob: Vec<u8>,
    pub auxblob: Vec<u8>,
}

/// Runs one request in an existing configfs-tsm entry directory `entry`.
pub fn tsm_request(entry: &Path, report_data: &ReportData) -> Result<TsmReport, AttestError> {
    let file = |name: &str| entry.join(name);
    let read_text = |name: &str| {
        std::fs::read_to_string(file(name))
            .map(|s| s.trim().to_owned())
            .map_err(io(&file(name)))
    };
    std::fs::write(file("inblob"), report_data.0).map_err(io(&file("inblob")))?;
    let generation = read_text("generation")?;
    let tee = match read_text("provider")?.as_str() {
        "tdx_guest" => TeeType::Tdx,
        "sev_guest" => TeeType::SevSnp,
        other => return Err(backend(format!("unknown configfs-tsm provider `{other}`"))),
    };
    let outblob = std::fs::read(file("outblob")).map_err(io(&file("outblob")))?;
    let auxblob = match std::fs::read(file("auxblob")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&file("auxblob"))(e)),
    };
    if read_text("generation")? != generation {
        return Err(backend(
            "another process wrote to this configfs-tsm entry while the report was made; retry",
        ));
    }
    Ok(TsmReport {
        tee,
        outblob,
        auxblob,
    })
}

/// The VCEK (DER) in an SEV-SNP certificate table: entries of {GUID, offset u32, length u32},
/// little-endian, ended by an all-zero GUID; offsets count from the table's start.
pub fn vcek_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    const ENTRY: usize = 24;
    for entry in table.chunks_exact(ENTRY) {
        let guid = &entry[..16];
        if guid.iter().all(|b| *b == 0) {
            break;
        }
        if guid == VCEK_GUID {
            let offset = u32::from_le_bytes(entry[16..20].try_into().ok()?) as usize;
            let length = u32::from_le_bytes(entry[20..24].try_into().ok()?) as usize;
            return table
                .get(offset..offset.checked_add(length)?)
                .map(<[u8]>::to_vec);
        }
    }
    None
}

/// TDX or SEV-SNP evidence through configfs-tsm.
pub struct TsmAttester {
    reports: PathBuf,
    tee: TeeType,
    measurement: Measurement,
    collateral_file: PathBuf,
    next_entry: AtomicU64,
}

impl TsmAttester {
    /// Asks for one report (report data all zero) to learn the TEE type and the measurement.
    pub fn open(reports: &Path, data_dir: &Path) -> Result<Self, AttestError> {
        let mut attester = TsmAttester {
            reports: reports.to_owned(),
            tee: TeeType::Tdx,
            measurement: Measurement([0; 48]),
            collateral_file: data_dir.join(DCAP_COLLATERAL_FILE),
            next_entry: AtomicU64::new(0),
        };
        let first = attester.request(&ReportData([0; 64]))?;
        attester.tee = first.tee;
        attester.measurement = measurement_of(first.tee, &first.outblob)?;
        Ok(attester)
    }

    fn request(&self, report_data: &ReportData) -> Result<TsmReport, AttestError> {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .reports
            .join(format!("cella-{}-{n}", std::process::id()));
        // configfs makes the entry's attribute files when the directory is made.
        std::fs::create_dir(&entry).map_err(io(&entry))?;
        let result = tsm_request(&entry, report_data);
        if let Err(e) = std::fs::remove_dir(&entry) {
            tracing::warn!("cannot remove {}: {e}", entry.display());
        }
        result
    }
}

impl Attester for TsmAttester {
    fn tee(&self) -> TeeType {
        self.tee
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn attest(&self, report_data: &ReportData) -> Result<Evidence, AttestError> {
        let report = self.request(report_data)?;
        let collateral = match report.tee {
            TeeType::SevSnp => vcek_from_cert_table(&report.auxblob).unwrap_or_default(),
            _ => read_collateral(&self.collateral_file),
        };
        Ok(Evidence {
            tee: report.tee,
            quote: report.outblob,
            collateral,
        })
    }
}

/// SGX evidence through Gramine's `/dev/attestation`.
pub struct GramineAttester {
    dir: PathBuf,
    measurement: Measurement,
    collateral_file: PathBuf,
    /// Gramine's pseudo-files hold one request at a time.
    lock: std::sync::Mutex<()>,
}

impl GramineAttester {
    pub fn open(dir: &Path, data_dir: &Path) -> Result<Self, AttestError> {
        let kind = dir.join("attestation_type");
        let kind = std::fs::read_to_string(&kind).map_err(io(&kind))?;
        if kind.trim() != "dcap" {
            return Err(backend(format!(
                "Gramine's attestation type is `{}`; cella needs `dcap` (set \
                 sgx.remote_attestation = \"dcap\" in the manifest)",
                kind.trim()
            )));
        }
        let mut attester = GramineAttester {
            dir: dir.to_owned(),
            measurement: Measurement([0; 48]),
            collateral_file: data_dir.join(DCAP_COLLATERAL_FILE),
            lock: std::sync::Mutex::new(()),
        };
        let first = attester.quote(&ReportData([0; 64]))?;
        attester.measurement = measurement_of(TeeType::Sgx, &first)?;
        Ok(attester)
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, AttestError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let user_data = self.dir.join("user_report_data");
        std::fs::write(&user_data, report_data.0).map_err(io(&user_data))?;
        let quote = self.dir.join("quote");
        std::fs::read(&quote).map_err(io(&quote))
    }

    /// The enclave's sealing key bound to MRENCLAVE (Gramine's `_sgx_mrenclave`, 16 bytes).
    pub fn mrenclave_sealing_key(&self) -> Result<Vec<u8>, AttestError> {
        let key = self.dir.join("keys/_sgx_mrenclave");
        std::fs::read(&key).map_err(io(&key))
    }
}

impl Attester for GramineAttester {
    fn tee(&self) -> TeeType {
        TeeType::Sgx
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn attest(&self, report_data: &ReportData) -> Result<Evidence, AttestError> {
        Ok(Evidence {
            tee: TeeType::Sgx,
            quote: self.quote(report_data)?,
            collateral: read_collateral(&self.collateral_file),
        })
    }
}

fn read_collateral(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        tracing::warn!(
            "no DCAP collateral at {} ({e}): clients cannot verify this node's quotes until the \
             operator stores the platform's collateral there",
            path.display()
        );
        Vec::new()
    })
}

/// Reads the measurement out of a quote or report (unverified: it is this node's own).
fn measurement_of(tee: TeeType, quote: &[u8]) -> Result<Measurement, AttestError> {
    match tee {
        TeeType::SevSnp => AttestationReport::from_bytes(quote)
            .map(|report| Measurement(report.measurement))
            .map_err(|e| backend(format!("the SEV-SNP report: {e}"))),
        TeeType::Tdx | TeeType::Sgx => {
            let parsed = dcap_qvl::quote::Quote::parse(quote)
                .map_err(|e| backend(format!("the {tee} quote: {e:#}")))?;
            match (tee, &parsed.report) {
                (TeeType::Sgx, dcap_qvl::quote::Report::SgxEnclave(enclave)) => {
                    Ok(sgx_measurement(&enclave.mr_enclave))
                }
                (TeeType::Tdx, report) => report
                    .as_td10()
                    .map(|td| tdx_measurement(&td.mr_td, [&td.rt_mr0, &td.rt_mr1, &td.rt_mr2]))
                    .ok_or_else(|| backend("configfs-tsm returned a quote that is not TDX")),
                _ => Err(backend(format!("the quote is not an {tee} quote"))),
            }
        }
        TeeType::Sim => Err(backend("the simulated TEE has no hardware quote")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verifier;

    const TDX_QUOTE: &[u8] = include_bytes!("../testdata/dcap/tdx_quote");
    const SGX_QUOTE: &[u8] = include_bytes!("../testdata/dcap/sgx_quote");
    const SNP_REPORT: &str = include_str!("../testdata/snp/report_milan.hex");
    const VCEK: &[u8] = include_bytes!("../testdata/snp/vcek_milan.der");

    /// A certificate table as the kernel returns it: entries, a zero entry, then the data.
    fn cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * 24;
        let mut table = Vec::new();
        let mut data = Vec::new();
        for (guid, bytes) in entries {
            table.extend_from_slice(guid);
            table.extend_from_slice(&((header + data.len()) as u32).to_le_bytes());
            table.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            data.extend_from_slice(bytes);
        }
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(&data);
        table
    }

    /// Plays configfs: an entry directory with the files the kernel would make.
    fn entry(provider: &str, outblob: &[u8], auxblob: Option<&[u8]>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(dir.path().join("generation"), "1\n").unwrap();
        std::fs::write(dir.path().join("outblob"), outblob).unwrap();
        if let Some(aux) = auxblob {
            std::fs::write(dir.path().join("auxblob"), aux).unwrap();
        }
        dir
    }

    #[test]
    fn a_tdx_request_writes_the_report_data_and_reads_the_quote() {
        let dir = entry("tdx_guest", TDX_QUOTE, None);
        let report_data = ReportData([9; 64]);
        let report = tsm_request(dir.path(), &report_data).unwrap();
        assert_eq!(report.tee, TeeType::Tdx);
        assert_eq!(report.outblob, TDX_QUOTE);
        assert_eq!(
            std::fs::read(dir.path().join("inblob")).unwrap(),
            report_data.0
        );
        let measurement = measurement_of(TeeType::Tdx, &report.outblob).unwrap();
        let claims = crate::DcapVerifier::tdx()
            .verify(
                &Evidence {
                    tee: TeeType::Tdx,
                    quote: report.outblob,
                    collateral: include_bytes!("../testdata/dcap/tdx_quote_collateral.json")
                        .to_vec(),
                },
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_751_328_000),
            )
            .unwrap();
        assert_eq!(
            claims.measurement, measurement,
            "attester and verifier agree"
        );
    }

    #[test]
    fn an_snp_request_finds_the_vcek_in_the_certificate_table() {
        let report = hex::decode(SNP_REPORT.trim()).unwrap();
        let other_guid = [0x4a; 16];
        let table = cert_table(&[(other_guid, b"ask"), (VCEK_GUID, VCEK)]);
        let dir = entry("sev_guest", &report, Some(&table));
        let got = tsm_request(dir.path(), &ReportData([0; 64])).unwrap();
        assert_eq!(got.tee, TeeType::SevSnp);
        assert_eq!(vcek_from_cert_table(&got.auxblob).unwrap(), VCEK);
        assert!(measurement_of(TeeType::SevSnp, &got.outblob).is_ok());
    }

    #[test]
    fn lying_kernels_are_refused_not_trusted() {
        // An unknown provider.
        let dir = entry("acme_guest", TDX_QUOTE, None);
        assert!(tsm_request(dir.path(), &ReportData([0; 64])).is_err());
        // A certificate table pointing outside itself, or without a VCEK.
        let mut table = cert_table(&[(VCEK_GUID, VCEK)]);
        table[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(vcek_from_cert_table(&table), None);
        assert_eq!(vcek_from_cert_table(&cert_table(&[([1; 16], b"x")])), None);
        assert_eq!(vcek_from_cert_table(&[0xff; 7]), None);
        // A quote of the wrong kind.
        assert!(measurement_of(TeeType::Tdx, SGX_QUOTE).is_err());
        assert!(measurement_of(TeeType::Sgx, TDX_QUOTE).is_err());
        assert!(measurement_of(TeeType::SevSnp, b"short").is_err());
    }

    #[test]
    fn gramine_writes_user_report_data_and_reads_the_quote() {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("attestation_type"), "dcap").unwrap();
        std::fs::write(dir.path().join("quote"), SGX_QUOTE).unwrap();
        std::fs::write(data.path().join(DCAP_COLLATERAL_FILE), b"{}").unwrap();
        let attester = GramineAttester::open(dir.path(), data.path()).unwrap();
        let evidence = attester.attest(&ReportData([3; 64])).unwrap();
        assert_eq!(evidence.quote, SGX_QUOTE);
        assert_eq!(evidence.collateral, b"{}");
        assert_eq!(
            std::fs::read(dir.path().join("user_report_data")).unwrap(),
            [3; 64]
        );
        assert!(attester.measurement().to_hex().ends_with(&"0".repeat(32)));

        std::fs::write(dir.path().join("attestation_type"), "epid").unwrap();
        let refused = GramineAttester::open(dir.path(), data.path())
            .err()
            .unwrap();
        assert!(refused.to_string().contains("dcap"), "{refused}");
    }
}
