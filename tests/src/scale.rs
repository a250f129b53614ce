//! The control plane at scale (issue 15), for `cargo xtask bench` (all of it) and
//! `cargo xtask bench --scale` (this part only). Prints JSON lines; asserts nothing
//! about speed.
//!
//! - `scale_maglev`: one Maglev table of 65,537 slots for 100 reals (`maglev::build`);
//! - `scale_cold_apply`: 1,000 virtual servers of 100 reals each (default table size,
//!   unprobed reals, so every table is full at once) applied by the daemon's
//!   reconciler into a loaded balancer object, as a first start does; then every
//!   real's next hop (`scale_next_hops`); and the kernel memory of the maps that grow
//!   with virtual servers (`scale_memory`); then the cold start again with tables of
//!   16,381 slots;
//! - `scale_one_real`: the same file with one real's weight changed, applied as a
//!   reload: what it took and what it wrote (virtual servers, rings, slots, reals);
//!   `scale_one_disable`: one real disabled at run time (`xdpvs real disable`);
//! - `scale_probes`: the daemon's prober with 10,000 reals probed over TCP every
//!   second, measured over 10 s after a 2 s start-up (the first round starts them
//!   all at once): probes, failures, latency and the CPU of the thread running them;
//!   once with connect probes (`type: tcp`), once half-open (`tcp_half_open`,
//!   decision 0020; `XDPVS_SCALE_PROBE=tcp` or `tcp_half_open` picks one).
//!   `scale_probes_apart`: the same with the reals in a namespace of their own
//!   behind a veth pair whose ends receive on threads of their own (threaded NAPI),
//!   so that the balancer's side (the prober's thread and its end's receive thread)
//!   is measured without the reals';
//!   `scale_probe_close`, the CPU of one connect-and-close on loopback, one after
//!   another, closed with a FIN and with a reset (what a TCP probe does, as HAProxy
//!   does: it leaves no TIME_WAIT socket; little cheaper in CPU here).
//! - `scale_probes_rise`: a first start of 100 virtual servers of 100 reals probed
//!   over TCP (10,000 loopback addresses, one listener), through the daemon's loop:
//!   reports taken as they queued up, counted, their transitions applied to a
//!   reconciler writing a loaded balancer object, until every real is in its table:
//!   the time, the CPU, the tables written. `XDPVS_SCALE_RISE=one` applies each report
//!   on its own, as the daemon did before transitions were applied together;
//!   `XDPVS_SCALE_RISE_VSS=N` starts N virtual servers instead.
//!
//! On loopback the listener's half of each handshake runs in the prober's thread too
//! (softirq on the sending CPU), so these figures overstate what probing remote reals
//! costs.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    rc::Rc,
    time::{Duration, Instant},
};

use lb_common::{
    maps::{MAX_VS, VS_RINGS},
    IfaceInfo, NatState, RealInfo, VlanKey, VlanOut, VsInfo, VsKey,
};
use xdpvs::{
    config::{self, Config, SystemFacts},
    dataplane::{
        bpf::{self, BpfDataplane},
        Dataplane, DataplaneError,
    },
    maglev,
    model::RealKey,
    reconcile::{L2Next, Override, Reconciler},
};

const VSS: usize = 1000;
const REALS: usize = 100;
const PROBED: usize = 10_000;

/// Returns: whether the bench was asked for this part alone (`--scale`).
pub fn only() -> bool {
    std::env::args().any(|a| a == "--scale")
}

/// Every figure of this part (`XDPVS_SCALE=maglev,reconcile,probes` picks some).
pub fn run() {
    crate::require_root();
    let picked = std::env::var("XDPVS_SCALE").unwrap_or_default();
    // A part is skipped once a signal has asked the bench to stop.
    let wants = |part: &str| {
        !crate::signals::stopping() && (picked.is_empty() || picked.split(',').any(|p| p == part))
    };
    if wants("maglev") {
        maglev_build();
    }
    if wants("reconcile") {
        reconcile();
        cold_apply_smaller_tables();
    }
    if wants("probes") {
        // `XDPVS_SCALE_PROBE=tcp_half_open` (or `tcp`) picks one type of probe.
        let kind = std::env::var("XDPVS_SCALE_PROBE").unwrap_or_default();
        if kind.is_empty() {
            probe_close();
        }
        for k in ["tcp", "tcp_half_open"] {
            if (kind.is_empty() || kind == k) && !crate::signals::stopping() {
                probes(k);
                probes_apart(k);
            }
        }
    }
    if wants("rise") {
        probes_rise();
    }
}

struct Any;
impl SystemFacts for Any {
    fn interface_exists(&self, _: &str) -> bool {
        true
    }
}

fn maglev_build() {
    let backends: Vec<maglev::Backend> = (0..REALS as u32)
        .map(|i| maglev::Backend {
            id: i,
            identity: format!("10.1.{}.{}:80", i / 250, i % 250 + 1).into_bytes(),
            weight: 1,
        })
        .collect();
    // Wall time and the thread's CPU time of each build: on a busy machine the first
    // includes waiting for a core.
    let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) = (0..50)
        .map(|_| {
            let (start, cpu0) = (Instant::now(), thread_cpu());
            std::hint::black_box(maglev::build(&backends, 65537));
            (start.elapsed(), thread_cpu() - cpu0)
        })
        .unzip();
    wall.sort();
    cpu.sort();
    println!(
        "{{\"bench\":\"scale_maglev\",\"slots\":65537,\"reals\":{REALS},\"runs\":50,\"ms_min\":{:.2},\"ms_median\":{:.2},\"ms_max\":{:.2},\"cpu_ms_median\":{:.2}}}",
        ms(wall[0]),
        ms(wall[25]),
        ms(wall[49]),
        ms(cpu[25])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Returns: the configuration of 1,000 virtual servers of 100 reals; the real `(v, r)`
/// of `heavier`, if any, has weight 2.
fn config(heavier: Option<(usize, usize)>) -> Config {
    config_of(heavier, 65537)
}

/// [`config`], every virtual server with `table_size` slots.
fn config_of(heavier: Option<(usize, usize)>, table_size: u32) -> Config {
    let mut y = String::from("interfaces: [lo]\nvirtual_servers:\n");
    for v in 0..VSS {
        y.push_str(&format!(
            "  - name: vs{v}\n    address: 10.100.{}.{}\n    port: 80\n    protocol: tcp\n    health_check: {{ type: none }}\n    table_size: {table_size}\n    real_servers:\n",
            v / 250,
            v % 250 + 1
        ));
        for r in 0..REALS {
            let w = if heavier == Some((v, r)) { 2 } else { 1 };
            // 100,000 distinct addresses: 10.<v / 4>.<(v % 4) * 64 + r / 4>.<r % 4 + 1>.
            y.push_str(&format!(
                "      - {{ address: 10.{}.{}.{}, weight: {w} }}\n",
                v / 4 + 1,
                (v % 4) * 64 + r / 4,
                r % 4 + 1
            ));
        }
    }
    config::parse(Path::new("scale.yaml"), &y, &Any).unwrap_or_else(|e| panic!("{e}"))
}

/// What a reconciler wrote, counted on its way to the data path.
#[derive(Default)]
struct Writes {
    vs: BTreeSet<[u32; 5]>,
    rings: BTreeSet<u32>,
    slots: usize,
    reals: BTreeSet<u32>,
    other: usize,
    /// `VS_MAP` values written (a table made live, or parameters changed).
    vs_values: usize,
}

/// The loaded object's maps, with every write counted (the bench holds the counts too).
struct Counting {
    dp: BpfDataplane,
    w: Rc<RefCell<Writes>>,
}

impl Dataplane for Counting {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_iface(ifindex, info)
    }
    fn set_vlans(
        &mut self,
        ins: &std::collections::BTreeMap<VlanKey, u32>,
        outs: &std::collections::BTreeMap<u32, (IfaceInfo, VlanOut)>,
    ) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_vlans(ins, outs)
    }
    fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.remove_iface(ifindex)
    }
    fn set_own_macs(
        &mut self,
        macs: &std::collections::BTreeMap<[u8; 6], u32>,
    ) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_own_macs(macs)
    }
    fn set_fragment_takers(&mut self, takers: &[(VsKey, u16)]) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_fragment_takers(takers)
    }
    fn set_nat_reals(&mut self, reals: &[(VsKey, NatState)]) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_nat_reals(reals)
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        self.w.borrow_mut().reals.insert(id);
        self.dp.set_real(id, info)
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let mut w = self.w.borrow_mut();
        w.rings.insert(ring_id);
        w.slots += slots.len();
        drop(w);
        self.dp.set_ring_slots(ring_id, slots)
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        let a = key.addr;
        let mut w = self.w.borrow_mut();
        w.vs.insert([a[0], a[1], a[2], a[3], u32::from(key.port_be)]);
        w.vs_values += 1;
        drop(w);
        self.dp.set_vs(key, info)
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.remove_vs(key)
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_settings(bits)
    }
    fn set_syn_guard(&mut self, per_window: u32) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += 1;
        self.dp.set_syn_guard(per_window)
    }
    fn set_addr_filter(
        &mut self,
        words: &[(u32, u64)],
        written: bool,
    ) -> Result<(), DataplaneError> {
        self.w.borrow_mut().other += words.len() + usize::from(written);
        self.dp.set_addr_filter(words, written)
    }
    fn reset_counters(
        &mut self,
        vs_index: Option<u32>,
        real_id: Option<u32>,
    ) -> Result<(), DataplaneError> {
        self.dp.reset_counters(vs_index, real_id)
    }
}

fn writes_json(w: &Writes) -> String {
    format!(
        "\"vs_written\":{},\"rings_written\":{},\"slots_written\":{},\"reals_written\":{},\"other_writes\":{}",
        w.vs.len(),
        w.rings.len(),
        w.slots,
        w.reals.len(),
        w.other
    )
}

/// Returns: the entries and kernel memory (`memlock`) of this process's map `name`.
fn memlock(name: &str) -> Option<(u64, u64)> {
    for fd in std::fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |f: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(entries), Some(bytes)) =
            (field("map_id:"), field("max_entries:"), field("memlock:"))
        else {
            continue;
        };
        let named = aya::maps::MapInfo::from_id(id as u32)
            .ok()
            .is_some_and(|m| m.name_as_str() == Some(name));
        if named {
            return Some((entries, bytes));
        }
    }
    None
}

/// The cold start again with tables of 16,381 slots (163 per real): what the table
/// size costs a start.
fn cold_apply_smaller_tables() {
    const SIZE: u32 = 16381;
    let cold = config_of(None, SIZE);
    let rings = xdpvs::daemon::ring_count(&cold);
    let ebpf = bpf::load(bpf::LoadOptions {
        flow_entries: 65536,
        ring_count: rings,
    })
    .expect("load BPF object");
    let (dp, _programs) = BpfDataplane::new(ebpf).expect("maps");
    let mut rec = Reconciler::new(dp, MAX_VS, rings);
    let (start, cpu0, all0) = (Instant::now(), thread_cpu(), process_cpu());
    rec.apply(&cold).expect("cold apply");
    let (took, cpu, all) = (start.elapsed(), thread_cpu() - cpu0, process_cpu() - all0);
    println!(
        "{{\"bench\":\"scale_cold_apply\",\"virtual_servers\":{VSS},\"reals_each\":{REALS},\"table_size\":{SIZE},\"ms\":{:.0},\"cpu_ms\":{:.0},\"all_cpu_ms\":{:.0}}}",
        ms(took),
        ms(cpu),
        ms(all)
    );
}

fn reconcile() {
    let start = Instant::now();
    let cold = config(None);
    let parse_ms = ms(start.elapsed());
    // The daemon's sizing.
    let rings = xdpvs::daemon::ring_count(&cold);
    let start = Instant::now();
    let ebpf = bpf::load(bpf::LoadOptions {
        flow_entries: 65536,
        ring_count: rings,
    })
    .expect("load BPF object");
    let load_ms = ms(start.elapsed());
    let (dp, _programs) = BpfDataplane::new(ebpf).expect("maps");
    let counts = Rc::new(RefCell::new(Writes::default()));
    let take = || counts.take();
    let mut rec = Reconciler::new(
        Counting {
            dp,
            w: counts.clone(),
        },
        MAX_VS,
        rings,
    );
    let (start, cpu0, all0) = (Instant::now(), thread_cpu(), process_cpu());
    rec.apply(&cold).expect("cold apply");
    let (took, cpu, all) = (start.elapsed(), thread_cpu() - cpu0, process_cpu() - all0);
    let w = take();
    // cpu_ms: the applying thread; all_cpu_ms: with the threads building tables.
    println!(
        "{{\"bench\":\"scale_cold_apply\",\"virtual_servers\":{VSS},\"reals_each\":{REALS},\"table_size\":65537,\"ms\":{:.0},\"cpu_ms\":{:.0},\"all_cpu_ms\":{:.0},\"parse_ms\":{parse_ms:.0},\"load_ms\":{load_ms:.0},{}}}",
        ms(took),
        ms(cpu),
        ms(all),
        writes_json(&w)
    );
    let start = Instant::now();
    let mut addrs: Vec<IpAddr> = rec.real_addresses();
    addrs.sort();
    for (i, addr) in addrs.iter().enumerate() {
        let mac = [2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        rec.set_next_hop(*addr, L2Next { ifindex: 1, mac })
            .expect("next hop");
    }
    let took = start.elapsed();
    let w = take();
    println!(
        "{{\"bench\":\"scale_next_hops\",\"addresses\":{},\"ms\":{:.0},{}}}",
        addrs.len(),
        ms(took),
        writes_json(&w)
    );
    if let Some((entries, bytes)) = memlock(VS_RINGS) {
        println!(
            "{{\"bench\":\"scale_memory\",\"map\":\"VS_RINGS\",\"rings\":{rings},\"entries\":{entries},\"memlock_bytes\":{bytes},\"bytes_per_ring\":{:.0}}}",
            bytes as f64 / f64::from(rings)
        );
    }
    for name in ["VS_MAP", "REALS", "STATS_VS", "STATS_REAL"] {
        if let Some((entries, bytes)) = memlock(name) {
            println!(
                "{{\"bench\":\"scale_memory\",\"map\":\"{name}\",\"entries\":{entries},\"memlock_bytes\":{bytes},\"bytes_per_entry\":{:.0}}}",
                bytes as f64 / entries as f64
            );
        }
    }

    // A reload with one real's weight changed.
    let one = config(Some((500, 42)));
    let (start, cpu0) = (Instant::now(), thread_cpu());
    rec.apply(&one).expect("reload");
    let (took, cpu) = (start.elapsed(), thread_cpu() - cpu0);
    let w = take();
    println!(
        "{{\"bench\":\"scale_one_real\",\"virtual_servers\":{VSS},\"change\":\"weight of one real\",\"ms\":{:.1},\"cpu_ms\":{:.1},{}}}",
        ms(took),
        ms(cpu),
        writes_json(&w)
    );
    // The same file again: nothing to do.
    let (start, cpu0) = (Instant::now(), thread_cpu());
    rec.apply(&one).expect("reload");
    let (took, cpu) = (start.elapsed(), thread_cpu() - cpu0);
    let w = take();
    println!(
        "{{\"bench\":\"scale_same_file\",\"virtual_servers\":{VSS},\"ms\":{:.1},\"cpu_ms\":{:.1},{}}}",
        ms(took),
        ms(cpu),
        writes_json(&w)
    );
    // One real disabled at run time.
    let vs = &one.virtual_servers[700];
    let key = RealKey::real(
        &vs.name,
        vs.real_servers[7].address,
        vs.real_servers[7].port,
    );
    let start = Instant::now();
    rec.set_override(
        &key,
        Some(Override {
            weight: None,
            disabled: true,
            file_weight: vs.real_servers[7].weight,
        }),
    )
    .expect("disable");
    let took = start.elapsed();
    let w = take();
    println!(
        "{{\"bench\":\"scale_one_disable\",\"virtual_servers\":{VSS},\"ms\":{:.1},{}}}",
        ms(took),
        writes_json(&w)
    );
}

/// CPU time used so far by the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time used so far by the whole process (every thread).
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A listener on every loopback address that accepts and closes, on a thread of its
/// own (its CPU is not the prober's). Stops when the process ends.
fn listener() -> u16 {
    listener_thread().0
}

/// [`listener`], which `shutdown(fd)` closes (then every connection is refused; its
/// thread stays, so that its clock can be read). Returns: its port, the clock of its
/// thread's CPU time, and its descriptor.
fn listener_thread() -> (u16, libc::clockid_t, std::os::fd::RawFd) {
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = l.local_addr().expect("port").port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
    // SAFETY: listen again on the listener's own fd, for a longer backlog.
    unsafe { libc::listen(fd, 65535) };
    let t = std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
                // Shut down: nothing will come again.
                loop {
                    std::thread::park();
                }
            }
        }
    });
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is running (it never ends, it outlives every reading).
    unsafe {
        libc::pthread_getcpuclockid(
            std::os::unix::thread::JoinHandleExt::as_pthread_t(&t),
            &mut clock,
        )
    };
    (port, clock, fd)
}

/// CPU time used so far on `clock`.
fn cpu_of(clock: libc::clockid_t) -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(clock, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU per connection of connecting to the listener and closing, with a FIN or with
/// a reset, 5,000 connections each, one at a time.
fn probe_close() {
    const N: u32 = 5000;
    let port = listener();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for reset in [false, true] {
        let cpu = rt.block_on(async {
            let cpu0 = thread_cpu();
            for i in 0..N {
                let addr = std::net::SocketAddr::from((
                    [127, 2, (i / 200) as u8, (i % 200 + 1) as u8],
                    port,
                ));
                let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
                if reset {
                    c.set_zero_linger().expect("SO_LINGER");
                }
                drop(c);
            }
            thread_cpu() - cpu0
        });
        println!(
            "{{\"bench\":\"scale_probe_close\",\"close\":\"{}\",\"connections\":{N},\"cpu_us_per_connection\":{:.1}}}",
            if reset { "reset" } else { "fin" },
            cpu.as_secs_f64() * 1e6 / f64::from(N)
        );
    }
}

/// What a probing run measured.
struct Probed {
    probes: u64,
    failed: u64,
    latency: Vec<Duration>,
    /// CPU of the thread running the probes.
    cpu: Duration,
    /// CPU of what `other` reads, over the same window.
    other: Duration,
}

const PROBE_WARMUP: Duration = Duration::from_secs(2);
const PROBE_WINDOW: Duration = Duration::from_secs(10);

/// Probes `probed` reals at `addr(i)`:`port` every second with probes of type `kind`,
/// through the daemon's prober, on this thread; counts what was reported over
/// [`PROBE_WINDOW`] after [`PROBE_WARMUP`]. `other` reads a CPU clock of something
/// else (read at the window's start and end).
fn run_probes(
    kind: &str,
    probed: usize,
    addr: impl Fn(usize) -> String,
    port: u16,
    other: impl Fn() -> Duration,
) -> Probed {
    // Each probe holds a socket for a moment; the first round opens them all at once.
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut y = format!("interfaces: [lo]\nvirtual_servers:\n  - name: many\n    address: 10.0.0.1\n    port: {port}\n    protocol: tcp\n    health_check: {{ type: {kind}, interval: 1s, timeout: 500ms, rise: 1, fall: 1 }}\n    table_size: 65537\n    real_servers:\n");
    for i in 0..probed {
        y.push_str(&format!("      - address: {}\n", addr(i)));
    }
    let cfg = config::parse(Path::new("probes.yaml"), &y, &Any).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut h, mut rx) = xdpvs::health::Health::new();
        if kind == "tcp_half_open" {
            let sockets = xdpvs::health::Sockets::open().expect("raw sockets (root)");
            h.use_half_open(sockets).expect("the half-open task");
        }
        let mut up = std::collections::HashSet::new();
        let start = Instant::now();
        h.sync(&cfg);
        let mut at_window = None;
        let (mut n, mut failed, mut latency) = (0u64, 0u64, Vec::new());
        loop {
            tokio::select! {
                Some(r) = rx.recv() => {
                    if at_window.is_some() {
                        n += 1;
                        match &r.result {
                            Ok(d) => latency.push(*d),
                            Err(_) => failed += 1,
                        }
                    }
                    if let Some(t) = h.record(r, |k| up.contains(k)) {
                        if t.healthy {
                            up.insert(t.key);
                        } else {
                            up.remove(&t.key);
                        }
                    }
                }
                _ = tokio::time::sleep_until((start + PROBE_WARMUP).into()), if at_window.is_none() => {
                    at_window = Some((thread_cpu(), other()));
                }
                _ = tokio::time::sleep_until((start + PROBE_WARMUP + PROBE_WINDOW).into()) => break,
            }
        }
        let (cpu0, other0) = at_window.expect("warmed up");
        Probed {
            probes: n,
            failed,
            latency,
            cpu: thread_cpu() - cpu0,
            other: other() - other0,
        }
    })
}

/// Prints one `scale_probes*` line.
fn print_probed(bench: &str, kind: &str, probed: usize, mut p: Probed, extra: &str) {
    p.latency.sort();
    let lat = &p.latency;
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    let window = PROBE_WINDOW.as_secs_f64();
    let cpu = p.cpu + p.other;
    println!(
        "{{\"bench\":\"{bench}\",\"type\":\"{kind}\",\"reals\":{probed},\"interval_ms\":1000,\"seconds\":{},\"probes\":{},\"failed\":{},\"latency_us_p50\":{},\"latency_us_p99\":{},\"cpu_ms\":{},\"cpu_percent_of_one_core\":{:.1},\"cpu_us_per_probe\":{:.1}{extra}}}",
        PROBE_WINDOW.as_secs(),
        p.probes,
        p.failed,
        pct(0.5),
        pct(0.99),
        cpu.as_millis(),
        100.0 * cpu.as_secs_f64() / window,
        cpu.as_secs_f64() * 1e6 / p.probes.max(1) as f64
    );
}

/// How many reals the probing benches probe (`XDPVS_SCALE_PROBED=N` to compare with
/// fewer).
fn probed() -> usize {
    std::env::var("XDPVS_SCALE_PROBED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROBED)
}

/// `scale_probes`: probes of type `kind` to loopback addresses, one listener; the
/// listener's half of every exchange runs in the prober's thread too.
fn probes(kind: &str) {
    let port = listener();
    let n = probed();
    let p = run_probes(
        kind,
        n,
        |i| format!("127.1.{}.{}", i / 200, i % 200 + 1),
        port,
        || Duration::ZERO,
    );
    print_probed("scale_probes", kind, n, p, "");
}

/// CPU time a task (a kernel thread) of this host has used so far, from
/// `/proc/<pid>/schedstat`.
fn task_cpu(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    Duration::from_nanos(
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Returns: the pids of the threaded-NAPI kernel threads of interface `dev`
/// (`napi/<dev>-<id>`).
fn napi_threads(dev: &str) -> Vec<u32> {
    let want = format!("napi/{dev}-");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&want))
        })
        .collect()
}

/// `scale_probes_apart`: the reals in a namespace of their own behind a veth pair,
/// whose two ends receive on kernel threads of their own (GRO and threaded NAPI, as a
/// NIC's queues are served apart from the processes using them), so that what the
/// balancer's side costs is measured without the reals': the prober's thread and the
/// receive thread of its end. The reals' side (their end's thread and the listener)
/// is printed beside.
fn probes_apart(kind: &str) {
    use crate::netns::{unique_prefix, veth, Netns};
    const PORT: u16 = 8080;
    let p = unique_prefix();
    let (lb, reals) = (Netns::new(&format!("{p}lb")), Netns::new(&format!("{p}re")));
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    veth(&a, &lb, &b, &reals);
    lb.exec(&["ip", "addr", "add", "10.199.0.1/24", "dev", &a]);
    reals.exec(&["ip", "addr", "add", "10.199.0.2/24", "dev", &b]);
    // Every address of 10.200.0.0/16 is the reals' own.
    reals.exec(&["ip", "route", "add", "local", "10.200.0.0/16", "dev", "lo"]);
    lb.exec(&["ip", "route", "add", "10.200.0.0/16", "via", "10.199.0.2"]);
    for (ns, dev) in [(&lb, &a), (&reals, &b)] {
        ns.exec(&["ethtool", "-K", dev, "gro", "on"]);
        ns.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{dev}/threaded"),
        ]);
    }
    let (lb_napi, reals_napi) = (napi_threads(&a), napi_threads(&b));
    assert!(
        !lb_napi.is_empty() && !reals_napi.is_empty(),
        "no threaded NAPI thread for {a} or {b}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    // The reals' listener: accepts and closes (a connect probe's real), on a thread of
    // its own in the reals' namespace. It ends when the namespace's listener fd is
    // shut down below.
    let listen = reals.spawn(move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", PORT)).expect("listener");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        // SAFETY: listen again on the listener's own fd, for a longer backlog.
        unsafe { libc::listen(fd, 65535) };
        let mut clock: libc::clockid_t = 0;
        // SAFETY: this thread's own CPU clock.
        unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        tx.send((fd, clock)).expect("send");
        for c in l.incoming() {
            if c.is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
                return;
            }
        }
    });
    let (listen_fd, listen_clock) = rx.recv().expect("listener started");
    let n = probed();
    let reals_cpu = |at: &mut Option<Duration>| {
        let now = cpu_of(listen_clock) + reals_napi.iter().map(|&t| task_cpu(t)).sum::<Duration>();
        now - at.replace(now).unwrap_or(now)
    };
    let mut reals_at = None;
    let (kind2, lb_napi2) = (kind.to_string(), lb_napi.clone());
    let probing = lb.spawn(move || {
        run_probes(
            &kind2,
            n,
            |i| format!("10.200.{}.{}", i / 200, i % 200 + 1),
            PORT,
            move || lb_napi2.iter().map(|&t| task_cpu(t)).sum(),
        )
    });
    // The reals' clocks over about the same window.
    std::thread::sleep(PROBE_WARMUP + Duration::from_millis(500));
    reals_cpu(&mut reals_at);
    let p = probing.join().expect("probes");
    let reals_used = reals_cpu(&mut reals_at);
    // SAFETY: shuts the listener down (its accept fails with EINVAL and the thread ends).
    unsafe { libc::shutdown(listen_fd, libc::SHUT_RDWR) };
    let _ = listen.join();
    let extra = format!(
        ",\"prober_thread_ms\":{},\"receive_thread_ms\":{},\"reals_side_ms\":{}",
        p.cpu.as_millis(),
        p.other.as_millis(),
        reals_used.as_millis()
    );
    print_probed("scale_probes_apart", kind, n, p, &extra);
}

/// What applying the probes' reports took (`probes_rise`).
#[derive(Default)]
struct Applied {
    /// Until the last transition.
    took: Duration,
    /// From the first transition to the last.
    spread: Duration,
    batches: usize,
    transitions: usize,
    /// The process's CPU while the transitions were applied (tables built, written),
    /// and, since the tables are built off the loop's thread, the probes' and the
    /// listener's meanwhile.
    sync_cpu: Duration,
}

/// The daemon's loop (`daemon::serve`: one thread, the probes beside it) until `up`
/// reals of `rec` are up, counting reports with `h` and applying their transitions
/// together (`one`: each report on its own, as before they were applied together).
/// `up`: how many are up now.
async fn apply_until(
    h: &mut xdpvs::health::Health,
    rx: &mut tokio::sync::mpsc::Receiver<xdpvs::health::Report>,
    rec: &mut Reconciler<Counting>,
    one: bool,
    mut up: usize,
    want: usize,
) -> Applied {
    const LIMIT: Duration = Duration::from_secs(600);
    let start = Instant::now();
    let mut first = None;
    let mut a = Applied::default();
    while up != want {
        let r = tokio::select! {
            Some(r) = rx.recv() => r,
            _ = tokio::time::sleep_until((start + LIMIT).into()) => {
                panic!("{up} reals up, not {want}, after {LIMIT:?}")
            }
        };
        let ts = if one {
            h.record(r, |k| rec.healthy(k)).into_iter().collect()
        } else {
            h.take_batch(r, rx, |k| rec.healthy(k)).await
        };
        if ts.is_empty() {
            continue;
        }
        first.get_or_insert_with(Instant::now);
        let cpu0 = process_cpu();
        if one {
            for t in &ts {
                rec.set_health(&t.key, t.healthy).expect("set_health");
            }
        } else {
            let changes: Vec<_> = ts.iter().map(|t| (t.key.clone(), t.healthy)).collect();
            rec.set_health_many(&changes)
                .await
                .expect("set_health_many");
        }
        a.sync_cpu += process_cpu() - cpu0;
        a.batches += 1;
        a.transitions += ts.len();
        for t in &ts {
            if t.healthy {
                up += 1;
            } else {
                up -= 1;
            }
        }
    }
    a.took = start.elapsed();
    a.spread = first.map_or(Duration::ZERO, |f| f.elapsed());
    a
}

/// A first start of probed virtual servers (`scale_probes_rise`): from the probes'
/// start until every real is in its table; then their listener closed
/// (`scale_probes_fall`) until every real is out. The daemon's loop applies what the
/// probes report to a reconciler writing a loaded object.
fn probes_rise() {
    const RISE_REALS: usize = 100;
    let vss: usize = std::env::var("XDPVS_SCALE_RISE_VSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let one = std::env::var("XDPVS_SCALE_RISE").is_ok_and(|v| v == "one");
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let (port, listener_clock, listener_fd) = listener_thread();
    // The defaults but a 1 s interval: a real rises at its second probe, within 1 s
    // of the first (at once), at its own phase; it falls at its third failure.
    let mut y = String::from("interfaces: [lo]\nvirtual_servers:\n");
    for v in 0..vss {
        y.push_str(&format!(
            "  - name: vs{v}\n    address: 10.100.{}.{}\n    port: {port}\n    protocol: tcp\n    health_check: {{ interval: 1s, timeout: 500ms, rise: 2, fall: 3 }}\n    real_servers:\n",
            v / 250,
            v % 250 + 1
        ));
        for r in 0..RISE_REALS {
            let i = v * RISE_REALS + r;
            y.push_str(&format!(
                "      - address: 127.3.{}.{}\n",
                i / 250,
                i % 250 + 1
            ));
        }
    }
    let cfg = config::parse(Path::new("rise.yaml"), &y, &Any).expect("config");
    let rings = xdpvs::daemon::ring_count(&cfg);
    let ebpf = bpf::load(bpf::LoadOptions {
        flow_entries: 65536,
        ring_count: rings,
    })
    .expect("load BPF object");
    let (dp, _programs) = BpfDataplane::new(ebpf).expect("maps");
    let counts = Rc::new(RefCell::new(Writes::default()));
    let mut rec = Reconciler::new(
        Counting {
            dp,
            w: counts.clone(),
        },
        MAX_VS,
        rings,
    );
    rec.apply(&cfg).expect("apply");
    counts.take();
    let total = vss * RISE_REALS;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let applied = if one { "one_by_one" } else { "together" };
    rt.block_on(async {
        let (mut h, mut rx) = xdpvs::health::Health::new();
        let (all0, listener0) = (process_cpu(), cpu_of(listener_clock));
        h.sync(&cfg);
        let a = apply_until(&mut h, &mut rx, &mut rec, one, 0, total).await;
        let listener = cpu_of(listener_clock) - listener0;
        let all = process_cpu() - all0 - listener;
        let w = counts.take();
        println!(
            "{{\"bench\":\"scale_probes_rise\",\"applied\":\"{applied}\",\"virtual_servers\":{vss},\"reals_each\":{RISE_REALS},\"table_size\":65537,\"ms\":{:.0},\"ms_first_to_last\":{:.0},\"cpu_ms\":{:.0},\"sync_cpu_ms\":{:.0},\"listener_cpu_ms\":{:.0},\"transitions\":{},\"batches\":{},\"tables_written\":{},\"slots_written\":{},\"reals_written\":{}}}",
            ms(a.took),
            ms(a.spread),
            ms(all),
            ms(a.sync_cpu),
            ms(listener),
            a.transitions,
            a.batches,
            w.vs_values,
            w.slots,
            w.reals.len()
        );
        // Every real fails at once (a switch between the balancer and a rack).
        // SAFETY: shuts down the listener's own descriptor, still open.
        unsafe { libc::shutdown(listener_fd, libc::SHUT_RDWR) };
        let all0 = process_cpu();
        let a = apply_until(&mut h, &mut rx, &mut rec, one, total, 0).await;
        let all = process_cpu() - all0;
        let w = counts.take();
        println!(
            "{{\"bench\":\"scale_probes_fall\",\"applied\":\"{applied}\",\"virtual_servers\":{vss},\"reals_each\":{RISE_REALS},\"table_size\":65537,\"ms\":{:.0},\"ms_first_to_last\":{:.0},\"cpu_ms\":{:.0},\"sync_cpu_ms\":{:.0},\"transitions\":{},\"batches\":{},\"tables_written\":{},\"slots_written\":{},\"reals_written\":{}}}",
            ms(a.took),
            ms(a.spread),
            ms(all),
            ms(a.sync_cpu),
            a.transitions,
            a.batches,
            w.vs_values,
            w.slots,
            w.reals.len()
        );
    });
}
