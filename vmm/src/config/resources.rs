//! `[resources]` and its flags: where the vmm process is placed in the cgroup hierarchy
//! and how much CPU it asks for. Memory is static (the guest's RAM); its limit follows
//! from `memory_mib` (see `crate::resources`).

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Largest CPU request or limit, in cores: cpu.weight tops out at 10000 (100 per core).
pub const MAX_CPU_CORES: f64 = 100.0;
/// Smallest CPU request or limit: 0.01 core is a weight of 1 and a quota of 1 ms / 100 ms.
pub const MIN_CPU_CORES: f64 = 0.01;

/// `[resources]` in the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    /// The cgroup to run in, relative to the root of the hierarchy (created if missing).
    pub cgroup: Option<PathBuf>,
    /// Requested cores: the CPU share under contention (fractions allowed).
    pub cpu: Option<f64>,
    /// Hard cap in cores (none by default: the sandbox may burst when the host is idle).
    pub cpu_limit: Option<f64>,
}

/// `--cgroup`, `--cpu-request`, `--cpu-limit`: each overrides the file's value.
#[derive(Debug, Default, Clone)]
pub struct ResourceFlags {
    pub cgroup: Option<PathBuf>,
    pub cpu: Option<f64>,
    pub cpu_limit: Option<f64>,
}

/// A validated placement. CPU in thousandths of a core (exact, comparable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Relative, without `..`: always below the hierarchy's root.
    pub cgroup: PathBuf,
    /// Requested cores × 1000 (default 1000: one core).
    pub cpu_millicores: u32,
    pub cpu_limit_millicores: Option<u32>,
    /// The guest's RAM, which the memory limit is built on.
    pub memory_mib: u64,
}

/// Merges the file's section with the flags. No cgroup means no placement; asking for
/// CPU without one is an error rather than a silent no-op.
pub fn build(
    file: Option<ResourcesSection>,
    flags: ResourceFlags,
    memory_mib: u64,
) -> Result<Option<ResourceSpec>, ConfigError> {
    let file = file.unwrap_or_default();
    let cgroup = flags.cgroup.or(file.cgroup);
    let cpu = flags.cpu.or(file.cpu);
    let cpu_limit = flags.cpu_limit.or(file.cpu_limit);
    let Some(cgroup) = cgroup else {
        if cpu.is_some() || cpu_limit.is_some() {
            return Err(ConfigError::Resources(
                "cpu and cpu_limit need a cgroup to apply them in (--cgroup PATH or `cgroup =`)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let cgroup = check_cgroup_path(&cgroup)?;
    let cpu_millicores = millicores("cpu", cpu.unwrap_or(1.0))?;
    let cpu_limit_millicores = cpu_limit
        .map(|limit| millicores("cpu_limit", limit))
        .transpose()?;
    Ok(Some(ResourceSpec {
        cgroup,
        cpu_millicores,
        cpu_limit_millicores,
        memory_mib,
    }))
}

fn millicores(key: &str, cores: f64) -> Result<u32, ConfigError> {
    if cores.is_finite() && (MIN_CPU_CORES..=MAX_CPU_CORES).contains(&cores) {
        // In range, so the product fits: at most 100 000.
        Ok((cores * 1000.0).round() as u32)
    } else {
        Err(ConfigError::Resources(format!(
            "{key} = {cores}: must be between {MIN_CPU_CORES} and {MAX_CPU_CORES} cores"
        )))
    }
}

/// `a/b` or `/a/b` (both below the root); never `..`, never the root itself.
fn check_cgroup_path(path: &Path) -> Result<PathBuf, ConfigError> {
    let mut relative = PathBuf::new();
    for part in path.components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => relative.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ConfigError::Resources(format!(
                    "cgroup {}: `..` is not allowed (the path is below the hierarchy's root)",
                    path.display()
                )))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(ConfigError::Resources(format!(
            "cgroup {}: must name a cgroup below the hierarchy's root",
            path.display()
        )));
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(cgroup: Option<&str>, cpu: Option<f64>, limit: Option<f64>) -> ResourceFlags {
        ResourceFlags {
            cgroup: cgroup.map(PathBuf::from),
            cpu,
            cpu_limit: limit,
        }
    }

    #[test]
    fn no_cgroup_is_no_placement() {
        assert_eq!(build(None, flags(None, None, None), 1024).unwrap(), None);
    }

    #[test]
    fn cpu_without_a_cgroup_is_refused() {
        let e = build(None, flags(None, Some(2.0), None), 1024).unwrap_err();
        assert!(e.to_string().contains("need a cgroup"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_cpu_defaults_to_one_core() {
        let file = ResourcesSection {
            cgroup: Some("from/file".into()),
            cpu: Some(3.0),
            cpu_limit: Some(4.0),
        };
        let spec = build(Some(file.clone()), flags(Some("/sb/1"), None, None), 512)
            .unwrap()
            .unwrap();
        assert_eq!(spec.cgroup, PathBuf::from("sb/1"));
        assert_eq!(
            (
                spec.cpu_millicores,
                spec.cpu_limit_millicores,
                spec.memory_mib
            ),
            (3000, Some(4000), 512)
        );
        let spec = build(None, flags(Some("x"), Some(0.25), None), 512)
            .unwrap()
            .unwrap();
        assert_eq!(
            (spec.cpu_millicores, spec.cpu_limit_millicores),
            (250, None)
        );
        let spec = build(None, flags(Some("x"), None, None), 512)
            .unwrap()
            .unwrap();
        assert_eq!(spec.cpu_millicores, 1000);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (cpu, limit, key) in [
            (Some(0.0), None, "cpu = 0"),
            (Some(f64::NAN), None, "cpu = NaN"),
            (Some(101.0), None, "cpu = 101"),
            (None, Some(-1.0), "cpu_limit = -1"),
        ] {
            let e = build(None, flags(Some("x"), cpu, limit), 1024).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        for path in ["../escape", "a/../../b", "/", "."] {
            let e = build(None, flags(Some(path), None, None), 1024).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("resources: cgroup {path}")),
                "{e}"
            );
        }
    }
}
