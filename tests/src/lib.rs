//! Helpers for xdpvs's root-run tests and demo: network namespaces and veths that clean
//! up after themselves, threads that act inside a namespace, a tiny HTTP server and
//! client, the daemon as a child process, a bpffs for its pins, and packet building for
//! BPF test runs.

pub mod cpus;
pub mod daemon;
pub mod ecmp;
pub mod fixture;
pub mod fuzz;
pub mod ha;
pub mod http;
pub mod lab;
pub mod live;
pub mod load;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod scale;

use std::sync::atomic::{AtomicBool, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP ask this program to stop instead of ending it on the
/// spot: a demo or bench ended by the kernel's default action never runs its drops, and
/// leaves its namespaces, bpffs mount, daemon state and trafgen behind. With this, the
/// program sees [`stopping`] at its next check, returns, and its labs clean up as they
/// do at the end of a run. SIGKILL still leaves everything behind.
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Returns: whether a signal asked this program to stop (see [`stop_on_signals`]).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Ends the program with the shell's code for an interrupted one (130) if a signal asked
/// it to stop; call it once everything has been dropped.
pub fn exit_if_stopped() {
    if stopping() {
        eprintln!("stopped by a signal; cleaned up");
        std::process::exit(130);
    }
}

/// Panics unless running as root: a root-only test must fail loudly, never pass quietly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "these tests need root (network namespaces, XDP); run `cargo xtask test` as root"
    );
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
/// Returns: whether it held.
pub fn wait_for(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
