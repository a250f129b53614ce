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
pub mod leftovers;
pub mod live;
pub mod load;
pub mod netns;
pub mod pace;
pub mod paced;
pub mod packet;
pub mod pins;
pub mod scale;
pub mod signals;
pub mod trafgen;

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
