//! What a client demands of evidence, and the verdict: one [`Check`] per question, so a CLI can
//! print ✔/✗ lines with the expected and the actual value.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{Claims, Evidence, Measurement, ReportData, TeeType, Verifier};

/// A verification policy; plain serde data, usually read from TOML:
///
/// ```toml
/// allowed_tee = ["tdx", "sev-snp", "sgx"]
/// measurements = ["<96 hex digits>"]   # the platform builds you trust
/// min_security_version = 0
/// accepted_tcb_status = ["UpToDate"]   # DCAP verdicts on the platform's patch level
/// snp_min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }  # SEV-SNP patch floor
/// snp_max_vmpl = 0                     # SEV-SNP: reports only from the most privileged level
/// allow_simulated = false              # true only for testing: sim evidence proves nothing
/// sim_anchors = ["<64 hex digits>"]    # simulated platforms' public keys
/// allow_unbound = false                # true only for a local `--insecure-http` node
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "hardware_tees")]
    pub allowed_tee: Vec<TeeType>,
    #[serde(default)]
    pub measurements: Vec<Measurement>,
    #[serde(default)]
    pub min_security_version: u32,
    /// TCB statuses (DCAP) to accept; a platform that needs patches is refused unless listed.
    #[serde(default = "up_to_date")]
    pub accepted_tcb_status: Vec<String>,
    /// SEV-SNP: the lowest patch levels to accept (set it to your fleet's current levels; the
    /// default accepts any).
    #[serde(default)]
    pub snp_min_tcb: crate::SnpTcb,
    /// SEV-SNP: the highest VMPL a report may come from.
    #[serde(default)]
    pub snp_max_vmpl: u32,
    #[serde(default)]
    pub allow_simulated: bool,
    #[serde(default)]
    pub sim_anchors: Vec<String>,
    /// Accept a node whose evidence is not bound to the connection it came over (plain
    /// HTTP). Off by default: anything between the client and such a node can relay the
    /// node's evidence and read what the client sends next, its token included. Only for a
    /// local `cella up --insecure-http` node while debugging.
    #[serde(default)]
    pub allow_unbound: bool,
}

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".to_owned()]
}

fn hardware_tees() -> Vec<TeeType> {
    vec![TeeType::Sgx, TeeType::Tdx, TeeType::SevSnp]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_tee: hardware_tees(),
            measurements: Vec::new(),
            min_security_version: 0,
            accepted_tcb_status: up_to_date(),
            snp_min_tcb: crate::SnpTcb::default(),
            snp_max_vmpl: 0,
            allow_simulated: false,
            sim_anchors: Vec::new(),
            allow_unbound: false,
        }
    }
}

/// One question asked of the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub expected: String,
    pub actual: String,
    /// What to do when it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The verdict on one piece of evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub checks: Vec<Check>,
    /// The claims, when the evidence itself verified (even if the policy refused them).
    pub claims: Option<Claims>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The failed checks on one line: `name (expected …, found …); …`.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} (expected {}, found {})", c.name, c.expected, c.actual))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn check(
    name: &'static str,
    ok: bool,
    expected: impl Into<String>,
    actual: impl Into<String>,
) -> Check {
    Check {
        name,
        ok,
        expected: expected.into(),
        actual: actual.into(),
        fix: None,
    }
}

impl Policy {
    /// Verifies `evidence` with every verifier this build has, trusting the anchors the policy
    /// names (`sim_anchors`), and judges its claims. Fails only if an anchor is malformed.
    pub fn verify_with_anchors(
        &self,
        evidence: &Evidence,
        expected_report_data: Option<&ReportData>,
        now: SystemTime,
    ) -> Result<Verification, crate::VerifyError> {
        let sim = crate::sim::SimVerifier::new(&self.sim_anchors)?;
        let (sgx, tdx) = (crate::DcapVerifier::sgx(), crate::DcapVerifier::tdx());
        let verifiers: [&dyn Verifier; 4] = [&sim, &sgx, &tdx, &crate::SnpVerifier];
        Ok(self.verify(evidence, &verifiers, expected_report_data, now))
    }

    /// Verifies `evidence` with the matching verifier and judges its claims. Pure: the time and
    /// the expected report data are arguments.
    pub fn verify(
        &self,
        evidence: &Evidence,
        verifiers: &[&dyn Verifier],
        expected_report_data: Option<&ReportData>,
        now: SystemTime,
    ) -> Verification {
        let mut checks = Vec::new();
        let claims = match verifiers.iter().find(|v| v.tee() == evidence.tee) {
            None => Err(format!("no verifier for {} evidence", evidence.tee)),
            Some(v) => v.verify(evidence, now).map_err(|e| e.to_string()),
        };
        let claims = match claims {
            Ok(claims) => {
                checks.push(check(
                    "evidence",
                    true,
                    "signed by a trusted platform",
                    format!("signed by {} platform {}", claims.tee, claims.platform_id),
                ));
                claims
            }
            Err(reason) => {
                let mut failed = check("evidence", false, "signed by a trusted platform", reason);
                if evidence.tee != TeeType::Sim {
                    failed.fix = Some(
                        "if the reason names expired or missing collateral, the node's operator \
                         must refresh it from the platform's caching service (PCCS); otherwise \
                         do not trust this node"
                            .into(),
                    );
                } else {
                    failed.fix = Some(
                        "trust the simulated platform's public key (`sim_anchors` in the policy, \
                         or --sim-anchor); it is in `sim-platform.pub` in the node's data directory"
                            .into(),
                    );
                }
                checks.push(failed);
                return Verification {
                    checks,
                    claims: None,
                };
            }
        };

        let allowed: Vec<&str> = self
            .allowed_tee
            .iter()
            .copied()
            .chain(self.allow_simulated.then_some(TeeType::Sim))
            .map(TeeType::as_str)
            .collect();
        let tee_ok = allowed.contains(&claims.tee.as_str());
        checks.push(check(
            "TEE type",
            tee_ok,
            allowed.join(" | "),
            claims.tee.as_str(),
        ));

        let mut simulated = check(
            "hardware",
            !claims.simulated || self.allow_simulated,
            if self.allow_simulated {
                "hardware TEE, or SIMULATED (allowed by policy)"
            } else {
                "hardware TEE"
            },
            if claims.simulated {
                "SIMULATED: no hardware protection is proven"
            } else {
                "hardware TEE"
            },
        );
        if !simulated.ok {
            simulated.fix = Some(
                "accept simulated evidence only for testing: pass --allow-simulated or set \
                 allow_simulated = true in the policy"
                    .into(),
            );
        }
        checks.push(simulated);

        let mut measurement = check(
            "measurement",
            self.measurements.contains(&claims.measurement),
            if self.measurements.is_empty() {
                "a pinned measurement (none is pinned)".to_owned()
            } else {
                self.measurements
                    .iter()
                    .map(Measurement::to_hex)
                    .collect::<Vec<_>>()
                    .join(" | ")
            },
            claims.measurement.to_hex(),
        );
        if !measurement.ok {
            measurement.fix = Some(format!(
                "if you trust this build, pin it: add \"{}\" to `measurements` in the policy \
                 (or pass --measurement)",
                claims.measurement
            ));
        }
        checks.push(measurement);

        checks.push(check(
            "security version",
            claims.security_version >= self.min_security_version,
            format!(">= {}", self.min_security_version),
            claims.security_version.to_string(),
        ));

        if let Some(status) = &claims.tcb_status {
            let mut tcb = check(
                "TCB status",
                self.accepted_tcb_status.contains(status),
                self.accepted_tcb_status.join(" | "),
                if claims.advisories.is_empty() {
                    status.clone()
                } else {
                    format!("{status} ({})", claims.advisories.join(", "))
                },
            );
            if !tcb.ok {
                tcb.fix = Some(format!(
                    "the platform needs updates from its operator; to accept it as it is, add \
                     \"{status}\" to `accepted_tcb_status` in the policy"
                ));
            }
            checks.push(tcb);
        }

        if let Some(snp) = &claims.snp {
            let mut tcb = check(
                "SNP patch level",
                snp.reported_tcb.meets(&self.snp_min_tcb),
                format!(">= {}", self.snp_min_tcb),
                snp.reported_tcb.to_string(),
            );
            if !tcb.ok {
                tcb.fix = Some(
                    "the platform's firmware is older than the policy accepts: its operator \
                     must update it (or lower `snp_min_tcb` if you accept the risk)"
                        .into(),
                );
            }
            checks.push(tcb);
            checks.push(check(
                "VMPL",
                snp.vmpl <= self.snp_max_vmpl,
                format!("<= {}", self.snp_max_vmpl),
                snp.vmpl.to_string(),
            ));
        }

        if let Some(expected) = expected_report_data {
            checks.push(check(
                "key and nonce",
                expected.0 == claims.report_data,
                hex::encode(expected.0),
                hex::encode(claims.report_data),
            ));
        }
        Verification {
            checks,
            claims: Some(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimAttester, SimPlatform, SimVerifier};
    use crate::{Attester, report_data_for};

    struct Fixture {
        _dir: tempfile::TempDir,
        attester: SimAttester,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let platform = SimPlatform::load_or_create(dir.path()).unwrap();
        Fixture {
            attester: SimAttester::new(platform, Measurement([5; 48]), 2),
            _dir: dir,
        }
    }

    fn failed(v: &Verification) -> Vec<&'static str> {
        v.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn simulated_evidence_passes_only_when_allowed_pinned_and_fresh() {
        let f = fixture();
        let rd = report_data_for(b"server key", b"client nonce");
        let evidence = f.attester.attest(&rd).unwrap();
        let verifier = SimVerifier::new(&[f.attester.anchor_hex()]).unwrap();
        let verifiers: [&dyn Verifier; 1] = [&verifier];
        let now = SystemTime::now();
        let pinned = Policy {
            measurements: vec![Measurement([5; 48])],
            allow_simulated: true,
            ..Policy::default()
        };

        let ok = pinned.verify(&evidence, &verifiers, Some(&rd), now);
        assert!(ok.passed(), "{:#?}", ok.checks);
        assert!(ok.claims.as_ref().unwrap().simulated);

        let strict = Policy {
            allow_simulated: false,
            ..pinned.clone()
        };
        let v = strict.verify(&evidence, &verifiers, Some(&rd), now);
        assert_eq!(failed(&v), ["TEE type", "hardware"]);
        assert!(
            v.checks[2]
                .fix
                .as_ref()
                .unwrap()
                .contains("--allow-simulated")
        );

        let other_build = Policy {
            measurements: vec![Measurement([6; 48])],
            ..pinned.clone()
        };
        assert_eq!(
            failed(&other_build.verify(&evidence, &verifiers, Some(&rd), now)),
            ["measurement"]
        );

        let unpinned = Policy {
            measurements: vec![],
            ..pinned.clone()
        };
        let v = unpinned.verify(&evidence, &verifiers, Some(&rd), now);
        assert_eq!(
            failed(&v),
            ["measurement"],
            "trust on first use is never silent"
        );
        assert!(
            v.checks[3]
                .fix
                .as_ref()
                .unwrap()
                .contains(&Measurement([5; 48]).to_hex())
        );

        let stale = report_data_for(b"server key", b"an older nonce");
        assert_eq!(
            failed(&pinned.verify(&evidence, &verifiers, Some(&stale), now)),
            ["key and nonce"]
        );

        let newer = Policy {
            min_security_version: 3,
            ..pinned.clone()
        };
        assert_eq!(
            failed(&newer.verify(&evidence, &verifiers, Some(&rd), now)),
            ["security version"]
        );

        let mut forged = evidence.clone();
        forged.quote[100] ^= 1;
        let v = pinned.verify(&forged, &verifiers, Some(&rd), now);
        assert_eq!(failed(&v), ["evidence"]);
        assert!(v.claims.is_none());
        assert!(!pinned.verify(&evidence, &[], Some(&rd), now).passed());
    }

    #[test]
    fn policies_read_from_toml_and_refuse_unknown_keys() {
        let text = format!(
            "allowed_tee = [\"tdx\"]\nmeasurements = [\"{}\"]\nmin_security_version = 4\n",
            "ab".repeat(48)
        );
        let policy: Policy = toml::from_str(&text).unwrap();
        assert_eq!(policy.allowed_tee, [TeeType::Tdx]);
        assert!(
            !policy.allow_simulated,
            "simulated evidence is refused by default"
        );
        assert_eq!(policy.min_security_version, 4);
        assert!(toml::from_str::<Policy>("allow_simulatd = true").is_err());
        assert!(toml::from_str::<Policy>("measurements = [\"abc\"]").is_err());
    }

    #[test]
    fn hardware_evidence_is_judged_on_measurement_and_tcb_status() {
        let evidence = |tee, quote: &[u8], collateral: &[u8]| Evidence {
            tee,
            quote: quote.to_vec(),
            collateral: collateral.to_vec(),
        };
        let pinned = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_751_328_000);
        let tdx = evidence(
            TeeType::Tdx,
            include_bytes!("../testdata/dcap/tdx_quote"),
            include_bytes!("../testdata/dcap/tdx_quote_collateral.json"),
        );
        let mut policy = Policy::default();
        let unpinned = policy.verify_with_anchors(&tdx, None, pinned).unwrap();
        assert_eq!(failed(&unpinned), ["measurement"]);
        policy.measurements = vec![unpinned.claims.unwrap().measurement];
        let verdict = policy.verify_with_anchors(&tdx, None, pinned).unwrap();
        assert!(verdict.passed(), "{:?}", verdict.checks);
        assert!(verdict.checks.iter().any(|c| c.name == "TCB status"));

        // The SGX sample's platform needs configuration and software hardening.
        let sgx = evidence(
            TeeType::Sgx,
            include_bytes!("../testdata/dcap/sgx_quote"),
            include_bytes!("../testdata/dcap/sgx_quote_collateral.json"),
        );
        let claims = policy
            .verify_with_anchors(&sgx, None, pinned)
            .unwrap()
            .claims;
        policy.measurements = vec![claims.unwrap().measurement];
        let verdict = policy.verify_with_anchors(&sgx, None, pinned).unwrap();
        assert_eq!(failed(&verdict), ["TCB status"]);
        let fix = verdict.checks.iter().find(|c| !c.ok).unwrap().fix.clone();
        assert!(fix.unwrap().contains("accepted_tcb_status"));
        policy
            .accepted_tcb_status
            .push("ConfigurationAndSWHardeningNeeded".into());
        assert!(
            policy
                .verify_with_anchors(&sgx, None, pinned)
                .unwrap()
                .passed()
        );

        // Expired collateral: the evidence itself fails.
        let later = pinned + std::time::Duration::from_secs(60 * 86_400);
        let expired = policy.verify_with_anchors(&sgx, None, later).unwrap();
        assert_eq!(failed(&expired), ["evidence"]);
    }

    #[test]
    fn snp_evidence_is_judged_on_patch_level_and_vmpl() {
        let snp = Evidence {
            tee: TeeType::SevSnp,
            quote: hex::decode(include_str!("../testdata/snp/report_milan.hex").trim()).unwrap(),
            collateral: include_bytes!("../testdata/snp/vcek_milan.der").to_vec(),
        };
        let pinned = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_751_328_000);
        let mut policy = Policy::default();
        let claims = policy
            .verify_with_anchors(&snp, None, pinned)
            .unwrap()
            .claims;
        let claims = claims.unwrap();
        policy.measurements = vec![claims.measurement];
        let tcb = claims.snp.unwrap().reported_tcb;
        policy.snp_min_tcb = tcb;
        assert!(
            policy
                .verify_with_anchors(&snp, None, pinned)
                .unwrap()
                .passed()
        );
        policy.snp_min_tcb.microcode = tcb.microcode + 1;
        let verdict = policy.verify_with_anchors(&snp, None, pinned).unwrap();
        assert_eq!(failed(&verdict), ["SNP patch level"]);
    }
}
