//! `cargo xtask demo`: a client, xdpvs and three real servers in network namespaces;
//! 300 HTTP requests to the VIP with equal weights, then with weights 1:1:2; who
//! answered is printed. Everything is removed at the end, on failure and on Ctrl-C.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
};

use tests::{
    daemon::Daemon,
    topo::{real_addr, DrTopology, VIP},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn round(topo: &DrTopology, weights: &[u32]) {
    let cfg = topo.write_config(weights);
    println!(
        "\n== weights {weights:?}: starting `xdpvs run --config {}` in namespace {}",
        cfg.display(),
        topo.lb.name
    );
    let mut d = Daemon::start(&topo.lb, &cfg);
    let n = 300;
    let results = topo.requests(n);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for r in &results {
        match r {
            Ok(name) => *by.entry(name.clone()).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "{n} requests to http://{VIP}/ : {} answered, {failed} failed",
        n - failed
    );
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("real{}", i + 1);
        let got = by.get(&name).copied().unwrap_or(0);
        println!(
            "  {name} ({:<12}) weight {w}: {got:>4} requests ({:>5.1}%, expected {:>5.1}%)",
            real_addr(i),
            100.0 * got as f64 / n as f64,
            100.0 * f64::from(*w) / f64::from(total)
        );
    }
    d.stop();
}

fn main() {
    tests::require_root();
    // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    println!("building topology: client, xdpvs, 3 real servers on one L2 segment (direct routing)");
    let topo = DrTopology::new(3);
    for weights in [[1, 1, 1], [1, 1, 2]] {
        if INTERRUPTED.load(Ordering::SeqCst) {
            println!("interrupted");
            break;
        }
        round(&topo, &weights);
    }
    drop(topo);
    println!("\ncleaned up: namespaces, veths and XDP programs removed");
}
