//! The verifier's budget (decision 0018). The kernel refuses a program whose
//! verification walks more than 1,000,000 instructions, and the walk grows with every
//! path a change adds, far faster than the code. Each program of the balancer's object
//! must stay under three quarters of it, so that the next change fails here, with the
//! figures, and not as an E2BIG at load time with no room left to grow.

use lb_common::maps::PROGRAMS;
use xdpvs::dataplane::bpf;

/// The kernel's limit (`BPF_COMPLEXITY_LIMIT_INSNS`).
const LIMIT: u32 = 1_000_000;
/// What each program may use of it.
const BUDGET: u32 = LIMIT / 4 * 3;

#[test]
fn every_program_leaves_the_verifier_a_quarter_of_its_budget() {
    tests::require_root();
    let ebpf = bpf::load(Default::default()).expect("load BPF object");
    let mut over = Vec::new();
    for &name in PROGRAMS {
        let prog: &aya::programs::Xdp = ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name}"))
            .try_into()
            .expect("XDP");
        let n = prog
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("this kernel reports verified instructions");
        println!(
            "{name}: {n} instructions verified ({:.1}% of the kernel's limit)",
            f64::from(n) * 100.0 / f64::from(LIMIT)
        );
        assert!(n > 0, "{name}: the kernel verified nothing?");
        if n > BUDGET {
            over.push(format!("{name}: {n}"));
        }
    }
    assert!(
        over.is_empty(),
        "over {BUDGET} verified instructions (of the kernel's {LIMIT}): {over:?}; split the work (tail calls, decision 0018) before the kernel refuses it"
    );
}
