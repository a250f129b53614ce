//! Signals for the demo and the benches: SIGINT, SIGTERM and SIGHUP ask the program to
//! stop at its next check instead of ending it on the spot. Ended by the kernel's
//! default action, a program runs none of its drops and leaves its namespaces, bpffs
//! mount, daemon state and trafgen behind; stopped at a check, it returns and its labs
//! clean up as they do at the end of a run. A second signal ends it at once, as the
//! default action would. SIGKILL leaves everything behind.
//!
//! Daemons started while signals are handled get a process group of their own
//! (`daemon::Daemon::start`), so that a terminal's Ctrl-C, which goes to the whole
//! foreground group, reaches the program alone and the program stops its daemons.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first stopping signal.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Set by [`stop_on_signals`].
static HANDLED: AtomicBool = AtomicBool::new(false);

/// The stopping signals.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    if STOPPING.swap(true, Ordering::SeqCst) {
        // The second: what the default action would have done at the first.
        // SAFETY: signal and raise are async-signal-safe; the signal stays blocked
        // until this handler returns, then ends the process.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
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
    STOPPING.load(Ordering::SeqCst)
}

/// Ends the program with the shell's code for an interrupted one (130) if a signal
/// asked it to stop; call it once everything has been dropped.
pub fn exit_if_stopped() {
    if stopping() {
        eprintln!("stopped by a signal; cleaned up");
        std::process::exit(130);
    }
}
