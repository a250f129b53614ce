//! Signals for the demo and the benches: SIGINT, SIGTERM and SIGHUP ask the program to
//! stop at its next check instead of ending it on the spot. Ended by the kernel's
//! default action, a program runs none of its drops and leaves its namespaces, bpffs
//! mount, daemon state and trafgen behind; stopped at a check, it returns and its labs
//! clean up as they do at the end of a run.
//!
//! A second signal, a second or more after the first, ends the program at once, as
//! the default action would, after SIGTERM to the daemons it started: namespaces,
//! mounts and pins stay behind, no daemon runs on. Signals closer together count as
//! one: a signal sent to a process group (`timeout`, `kill -- -PGID`, a terminal
//! closing) reaches the program directly and again through `cargo xtask`, which
//! hands on what it is sent.
//!
//! Daemons started while signals are handled get a process group of their own
//! (`daemon::Daemon::start`), so that a terminal's Ctrl-C, which goes to the whole
//! foreground group, reaches the program alone and the program stops its daemons.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

/// Set by [`stop_on_signals`].
static HANDLED: AtomicBool = AtomicBool::new(false);
/// When the first stopping signal arrived (`CLOCK_MONOTONIC`, ns); 0 before.
static FIRST_NS: AtomicI64 = AtomicI64::new(0);
/// How far apart two signals must be for the second to end the program at once.
const APART_NS: i64 = 1_000_000_000;

/// The pids of the running daemons this program started ([`started`]); 0 is free.
static DAEMONS: [AtomicI32; 32] = [const { AtomicI32::new(0) }; 32];

/// The stopping signals.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Returns: `CLOCK_MONOTONIC` in ns, never 0.
fn now_ns() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec * 1_000_000_000 + t.tv_nsec).max(1)
}

extern "C" fn on_signal(sig: libc::c_int) {
    let now = now_ns();
    let first = match FIRST_NS.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => return,
        Err(first) => first,
    };
    if now - first < APART_NS {
        return;
    }
    // The second: the daemons go, then what the default action would have done.
    // SAFETY: kill, signal and raise are async-signal-safe; the signal stays blocked
    // until this handler returns, then ends the process.
    unsafe {
        for d in &DAEMONS {
            let pid = d.load(Ordering::SeqCst);
            if pid > 0 {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Makes the stopping signals set [`stopping`] (see the module doc). Call it first
/// in `main`.
pub fn stop_on_signals() {
    HANDLED.store(true, Ordering::SeqCst);
    for sig in SIGNALS {
        // SAFETY: installs a handler that makes only async-signal-safe calls. A handler
        // (unlike SIG_IGN) is reset to the default by exec, so children are unaffected.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Returns: whether this program handles the stopping signals ([`stop_on_signals`]).
pub fn handled() -> bool {
    HANDLED.load(Ordering::SeqCst)
}

/// Returns: whether a signal asked this program to stop.
pub fn stopping() -> bool {
    FIRST_NS.load(Ordering::SeqCst) != 0
}

/// Ends the program with the shell's code for an interrupted one (130) if a signal
/// asked it to stop; call it once everything has been dropped.
pub fn exit_if_stopped() {
    if stopping() {
        eprintln!("stopped by a signal; cleaned up");
        std::process::exit(130);
    }
}

/// Records daemon `pid` as running, for a second signal to stop. Returns: its slot,
/// for [`ended`]; `None` when every slot is taken (that daemon is then not stopped).
pub fn started(pid: i32) -> Option<usize> {
    DAEMONS.iter().position(|d| {
        d.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

/// Forgets the daemon in `slot` ([`started`]): it has been reaped.
pub fn ended(slot: usize) {
    DAEMONS[slot].store(0, Ordering::SeqCst);
}
