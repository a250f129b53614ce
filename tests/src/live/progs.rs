//! The live bench's view of BPF programs: the kernel's per-program statistics
//! (`run_time_ns`, `run_cnt`), which program an interface runs, and the benchmark
//! object's programs (the bounce on XDP, the counting sink on tc ingress) attached
//! inside a namespace.

use std::os::fd::OwnedFd;

use aya::{
    programs::{
        loaded_programs,
        tc::{qdisc_add_clsact, NlOptions, TcAttachOptions, TcAttachType},
        LinkOrder, SchedClassifier, Xdp, XdpMode,
    },
    sys::{enable_stats, Stats},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use lb_common::bench::{BOUNCE_DST, BOUNCE_SRC, PROG_BOUNCE, PROG_SINK};
use serde_json::Value;

use crate::netns::Netns;

/// The kernel's run-time statistics of every BPF program, on while this lives
/// (`BPF_ENABLE_STATS`): unlike the `kernel.bpf_stats_enabled` sysctl, they go off
/// by themselves when the bench exits, however it exits.
pub struct StatsOn(#[expect(dead_code, reason = "held for its drop")] OwnedFd);

/// Returns: statistics switched on until the value is dropped. Panics if the kernel
/// refuses.
pub fn stats_on() -> StatsOn {
    StatsOn(enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (run time)"))
}

/// A program's cumulative statistics: nanoseconds spent in it and runs (one per frame
/// for XDP), counted since it was loaded while statistics were on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Runs {
    pub ns: u64,
    pub cnt: u64,
}

impl std::ops::Sub for Runs {
    type Output = Runs;
    fn sub(self, earlier: Runs) -> Runs {
        Runs {
            ns: self.ns - earlier.ns,
            cnt: self.cnt - earlier.cnt,
        }
    }
}

/// Returns: the statistics of the loaded program `id`. Panics if it is not loaded.
pub fn runs(id: u32) -> Runs {
    loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| Runs {
            ns: p.run_time().as_nanos() as u64,
            cnt: p.run_count(),
        })
        .unwrap_or_else(|| panic!("BPF program {id} is not loaded"))
}

/// Returns: the id of the XDP program attached to `dev` in `ns` (`ip -j link`), or
/// `None` when it has none.
pub fn attached_id(ns: &Netns, dev: &str) -> Option<u32> {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link: JSON");
    v[0]["xdp"]["prog"]["id"].as_u64().map(|id| id as u32)
}

/// A program of the benchmark object attached to an interface; detached when dropped.
pub struct Attached {
    _ebpf: Ebpf,
    /// The kernel's id of the program (for [`runs`]).
    pub id: u32,
}

/// Loads the benchmark object inside `ns` and attaches its counting sink to `dev`'s tc
/// ingress: by TCX from kernel 6.6, as aya does; before it, by netlink, under a
/// `clsact` qdisc added here (the lab's interfaces have none).
pub fn sink(ns: &Netns, dev: &str) -> Attached {
    let dev = dev.to_string();
    ns.run(move || {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let how = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            qdisc_add_clsact(&dev)
                .unwrap_or_else(|e| panic!("adding a clsact qdisc to {dev}: {e}"));
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let mut ebpf = load_bench([0; 6], [0; 6]);
        let p: &mut SchedClassifier = ebpf
            .program_mut(PROG_SINK)
            .unwrap_or_else(|| panic!("{PROG_SINK} missing from the benchmark object"))
            .try_into()
            .expect("a tc classifier");
        p.load()
            .unwrap_or_else(|e| panic!("loading {PROG_SINK}: {e}"));
        p.attach_with_options(&dev, TcAttachType::Ingress, how)
            .unwrap_or_else(|e| panic!("attaching {PROG_SINK} to {dev}'s tc ingress: {e}"));
        let id = p.info().expect("program info").id();
        Attached { _ebpf: ebpf, id }
    })
}

/// Loads the benchmark object inside `ns` with the bounce sending every frame from
/// `src` to `dst`, and attaches the bounce to `dev`.
pub fn bounce(ns: &Netns, dev: &str, src: [u8; 6], dst: [u8; 6]) -> Attached {
    let dev = dev.to_string();
    ns.run(move || {
        let mut ebpf = load_bench(src, dst);
        let p: &mut Xdp = ebpf
            .program_mut(PROG_BOUNCE)
            .unwrap_or_else(|| panic!("{PROG_BOUNCE} missing from the benchmark object"))
            .try_into()
            .expect("an XDP program");
        p.load()
            .unwrap_or_else(|e| panic!("loading {PROG_BOUNCE}: {e}"));
        p.attach(&dev, XdpMode::Default)
            .unwrap_or_else(|e| panic!("attaching {PROG_BOUNCE} to {dev}: {e}"));
        let id = p.info().expect("program info").id();
        Attached { _ebpf: ebpf, id }
    })
}

/// Returns: the benchmark object, loaded with the bounce's MACs set to `src` and `dst`.
fn load_bench(src: [u8; 6], dst: [u8; 6]) -> Ebpf {
    EbpfLoader::new()
        .override_global(BOUNCE_DST, &dst, true)
        .override_global(BOUNCE_SRC, &src, true)
        .load(xdpvs::BPF_BENCH_OBJECT)
        .expect("load the benchmark object")
}
