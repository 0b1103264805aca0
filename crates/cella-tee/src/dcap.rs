//! Intel SGX and TDX quotes (DCAP), verified offline with the `dcap-qvl` crate: the quote's
//! signature chain up to Intel's root CA (built into dcap-qvl), the quoting enclave's identity,
//! the platform's TCB level and the certificate revocation lists, all from the *collateral*
//! that travels with the evidence. The collateral needs no trusted channel: everything in it
//! is signed under Intel's root. The time is an argument, so verification is pure.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;
use sha2::{Digest, Sha384};

use crate::{Claims, Evidence, Measurement, TeeType, Verifier, VerifyError};

/// Verifies SGX or TDX quotes whose DCAP collateral (JSON, as Intel's PCS/PCCS serve it and
/// dcap-qvl reads it) is in [`Evidence::collateral`].
pub struct DcapVerifier {
    tee: TeeType,
}

impl DcapVerifier {
    pub fn sgx() -> Self {
        DcapVerifier { tee: TeeType::Sgx }
    }

    pub fn tdx() -> Self {
        DcapVerifier { tee: TeeType::Tdx }
    }
}

impl Verifier for DcapVerifier {
    fn tee(&self) -> TeeType {
        self.tee
    }

    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        if evidence.tee != self.tee {
            return Err(VerifyError::NoVerifier(evidence.tee));
        }
        if evidence.collateral.is_empty() {
            return Err(VerifyError::Malformed(
                "DCAP evidence needs its collateral (TCB info, QE identity, CRLs) beside the \
                 quote, and this evidence has none"
                    .into(),
            ));
        }
        let collateral: QuoteCollateralV3 = serde_json::from_slice(&evidence.collateral)
            .map_err(|e| VerifyError::Malformed(format!("the DCAP collateral: {e}")))?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| VerifyError::Malformed("the verification time is before 1970".into()))?
            .as_secs();
        let verified = dcap_qvl::verify::rustcrypto::verify(&evidence.quote, &collateral, now)
            .map_err(|e| VerifyError::Rejected {
                tee: self.tee,
                reason: format!("{e:#}"),
            })?;
        let mut details = BTreeMap::new();
        let (measurement, report_data, security_version) = match (&verified.report, self.tee) {
            (Report::SgxEnclave(enclave), TeeType::Sgx) => {
                details.insert("mr_enclave".to_owned(), hex::encode(enclave.mr_enclave));
                details.insert("mr_signer".to_owned(), hex::encode(enclave.mr_signer));
                details.insert("isv_prod_id".to_owned(), enclave.isv_prod_id.to_string());
                (
                    sgx_measurement(&enclave.mr_enclave),
                    enclave.report_data,
                    u32::from(enclave.isv_svn),
                )
            }
            (report, TeeType::Tdx) if report.as_td10().is_some() => {
                let td = report.as_td10().expect("checked above");
                details.insert("mr_td".to_owned(), hex::encode(td.mr_td));
                for (i, rtmr) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
                    .iter()
                    .enumerate()
                {
                    details.insert(format!("rtmr{i}"), hex::encode(rtmr));
                }
                details.insert("mr_config_id".to_owned(), hex::encode(td.mr_config_id));
                details.insert("tee_tcb_svn".to_owned(), hex::encode(td.tee_tcb_svn));
                (
                    tdx_measurement(&td.mr_td, [&td.rt_mr0, &td.rt_mr1, &td.rt_mr2]),
                    td.report_data,
                    0,
                )
            }
            (_, expected) => {
                return Err(VerifyError::Malformed(format!(
                    "the evidence says {expected}, but the quote is of another kind"
                )));
            }
        };
        Ok(Claims {
            tee: self.tee,
            simulated: false,
            measurement,
            report_data,
            security_version,
            platform_id: hex::encode(&verified.ppid),
            tcb_status: Some(verified.status),
            advisories: verified.advisory_ids,
            details,
            snp: None,
        })
    }
}

/// An SGX enclave's measurement is its 32-byte MRENCLAVE; cella's measurements are 48 bytes,
/// so it is MRENCLAVE followed by 16 zero bytes (its hex form starts with MRENCLAVE's).
pub fn sgx_measurement(mr_enclave: &[u8; 32]) -> Measurement {
    let mut measurement = [0u8; 48];
    measurement[..32].copy_from_slice(mr_enclave);
    Measurement(measurement)
}

/// A TD's boot chain: SHA-384 over MRTD (the virtual firmware) and RTMR0–2 (firmware
/// configuration, kernel and command line, initrd). RTMR3 is left out: software in the TD may
/// extend it at run time; the claims' details carry it.
pub fn tdx_measurement(mr_td: &[u8; 48], rtmrs: [&[u8; 48]; 3]) -> Measurement {
    let mut hash = Sha384::new();
    hash.update(b"cella tdx measurement v1\0");
    hash.update(mr_td);
    for rtmr in rtmrs {
        hash.update(rtmr);
    }
    Measurement(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SGX_QUOTE: &[u8] = include_bytes!("../testdata/dcap/sgx_quote");
    const SGX_COLLATERAL: &[u8] = include_bytes!("../testdata/dcap/sgx_quote_collateral.json");
    const TDX_QUOTE: &[u8] = include_bytes!("../testdata/dcap/tdx_quote");
    const TDX_COLLATERAL: &[u8] = include_bytes!("../testdata/dcap/tdx_quote_collateral.json");
    /// 2025-07-01T00:00:00Z: inside both samples' collateral validity (see testdata/README.md).
    const PINNED: u64 = 1_751_328_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn evidence(tee: TeeType, quote: &[u8], collateral: &[u8]) -> Evidence {
        Evidence {
            tee,
            quote: quote.to_vec(),
            collateral: collateral.to_vec(),
        }
    }

    fn rejected(result: Result<Claims, VerifyError>) -> String {
        match result {
            Err(VerifyError::Rejected { reason, .. }) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn the_sgx_sample_quote_verifies_at_the_pinned_time() {
        let claims = DcapVerifier::sgx()
            .verify(
                &evidence(TeeType::Sgx, SGX_QUOTE, SGX_COLLATERAL),
                at(PINNED),
            )
            .unwrap();
        assert!(!claims.simulated);
        assert_eq!(
            claims.tcb_status.as_deref(),
            Some("ConfigurationAndSWHardeningNeeded")
        );
        assert_eq!(claims.advisories, ["INTEL-SA-00289", "INTEL-SA-00615"]);
        assert!(claims.report_data.starts_with(b"Hello, world!"));
        let mr_enclave = &claims.details["mr_enclave"];
        assert!(claims.measurement.to_hex().starts_with(mr_enclave.as_str()));
    }

    #[test]
    fn the_tdx_sample_quote_verifies_at_the_pinned_time() {
        let claims = DcapVerifier::tdx()
            .verify(
                &evidence(TeeType::Tdx, TDX_QUOTE, TDX_COLLATERAL),
                at(PINNED),
            )
            .unwrap();
        assert_eq!(claims.tcb_status.as_deref(), Some("UpToDate"));
        assert!(claims.details["mr_td"].starts_with("91eb2b44"));
        assert_eq!(&claims.report_data[..], &TDX_QUOTE[568..632]);
    }

    #[test]
    fn a_flipped_byte_fails_with_the_reason() {
        for (tee, quote, collateral, offsets) in [
            (TeeType::Sgx, SGX_QUOTE, SGX_COLLATERAL, [368, 440]),
            (TeeType::Tdx, TDX_QUOTE, TDX_COLLATERAL, [568, 640]),
        ] {
            let verifier = DcapVerifier { tee };
            // Report data, then the signature.
            for offset in offsets {
                let mut flipped = quote.to_vec();
                flipped[offset] ^= 1;
                let reason =
                    rejected(verifier.verify(&evidence(tee, &flipped, collateral), at(PINNED)));
                assert!(reason.contains("signature is invalid"), "{tee}: {reason}");
            }
        }
        // The collateral is signed too: an edited TCB info is refused.
        let text = std::str::from_utf8(TDX_COLLATERAL).unwrap();
        let edited = text.replacen("UpToDate", "UpToDatf", 1);
        assert_ne!(edited, text);
        assert!(
            DcapVerifier::tdx()
                .verify(
                    &evidence(TeeType::Tdx, TDX_QUOTE, edited.as_bytes()),
                    at(PINNED)
                )
                .is_err()
        );
    }

    #[test]
    fn outside_the_collateral_window_fails() {
        let sgx = evidence(TeeType::Sgx, SGX_QUOTE, SGX_COLLATERAL);
        // TCB info issued 2025-06-19T10:56:11Z; QE identity valid until 2025-07-19T10:01:18Z.
        let early = rejected(DcapVerifier::sgx().verify(&sgx, at(1_750_330_570)));
        assert!(early.contains("in the future"), "{early}");
        assert!(DcapVerifier::sgx().verify(&sgx, at(1_750_330_571)).is_ok());
        assert!(DcapVerifier::sgx().verify(&sgx, at(1_752_919_278)).is_ok());
        let late = rejected(DcapVerifier::sgx().verify(&sgx, at(1_752_919_279)));
        assert!(late.contains("expired"), "{late}");
        let tdx = evidence(TeeType::Tdx, TDX_QUOTE, TDX_COLLATERAL);
        assert!(DcapVerifier::tdx().verify(&tdx, at(1_780_000_000)).is_err());
    }

    #[test]
    fn a_quote_of_another_kind_or_without_collateral_is_malformed() {
        let tdx_as_sgx = evidence(TeeType::Sgx, TDX_QUOTE, TDX_COLLATERAL);
        assert!(matches!(
            DcapVerifier::sgx().verify(&tdx_as_sgx, at(PINNED)),
            Err(VerifyError::Malformed(_))
        ));
        let bare = evidence(TeeType::Sgx, SGX_QUOTE, b"");
        assert!(matches!(
            DcapVerifier::sgx().verify(&bare, at(PINNED)),
            Err(VerifyError::Malformed(_))
        ));
    }
}
