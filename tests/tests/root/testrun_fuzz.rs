//! A million mutated packets through the balancer (BPF_PROG_TEST_RUN), each held
//! against the oracle of `tests::fuzz`: nothing but valid packets of a virtual server
//! or flow is forwarded, forwarded packets are what their method makes of them
//! (checksums included), passed packets are untouched, every packet's verdict is
//! counted, and the connection table names only configured reals afterwards.

use tests::fuzz::Fuzzer;

/// Packets per run: every truncation point of every template, then mutations.
const PACKETS: u64 = 1_000_000;

#[test]
fn a_million_mutated_packets_break_no_invariant() {
    let mut fuzzer = Fuzzer::new();
    let start = std::time::Instant::now();
    let report = fuzzer.run(PACKETS, 0x5eed_1234);
    println!(
        "{} packets in {:.1} s; actions {:?}; forwarded {:?}; {} connection table entries",
        report.runs,
        start.elapsed().as_secs_f64(),
        report.actions,
        report.forwarded,
        report.flow_entries
    );
    assert_eq!(report.runs, PACKETS);
    assert!(
        report.problems.is_empty(),
        "{} problems, the first:\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
    // The templates are valid packets: a run that forwards nothing tests nothing.
    for kind in ["Dr", "Nat", "Tunnel", "NatIcmp"] {
        assert!(
            report.forwarded.get(kind).copied().unwrap_or(0) > 1000,
            "too few packets forwarded as {kind}: {:?}",
            report.forwarded
        );
    }
}
