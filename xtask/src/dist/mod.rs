//! `cargo xtask dist`: the Debian package `target/dist/xdpvs_<version>_amd64.deb`, built
//! with dpkg-deb from a staging tree (no cargo-deb: the tree is a dozen files whose
//! places and modes are spelt out here, and dpkg-deb is on every Debian machine), then
//! checked by lintian. See docs/operator-guide.md for where the package puts things.

mod files;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{capture, root, run};

/// Upstream version: the workspace's (xtask shares it).
const UPSTREAM: &str = env!("CARGO_PKG_VERSION");
/// Debian revision: the package is made by this project, not by a distribution.
const REVISION: &str = "1";
/// The package's maintainer field.
pub const MAINTAINER: &str = "xdpvs maintainers <maintainers@xdpvs.invalid>";

/// Returns: the package's version, upstream and Debian revision.
pub fn version() -> String {
    format!("{UPSTREAM}-{REVISION}")
}

/// Returns: where `cargo xtask dist` leaves the package.
pub fn deb_path() -> PathBuf {
    root().join(format!("target/dist/xdpvs_{}_amd64.deb", version()))
}

/// Builds the release binaries, stages the package's tree, builds the .deb and runs
/// lintian on it (when installed) failing on any error it reports.
///
/// Returns: the .deb's path.
pub fn dist() -> Result<PathBuf> {
    crate::build()?;
    let release = root().join("target/release");
    let stage = root().join(format!("target/dist/xdpvs_{}_amd64", version()));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;
    files::stage(&stage, &release)?;
    files::control(&stage)?;
    normalise_modes(&stage, &stage)?;
    let deb = deb_path();
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&stage)
        .arg(&deb)
        // File times from the last commit: the same tree gives the same package.
        .env("SOURCE_DATE_EPOCH", files::commit_time("%ct")?))?;
    lintian(&deb)?;
    eprintln!("xtask: {}", deb.display());
    Ok(deb)
}

/// Directories 0755, files 0644 except programs and maintainer scripts (0755), whatever
/// the umask: lintian wants exactly these.
///
/// Returns: the first file under `dir` (in the tree `stage`) whose mode could not be set.
fn normalise_modes(stage: &Path, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let executable = path.starts_with(stage.join("usr/sbin"))
            || files::SCRIPTS
                .iter()
                .any(|s| path == stage.join("DEBIAN").join(s));
        let mode = if path.is_dir() || executable {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        if path.is_dir() {
            normalise_modes(stage, &path)?;
        }
    }
    Ok(())
}

/// Runs lintian on `deb` when it is installed (`cargo xtask setup` installs it).
///
/// Returns: an error when lintian reports an error (E:), or cannot run.
fn lintian(deb: &Path) -> Result<()> {
    if !crate::cmd::have("lintian") {
        eprintln!(
            "xtask: lintian is not installed (cargo xtask setup): the package is not checked"
        );
        return Ok(());
    }
    let out = capture(
        Command::new("lintian")
            .args(["--info", "--display-info"])
            .arg(deb),
    )?;
    eprint!("{}", out.text);
    let errors: Vec<&str> = out.text.lines().filter(|l| l.starts_with("E:")).collect();
    if !errors.is_empty() {
        bail!(
            "lintian reports {} errors on {}",
            errors.len(),
            deb.display()
        );
    }
    Ok(())
}
