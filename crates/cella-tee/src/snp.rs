//! AMD SEV-SNP attestation reports, verified offline with the `sev` crate (pure-Rust crypto):
//! AMD's root key (ARK, built into `sev` for Milan, Genoa and Turin) signs the ASK, the ASK
//! signs the chip's VCEK, and the VCEK signs the report. The VCEK travels with the evidence
//! (it is public and checked against the ARK, so any channel will do). `sev` does not check
//! what a certificate chain alone cannot tell, so this module adds: the VCEK's validity at the
//! given time, that the VCEK belongs to the reporting chip and its TCB, that the report's bytes
//! are exactly those signed, and that the guest does not allow debugging.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;

use crate::{Claims, Evidence, Measurement, TeeType, Verifier, VerifyError};

/// Verifies SEV-SNP reports whose VCEK (DER) is in [`Evidence::collateral`].
#[derive(Default)]
pub struct SnpVerifier;

/// The VCEK extensions that name the chip and the TCB the key was issued for.
const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
const BOOTLOADER_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const MICROCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");

fn rejected(reason: impl Into<String>) -> VerifyError {
    VerifyError::Rejected {
        tee: TeeType::SevSnp,
        reason: reason.into(),
    }
}

impl Verifier for SnpVerifier {
    fn tee(&self) -> TeeType {
        TeeType::SevSnp
    }

    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        if evidence.tee != TeeType::SevSnp {
            return Err(VerifyError::NoVerifier(evidence.tee));
        }
        let report = AttestationReport::from_bytes(&evidence.quote)
            .map_err(|e| VerifyError::Malformed(format!("the SEV-SNP report: {e}")))?;
        // `sev` checks the signature over its re-encoding of the parsed report, which drops
        // reserved bytes: insist the bytes received are that encoding, so every byte is signed.
        let canonical = report
            .to_bytes()
            .map_err(|e| VerifyError::Malformed(format!("the SEV-SNP report: {e}")))?;
        if canonical.as_slice() != evidence.quote.as_slice() {
            return Err(VerifyError::Malformed(
                "the SEV-SNP report has bytes outside its signed fields".into(),
            ));
        }
        if !signature_padding_is_zero(&evidence.quote) {
            return Err(VerifyError::Malformed(
                "the SEV-SNP report's signature has non-zero padding".into(),
            ));
        }
        let vcek = Certificate::from_der(&evidence.collateral).map_err(|e| {
            VerifyError::Malformed(format!("the VCEK certificate beside the report: {e}"))
        })?;
        let generation = signed_by_amd(&vcek)?;
        (&vcek, &report)
            .verify()
            .map_err(|e| rejected(format!("the VCEK does not sign this report: {e}")))?;
        let x509: x509_cert::Certificate = vcek.into();
        check_validity(&x509, now)?;
        check_chip_and_tcb(&x509, &report)?;
        if report.policy.debug_allowed() {
            return Err(rejected(
                "the guest's policy allows debugging: the host can read its memory",
            ));
        }

        let mut details = BTreeMap::new();
        details.insert("amd_generation".to_owned(), generation.to_owned());
        details.insert(
            "policy".to_owned(),
            format!("{:#x}", u64::from(report.policy)),
        );
        details.insert("host_data".to_owned(), hex::encode(report.host_data));
        let reported_tcb = crate::SnpTcb {
            bootloader: report.reported_tcb.bootloader,
            tee: report.reported_tcb.tee,
            snp: report.reported_tcb.snp,
            microcode: report.reported_tcb.microcode,
        };
        details.insert("reported_tcb".to_owned(), reported_tcb.to_string());
        Ok(Claims {
            tee: TeeType::SevSnp,
            simulated: false,
            measurement: Measurement(report.measurement),
            report_data: report.report_data,
            security_version: report.guest_svn,
            platform_id: hex::encode(&report.chip_id[..16]),
            tcb_status: None,
            advisories: Vec::new(),
            details,
            snp: Some(crate::SnpPlatform {
                reported_tcb,
                vmpl: report.vmpl,
            }),
        })
    }
}

/// The signature (at 0x2A0) is r and s as 72-byte little-endian fields of which P-384 uses 48,
/// then reserved bytes: only the used bytes are signed, so the rest must be zero.
fn signature_padding_is_zero(report: &[u8]) -> bool {
    const SIGNATURE: usize = 0x2A0;
    const FIELD: usize = 72;
    const USED: usize = 48;
    report.get(SIGNATURE..).is_some_and(|signature| {
        signature.iter().enumerate().all(|(i, byte)| {
            let used = i < 2 * FIELD && i % FIELD < USED;
            used || *byte == 0
        })
    })
}

/// Which AMD root (by processor generation) signs this VCEK through its ASK.
fn signed_by_amd(vcek: &Certificate) -> Result<&'static str, VerifyError> {
    type Roots = fn() -> std::io::Result<(Certificate, Certificate)>;
    let generations: [(&str, Roots); 3] = [
        ("milan", || {
            Ok((builtin::milan::ark()?, builtin::milan::ask()?))
        }),
        ("genoa", || {
            Ok((builtin::genoa::ark()?, builtin::genoa::ask()?))
        }),
        ("turin", || {
            Ok((builtin::turin::ark()?, builtin::turin::ask()?))
        }),
    ];
    for (name, roots) in generations {
        let (ark, ask) = roots().map_err(|e| rejected(format!("AMD's {name} root: {e}")))?;
        let chain = Chain {
            ca: ca::Chain { ark, ask },
            vek: vcek.clone(),
        };
        if chain.verify().is_ok() {
            return Ok(name);
        }
    }
    Err(rejected(
        "the VCEK is not signed by AMD (no Milan, Genoa or Turin root signs its ASK chain)",
    ))
}

fn check_validity(vcek: &x509_cert::Certificate, now: SystemTime) -> Result<(), VerifyError> {
    let validity = &vcek.tbs_certificate.validity;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let not_before = validity.not_before.to_unix_duration();
    let not_after = validity.not_after.to_unix_duration();
    if now < not_before || now > not_after {
        return Err(rejected(format!(
            "the VCEK is valid from {} to {} (unix seconds), not at {}",
            not_before.as_secs(),
            not_after.as_secs(),
            now.as_secs()
        )));
    }
    Ok(())
}

/// The VCEK names the chip and the TCB it was issued for; the report must claim the same.
fn check_chip_and_tcb(
    vcek: &x509_cert::Certificate,
    report: &AttestationReport,
) -> Result<(), VerifyError> {
    let extensions = vcek
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let extension = |oid: ObjectIdentifier| {
        extensions
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    };
    let hw_id = extension(HW_ID).ok_or_else(|| rejected("the VCEK names no chip (hwID)"))?;
    // AMD encodes hwID as the raw 64 bytes; accept a DER OCTET STRING around them as well.
    let hw_id = x509_cert::der::asn1::OctetString::from_der(hw_id)
        .map(|o| o.as_bytes().to_vec())
        .unwrap_or_else(|_| hw_id.to_vec());
    if hw_id != report.chip_id {
        return Err(rejected("the VCEK was issued for another chip"));
    }
    let tcb = &report.reported_tcb;
    for (oid, name, reported) in [
        (BOOTLOADER_SPL, "bootloader", tcb.bootloader),
        (TEE_SPL, "tee", tcb.tee),
        (SNP_SPL, "snp", tcb.snp),
        (MICROCODE_SPL, "microcode", tcb.microcode),
    ] {
        let certified = extension(oid)
            .and_then(|der| u8::from_der(der).ok())
            .ok_or_else(|| rejected(format!("the VCEK names no {name} security patch level")))?;
        if certified != reported {
            return Err(rejected(format!(
                "the report claims {name} patch level {reported}, its VCEK was issued for \
                 {certified}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const REPORT_HEX: &str = include_str!("../testdata/snp/report_milan.hex");
    const VCEK: &[u8] = include_bytes!("../testdata/snp/vcek_milan.der");
    /// Inside the sample VCEK's validity (2023-04-03 to 2030-04-03).
    const PINNED: u64 = 1_751_328_000;

    fn report() -> Vec<u8> {
        hex::decode(REPORT_HEX.trim()).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn evidence(report: Vec<u8>) -> Evidence {
        Evidence {
            tee: TeeType::SevSnp,
            quote: report,
            collateral: VCEK.to_vec(),
        }
    }

    #[test]
    fn the_milan_sample_report_verifies_at_the_pinned_time() {
        let claims = SnpVerifier.verify(&evidence(report()), at(PINNED)).unwrap();
        assert!(!claims.simulated);
        assert!(claims.measurement.to_hex().starts_with("7a1e5c26"));
        assert_eq!(claims.details["amd_generation"], "milan");
    }

    #[test]
    fn every_flipped_signed_byte_fails() {
        let report = report();
        // The signed part of a version 2 report ends at 0x2A0; the signature (r, s, padding)
        // fills the rest.
        for offset in (0..0x2A0).chain([0x2A0, 0x2D0, 0x2E8, 0x400]) {
            let mut flipped = report.clone();
            flipped[offset] ^= 1;
            assert!(
                SnpVerifier.verify(&evidence(flipped), at(PINNED)).is_err(),
                "flipping byte {offset:#x} went unnoticed"
            );
        }
    }

    #[test]
    fn outside_the_vcek_validity_or_with_a_broken_vcek_fails() {
        let reason = match SnpVerifier.verify(&evidence(report()), at(1_680_000_000)) {
            Err(VerifyError::Rejected { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason.contains("VCEK is valid from"), "{reason}");
        assert!(
            SnpVerifier
                .verify(&evidence(report()), at(1_950_000_000))
                .is_err()
        );
        let mut broken = evidence(report());
        broken.collateral[300] ^= 1;
        assert!(SnpVerifier.verify(&broken, at(PINNED)).is_err());
    }
}
