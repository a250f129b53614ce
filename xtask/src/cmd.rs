//! Running commands from xtask: every command is echoed before it runs, so a failing
//! `cargo xtask test` shows what to run by hand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Returns: the workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cmd` in the workspace root, echoing it first.
///
/// Returns: an error when it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// What a captured command did.
pub struct Captured {
    /// Whether it exited successfully.
    pub ok: bool,
    /// Its standard output, then its standard error.
    pub text: String,
}

/// Runs `cmd` in the workspace root, echoing it first but keeping its output, for a
/// caller that has to read the output to tell one failure from another.
///
/// Returns: its exit status and output, or an error when it cannot start.
pub fn capture(cmd: &mut Command) -> Result<Captured> {
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .current_dir(root())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Captured {
        ok: out.status.success(),
        text,
    })
}

/// Runs `cmd args` quietly, for probing what is installed.
///
/// Returns: its trimmed standard output when it ran and succeeded.
pub fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Returns: whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Returns: whether xtask runs as root (namespaces, XDP and apt-get need it).
pub fn is_root() -> bool {
    output("id", &["-u"]).as_deref() == Some("0")
}
