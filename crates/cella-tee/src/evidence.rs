//! Evidence and what it claims.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// The kinds of TEE cella knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeType {
    /// The simulated TEE: no hardware protection at all.
    Sim,
    /// Intel SGX through Gramine.
    Sgx,
    /// Intel TDX.
    Tdx,
    /// AMD SEV-SNP.
    SevSnp,
}

impl TeeType {
    pub fn as_str(self) -> &'static str {
        match self {
            TeeType::Sim => "sim",
            TeeType::Sgx => "sgx",
            TeeType::Tdx => "tdx",
            TeeType::SevSnp => "sev-snp",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            TeeType::Sim => 0,
            TeeType::Sgx => 1,
            TeeType::Tdx => 2,
            TeeType::SevSnp => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        [TeeType::Sim, TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp]
            .into_iter()
            .find(|t| t.code() == code)
    }
}

impl fmt::Display for TeeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TeeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sim" => Ok(TeeType::Sim),
            "sgx" => Ok(TeeType::Sgx),
            "tdx" => Ok(TeeType::Tdx),
            "sev-snp" => Ok(TeeType::SevSnp),
            other => Err(format!(
                "unknown TEE type `{other}`; use sim, sgx, tdx or sev-snp"
            )),
        }
    }
}

/// What a TEE measured about the code it runs: 48 bytes (SHA-384, like TDX's MRTD and SNP's
/// launch digest; SGX's 32-byte MRENCLAVE is zero-extended).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measurement(pub [u8; 48]);

impl Measurement {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", self.to_hex())
    }
}

impl FromStr for Measurement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 48];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| format!("`{s}` is not a measurement: expected 96 hex digits"))?;
        Ok(Measurement(out))
    }
}

impl Serialize for Measurement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Measurement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The 64 bytes a verifier wants bound into evidence (a key, a nonce, a hash of both).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReportData(pub [u8; 64]);

impl fmt::Debug for ReportData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReportData({})", hex::encode(self.0))
    }
}

/// The report data cella binds: SHA-512 over a domain tag, the attested public key and the
/// client's nonce (empty when none was asked for).
pub fn report_data_for(public_key: &[u8], nonce: &[u8]) -> ReportData {
    let mut hash = Sha512::new();
    hash.update(b"cella attestation v1\0");
    hash.update((public_key.len() as u64).to_le_bytes());
    hash.update(public_key);
    hash.update(nonce);
    ReportData(hash.finalize().into())
}

/// Evidence as it travels: the TEE type, the backend's own bytes (a quote or report) and the
/// public endorsements a verifier needs beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub tee: TeeType,
    #[serde(with = "hex_bytes")]
    pub quote: Vec<u8>,
    /// DCAP: the collateral JSON (TCB info, QE identity, CRLs); SEV-SNP: the chip's VCEK
    /// (DER). Signed under the vendor's root, so it needs no trusted channel. Empty for sim.
    #[serde(default, with = "hex_bytes", skip_serializing_if = "Vec::is_empty")]
    pub collateral: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    pub tee: TeeType,
    /// True for the simulated TEE: nothing about hardware is proven.
    pub simulated: bool,
    pub measurement: Measurement,
    #[serde(serialize_with = "hex_array")]
    pub report_data: [u8; 64],
    pub security_version: u32,
    /// Identifies the platform (sim: a hash of its platform key; SGX/TDX: the PPID; SEV-SNP:
    /// the start of the chip id).
    pub platform_id: String,
    /// The vendor's verdict on the platform's patch level (DCAP: `UpToDate`,
    /// `SWHardeningNeeded`, `OutOfDate`, …); none for backends without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb_status: Option<String>,
    /// Security advisories that apply to this platform (DCAP).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<String>,
    /// The backend's registers behind `measurement` (MRENCLAVE, MRTD, RTMRs, policy, …).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
    /// SEV-SNP only: the platform's patch levels and the privilege level of the requester.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpPlatform>,
}

/// SEV-SNP security patch levels (the report's REPORTED_TCB, certified by its VCEK).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl SnpTcb {
    /// Whether every component is at least `minimum`'s.
    pub fn meets(&self, minimum: &SnpTcb) -> bool {
        self.bootloader >= minimum.bootloader
            && self.tee >= minimum.tee
            && self.snp >= minimum.snp
            && self.microcode >= minimum.microcode
    }
}

impl fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// What an SEV-SNP report says about the platform beyond the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SnpPlatform {
    pub reported_tcb: SnpTcb,
    /// The VMPL of the software that asked for the report (0 is the most privileged).
    pub vmpl: u32,
}

fn hex_array<S: serde::Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the evidence is malformed: {0}")]
    Malformed(String),
    #[error("the evidence's signature does not verify against any trusted {tee} platform key")]
    BadSignature { tee: TeeType },
    #[error("{tee} evidence rejected: {reason}")]
    Rejected { tee: TeeType, reason: String },
    #[error("no verifier for {0} evidence is configured")]
    NoVerifier(TeeType),
}

/// Evidence about a node as the API returns it (`GET /v1/attestation`): unverified until a
/// client checks it against a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReport {
    pub tee: TeeType,
    pub simulated: bool,
    pub measurement: Measurement,
    /// Hex public key of the node; report data = [`report_data_for`]`(key, nonce)`.
    pub identity_key: String,
    /// Hex of the nonce the evidence is bound to.
    pub nonce: String,
    pub evidence: Evidence,
}
