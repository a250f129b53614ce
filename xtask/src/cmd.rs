//! Running commands from xtask: every command is echoed before it runs, so a failing
//! `cargo xtask test` shows what to run by hand.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{bail, Context as _, Result};

/// Returns: the workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The pid of the command [`run`] waits for; 0 when none.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Hands a signal that would end xtask on to the command it waits for, which ends in its
/// own way (the demo and benches clean their namespaces up first) and whose failure
/// then ends xtask. With no command running, the signal's default action ends xtask.
extern "C" fn hand_on(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    // SAFETY: kill, signal and raise are async-signal-safe.
    unsafe {
        if pid > 0 {
            libc::kill(pid, sig);
        } else {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Runs `cmd` in the workspace root, echoing it first. SIGINT, SIGTERM and SIGHUP sent
/// to xtask meanwhile go to `cmd`, and xtask waits for it to end (a terminal's Ctrl-C
/// reaches both; `cmd` then gets it twice).
///
/// Returns: an error when it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that makes only async-signal-safe calls.
        unsafe { libc::signal(sig, hand_on as *const () as libc::sighandler_t) };
    }
    let mut child = cmd
        .current_dir(root())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    let status = status.with_context(|| format!("waiting for {cmd:?}"))?;
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
