//! Which TEE interfaces this machine offers, read from the files the kernel and Gramine
//! expose. Reported by `cella doctor`; the simulated TEE is used when none is usable.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TeeType;

/// One interface looked for, and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub tee: TeeType,
    pub interface: String,
    pub found: bool,
    pub detail: String,
}

/// Looks for TEE interfaces under `root` (`/` on a real machine; a test directory in tests).
pub fn probe(root: &Path) -> Vec<Probe> {
    let at = |p: &str| -> PathBuf { root.join(p.trim_start_matches('/')) };
    let cpuinfo = std::fs::read_to_string(at("/proc/cpuinfo")).unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let tsm = at("/sys/kernel/config/tsm/report");
    let tsm_present = tsm.is_dir();
    let confidential_vm = |flag: &str, tee: TeeType| {
        let guest = flags.contains(&flag);
        Probe {
            tee,
            interface: "configfs-tsm (/sys/kernel/config/tsm/report)".into(),
            found: guest && tsm_present,
            detail: match (guest, tsm_present) {
                (true, true) => format!("{tee} guest with configfs-tsm reports"),
                (true, false) => format!(
                    "{tee} guest, but /sys/kernel/config/tsm/report is missing: mount configfs \
                     and use a kernel with TSM reports (6.7 or later)"
                ),
                (false, _) => format!("not a {tee} guest (no `{flag}` CPU flag)"),
            },
        }
    };
    let gramine = at("/dev/attestation/quote");
    vec![
        confidential_vm("tdx_guest", TeeType::Tdx),
        confidential_vm("sev_snp", TeeType::SevSnp),
        Probe {
            tee: TeeType::Sgx,
            interface: "Gramine (/dev/attestation)".into(),
            found: gramine.exists(),
            detail: if gramine.exists() {
                "running inside a Gramine SGX enclave".into()
            } else {
                "not inside a Gramine SGX enclave (/dev/attestation/quote is missing)".into()
            },
        },
    ]
}

/// The hardware TEE to use, if any was found.
pub fn hardware(probes: &[Probe]) -> Option<TeeType> {
    probes.iter().find(|p| p.found).map(|p| p.tee)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nothing_on_a_plain_machine_and_tdx_where_its_files_are() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/cpuinfo"), "flags\t: fpu sse2\n").unwrap();
        let probes = probe(root.path());
        assert_eq!(hardware(&probes), None);
        assert!(probes.iter().all(|p| !p.found && !p.detail.is_empty()));

        std::fs::write(root.path().join("proc/cpuinfo"), "flags\t: fpu tdx_guest\n").unwrap();
        let probes = probe(root.path());
        assert_eq!(hardware(&probes), None, "the flag alone is not enough");
        assert!(probes[0].detail.contains("configfs"));
        std::fs::create_dir_all(root.path().join("sys/kernel/config/tsm/report")).unwrap();
        assert_eq!(hardware(&probe(root.path())), Some(TeeType::Tdx));
    }
}
