//! The module trees to check: every library and binary target of every workspace
//! member, as `cargo metadata` lists them. Each target root is a crate of its own (a bin
//! reaches its package's library by name, as another crate would), so each is its own
//! tree. Tests, benches, examples and build scripts are left out: test code may import
//! what it likes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// One crate target to check.
#[derive(Debug)]
pub struct Target {
    pub package: String,
    /// `lib` or `bin <name>`.
    pub what: String,
    /// The root file, relative to the workspace root.
    pub root: PathBuf,
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
struct RawTarget {
    name: String,
    kind: Vec<String>,
    src_path: PathBuf,
}

/// Asks cargo for the targets of the workspace at `workspace`.
///
/// Returns: the library and binary targets, by package then libraries first, or an error
/// when cargo fails or says something unexpected.
pub fn list(workspace: &Path) -> Result<Vec<Target>> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--manifest-path",
    ])
    .arg(workspace.join("Cargo.toml"));
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout, workspace).context("reading the output of cargo metadata")
}

/// Picks the targets out of `cargo metadata` output for the workspace at `workspace`.
fn parse(json: &[u8], workspace: &Path) -> Result<Vec<Target>> {
    let metadata: Metadata = serde_json::from_slice(json)?;
    let mut targets = Vec::new();
    for package in metadata.packages {
        for t in package.targets {
            let is = |k: &str| t.kind.iter().any(|kind| kind == k);
            let what = if is("bin") {
                format!("bin {}", t.name)
            } else if ["test", "bench", "example", "custom-build"]
                .iter()
                .any(|k| is(k))
            {
                continue;
            } else {
                "lib".to_string() // lib, rlib, cdylib, proc-macro, ...
            };
            let root = t.src_path.strip_prefix(workspace).unwrap_or(&t.src_path);
            targets.push(Target {
                package: package.name.clone(),
                what,
                root: root.to_path_buf(),
            });
        }
    }
    // "bin ..." sorts before "lib"; a library reads better first.
    targets.sort_by_key(|t| (t.package.clone(), t.what != "lib", t.what.clone()));
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libs_and_bins_only_relative_to_the_workspace() {
        let json = br#"{"packages": [
            {"name": "lb-ebpf", "targets": [
                {"name": "xdpvs", "kind": ["bin"], "src_path": "/w/lb-ebpf/src/balancer/main.rs"},
                {"name": "lb_ebpf", "kind": ["lib"], "src_path": "/w/lb-ebpf/src/lib.rs"},
                {"name": "build-script-build", "kind": ["custom-build"], "src_path": "/w/lb-ebpf/build.rs"}
            ]},
            {"name": "tests", "targets": [
                {"name": "root", "kind": ["test"], "src_path": "/w/tests/tests/root/main.rs"},
                {"name": "m", "kind": ["proc-macro"], "src_path": "/w/tests/src/lib.rs"},
                {"name": "b", "kind": ["bench"], "src_path": "/w/tests/benches/b.rs"},
                {"name": "e", "kind": ["example"], "src_path": "/w/tests/examples/e.rs"}
            ]}
        ], "workspace_root": "/w"}"#;
        let got: Vec<_> = parse(json, Path::new("/w"))
            .unwrap()
            .into_iter()
            .map(|t| format!("{} {} {}", t.package, t.what, t.root.display()))
            .collect();
        assert_eq!(
            got,
            [
                "lb-ebpf lib lb-ebpf/src/lib.rs",
                "lb-ebpf bin xdpvs lb-ebpf/src/balancer/main.rs",
                "tests lib tests/src/lib.rs",
            ]
        );
    }
}
