//! Running commands from xtask: every command is echoed before it runs, so a failing
//! `cargo xtask test` shows what to run by hand.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
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
/// Set when a stopping signal reached xtask while a command ran.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The signals that would end xtask, handled while [`run`] waits for a command.
const STOPPING: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A stopping signal while a command runs: sent by a process (`kill`, a CI's
/// timeout), it is handed on to the command, which ends in its own way (the demo and
/// the benches remove their namespaces first; one that also got it from a signal to
/// its group takes the two as one, `tests::signals`); sent by the terminal (Ctrl-C:
/// the kernel sends it to the whole foreground group, the command included), it is
/// not sent twice. Either way xtask then waits for the command and exits 130. With no
/// command running, the signal's default action ends xtask.
extern "C" fn hand_on(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let pid = CHILD.load(Ordering::SeqCst);
    // SAFETY: errno is this thread's; signal, raise and kill are async-signal-safe;
    // the kernel hands a SA_SIGINFO handler a valid `info`.
    unsafe {
        if pid <= 0 {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
            return;
        }
        SIGNALLED.store(true, Ordering::SeqCst);
        if (*info).si_code != libc::SI_KERNEL {
            let errno = *libc::__errno_location();
            libc::kill(pid, sig);
            *libc::__errno_location() = errno;
        }
    }
}

/// Runs `f` on `cmd` with the stopping signals blocked, so that none arrives between a
/// command's start and the record of its pid. The command itself starts with xtask's
/// mask as it was: the mask is inherited through fork and exec, and std does not reset
/// it (since Rust 1.66).
/// Returns: what `f` returns.
fn with_stopping_blocked<T>(cmd: &mut Command, f: impl FnOnce(&mut Command) -> T) -> T {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before use; the
    // mask is this thread's and restored below; the child's closure calls only
    // pthread_sigmask, which is async-signal-safe, as a `pre_exec` closure must be.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOPPING {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        cmd.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            Ok(())
        });
        let out = f(cmd);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}

/// Runs `cmd` in the workspace root, echoing it first. A signal that would end xtask
/// meanwhile reaches `cmd` (see [`hand_on`]); once `cmd` has ended, xtask exits 130.
///
/// Returns: an error when it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    for sig in STOPPING {
        // SAFETY: reads the signal's disposition, then installs a handler that makes
        // only async-signal-safe calls; both sigactions are zeroed before use.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            if old.sa_sigaction == libc::SIG_IGN {
                // Ignored by whoever started xtask (`nohup`): left so.
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = hand_on as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut child = with_stopping_blocked(cmd, |cmd| {
        let child = cmd.current_dir(root()).spawn();
        if let Ok(c) = &child {
            CHILD.store(c.id() as i32, Ordering::SeqCst);
        }
        child
    })
    .with_context(|| format!("running {cmd:?}"))?;
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    let status = status.with_context(|| format!("waiting for {cmd:?}"))?;
    if SIGNALLED.load(Ordering::SeqCst) {
        eprintln!("xtask: stopped by a signal ({cmd:?}: {status})");
        std::process::exit(130);
    }
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
