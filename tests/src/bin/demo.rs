//! `cargo xtask demo`: a client, xdpvs and three real servers in network namespaces;
//! 300 HTTP requests to the VIP with equal weights, then with weights 1:1:2; who
//! answered is printed. Everything is removed at the end, on failure, and on Ctrl-C,
//! SIGTERM or SIGHUP (after the round under way).

use std::collections::BTreeMap;

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab, Spec},
};

fn round(lab: &Lab, weights: &[u32]) {
    let cfg = lab.write_spec(&Spec {
        reals: Some(weights.iter().copied().enumerate().collect()),
        ..Spec::default()
    });
    println!(
        "\n== weights {weights:?}: starting `xdpvs run --config {}` in namespace {}",
        cfg.display(),
        lab.lb.name
    );
    let mut d = Daemon::start(&lab.lb, &cfg);
    let all: Vec<usize> = (0..weights.len()).collect();
    lab.wait_serving(&all, &d);
    println!("health probes: every real is up");
    let n = 300;
    let results = lab.requests(n);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for r in &results {
        match r {
            Ok(name) => *by.entry(name.clone()).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "{n} requests to http://{}/ : {} answered, {failed} failed",
        lab.vip,
        n - failed
    );
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("real{}", i + 1);
        let got = by.get(&name).copied().unwrap_or(0);
        println!(
            "  {name} ({:<12}) weight {w}: {got:>4} requests ({:>5.1}%, expected {:>5.1}%)",
            lab.real_addrs[i].to_string(),
            100.0 * got as f64 / n as f64,
            100.0 * f64::from(*w) / f64::from(total)
        );
    }
    d.stop();
}

fn main() {
    tests::require_root();
    tests::signals::stop_on_signals();
    println!("building topology: client, xdpvs, 3 real servers on one L2 segment (direct routing)");
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    for weights in [[1, 1, 1], [1, 1, 2]] {
        if tests::signals::stopping() {
            println!("interrupted");
            break;
        }
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            round(&lab, &weights);
        }));
        if let Err(panic) = done {
            // The daemon is in the demo's process group: a Ctrl-C reaches it too, and
            // one that lands while it starts, before its handler is in place, ends it
            // there. The round failed because it was stopped: an interruption.
            if !tests::signals::stopping() {
                std::panic::resume_unwind(panic);
            }
            println!("interrupted");
            break;
        }
    }
    drop(lab);
    println!("\ncleaned up: namespaces, veths and XDP programs removed");
    tests::signals::exit_if_stopped();
}
