//! `cargo xtask bench`: per-packet cost of the XDP program under BPF_PROG_TEST_RUN,
//! printed as JSON lines. A benchmark, not a test: it asserts nothing about speed.
//!
//! - `floor_xdp_pass`: the do-nothing program, the cost of any XDP program here;
//! - `non_vip`: a TCP packet for an address that is no VIP (passed); and
//!   `non_vip_nat_configured`, the same once a NAT virtual server exists. Its source
//!   is no NAT real, so the address filter passes it without a NAT reply lookup
//!   (decision 0022); before the filter it was looked up as a possible reply;
//! - `vip_established`: a VIP packet whose flow is in the connection table, direct
//!   routing. The kernel repeats the frame as the first run rewrote it, addressed to
//!   the real's MAC: every later run looks the flow up, finds the frame another host's
//!   (`OWN_MACS` looked up) and passes it, so this is the cost up to that check, not of
//!   a forward; `vip_established_single` is the whole forward, one run per packet,
//!   beside `floor_xdp_pass_single`;
//! - `vip_new_flow`: a VIP packet of a flow never seen (hash, Maglev, table insert).
//!   The kernel repeats one packet, so after the first run a flow is established;
//!   new flows are measured one run per distinct packet instead, and reported beside a
//!   floor measured the same way (`floor_xdp_pass_single`), since a single run carries
//!   the timer's own cost.
//! - `nat_request`, `nat_reply`, `tunnel` (each `_v4` and `_v6`): established flows of
//!   NAT and tunnel virtual servers. These programs rewrite the frame, and the kernel
//!   re-runs a repeated packet on the already rewritten bytes, so they are measured
//!   like new flows: one run per packet, averaged, beside `floor_xdp_pass_single`.
//! - `vip_syn_spoofed`: a TCP SYN from a new source per packet (single runs): forwarded
//!   by Maglev without a connection table write (decision 0012);
//! - `flow_table_walk`: the walk of the connection table that `xdpvs status` and each
//!   metrics scrape make to count flows per real, over the new flows just created;
//! - `memory_map`, `memory_flow_tables`: the kernel memory of the connection table and
//!   the maps sized like it (`PERSIST`, `NAT_STATE`) at 4,194,304 entries, and per
//!   connection;
//! - `live` (`tests/src/live.rs`): the daemon forwarding trafgen's frames between
//!   namespaces, per method and workload, beside a pass program and a bounce;
//!   `--live` runs it alone;
//! - `health_probes`: the daemon's prober with 1,000 reals probed over TCP every second
//!   for 10 s (reals are loopback addresses with one listener behind them): probes
//!   done, their latency, and the CPU time of the thread that runs them, in all and
//!   per probe; `health_probes_http`: the same over HTTP (hyper's client, a `GET` per
//!   probe, each answered 200 by a small server on a thread of its own).
//!
//! Ctrl-C, SIGTERM or SIGHUP stop the bench at its next check, between two parts or
//! two live measurements (`tests::signals`): its labs and fixtures are removed and it
//! exits 130; a part cut short prints no line.

use tests::{
    fixture::Fixture,
    packet::{V4Packet, V6Packet},
};
use xdpvs::dataplane::{DataplaneRead as _, FlowReader};

const REPEAT: u32 = 1_000_000;
const NEW_FLOWS: u32 = 100_000;
/// Single runs per NAT/tunnel figure.
const SINGLE_RUNS: u32 = 50_000;

const ROUTED: &str = "  - { name: nat4, address: 10.0.0.110, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }, { address: 10.0.1.12, port: 8080 }] }
  - { name: tun4, address: 10.0.0.111, port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 10.0.9.11 }, { address: 10.0.9.12 }] }
  - { name: nat6, address: '2001:db8:f::110', port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 'fd00:1::11', port: 8080 }, { address: 'fd00:1::12', port: 8080 }] }
  - { name: tun6, address: '2001:db8:f::111', port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 'fd00:9::11' }, { address: 'fd00:9::12' }] }
";

/// Returns: the mean of `SINGLE_RUNS` single runs of `frame`.
fn single(f: &Fixture, frame: &[u8]) -> f64 {
    let total: u64 = (0..SINGLE_RUNS).map(|_| f.run(frame).ns).sum();
    total as f64 / f64::from(SINGLE_RUNS)
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

/// The routed methods, established flows.
fn routed(f: &Fixture) {
    let client = [192, 0, 2, 7];
    let req = V4Packet::tcp(client, 1000, [10, 0, 0, 110], 80).build();
    let out = f.run(&req).out;
    line("nat_request_v4", single(f, &req), 1);
    // The real's reply: addresses and ports of the rewritten request, swapped.
    let real: [u8; 4] = out[30..34].try_into().expect("4");
    let reply = V4Packet::tcp(real, 8080, client, 1000).build();
    line("nat_reply_v4", single(f, &reply), 1);
    line(
        "tunnel_v4",
        single(f, &V4Packet::tcp(client, 1000, [10, 0, 0, 111], 80).build()),
        1,
    );

    let c6 = v6("2001:db8:c::7");
    let req = V6Packet::tcp(c6, 1000, v6("2001:db8:f::110"), 80).build();
    let out = f.run(&req).out;
    line("nat_request_v6", single(f, &req), 1);
    let real: [u8; 16] = out[38..54].try_into().expect("16");
    line(
        "nat_reply_v6",
        single(f, &V6Packet::tcp(real, 8080, c6, 1000).build()),
        1,
    );
    line(
        "tunnel_v6",
        single(
            f,
            &V6Packet::tcp(c6, 1000, v6("2001:db8:f::111"), 80).build(),
        ),
        1,
    );
}

/// CPU time used so far by the calling thread.
fn thread_cpu() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A server for the probe bench on every address, on a thread and runtime of its own
/// (its CPU is not the prober's): answers each request with an empty 200 and closes;
/// a connection that sends nothing (a TCP probe) is just closed. Stops on drop.
struct ProbeServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeServer {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
        let port = listener.local_addr().expect("port").port();
        // A backlog for a thousand simultaneous connections (listen again to raise it).
        // SAFETY: listen on the listener's own fd.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = stopped => {}
                    _ = async {
                        while let Ok((c, _)) = l.accept().await {
                            tokio::spawn(answer_probe(c));
                        }
                    } => {}
                }
            });
        });
        Self {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head (if any) from `c` and answers it with an empty 200.
async fn answer_probe(mut c: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
}

/// 1,000 reals probed every second for 10 s by the daemon's own prober, with the probe
/// `check` (a `health_check` flow mapping), against `server`; printed as bench `name`.
fn probes(name: &str, check: &str, server: &ProbeServer) {
    use std::time::{Duration, Instant};
    const REALS: usize = 1000;
    const WINDOW: Duration = Duration::from_secs(10);
    let mut y = format!("interfaces: [lo]\nvirtual_servers:\n  - name: many\n    address: 10.0.0.1\n    port: {}\n    protocol: tcp\n    health_check: {check}\n    real_servers:\n", server.port);
    for i in 0..REALS {
        y.push_str(&format!(
            "      - address: 127.1.{}.{}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    struct Any;
    impl xdpvs::config::SystemFacts for Any {
        fn interface_exists(&self, _: &str) -> bool {
            true
        }
    }
    let cfg = xdpvs::config::parse(std::path::Path::new("bench.yaml"), &y, &Any).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (probes, failed, ups, mut lat, cpu) = rt.block_on(async {
        let (mut h, mut rx) = xdpvs::health::Health::new();
        // The reals' health as the daemon's reconciler would hold it: the trackers
        // count against it.
        let mut up = std::collections::HashSet::new();
        let cpu0 = thread_cpu();
        let start = Instant::now();
        h.sync(&cfg);
        let (mut n, mut failed, mut ups, mut lat) = (0u64, 0u64, 0u64, Vec::new());
        loop {
            tokio::select! {
                Some(r) = rx.recv() => {
                    n += 1;
                    match &r.result {
                        Ok(d) => lat.push(*d),
                        Err(_) => failed += 1,
                    }
                    if let Some(t) = h.record(r, |k| up.contains(k)) {
                        ups += 1;
                        if t.healthy {
                            up.insert(t.key);
                        } else {
                            up.remove(&t.key);
                        }
                    }
                }
                _ = tokio::time::sleep_until((start + WINDOW).into()) => break,
            }
        }
        (n, failed, ups, lat, thread_cpu() - cpu0)
    });
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    println!(
        "{{\"bench\":\"{name}\",\"reals\":{REALS},\"interval_ms\":1000,\"seconds\":{},\"probes\":{probes},\"failed\":{failed},\"transitions\":{ups},\"latency_us_p50\":{},\"latency_us_p99\":{},\"cpu_ms\":{},\"cpu_percent_of_one_core\":{:.1},\"cpu_us_per_probe\":{:.1}}}",
        WINDOW.as_secs(),
        pct(0.5),
        pct(0.99),
        cpu.as_millis(),
        100.0 * cpu.as_secs_f64() / WINDOW.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / probes.max(1) as f64
    );
}

/// The prober over TCP and over HTTP, against one local server.
fn all_probes() {
    // Each probe holds a socket for a moment; all 1,000 may be open at once.
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let server = ProbeServer::start();
    probes(
        "health_probes",
        "{ interval: 1s, timeout: 500ms, rise: 1, fall: 1 }",
        &server,
    );
    probes(
        "health_probes_http",
        "{ type: http, path: /health, interval: 1s, timeout: 500ms, rise: 1, fall: 1 }",
        &server,
    );
}

/// Prints whether the kernel's BPF statistics are on (`kernel.bpf_stats_enabled`), and
/// says on stderr that every figure pays for them if they are: each run then reads
/// the clock twice (70 ns more a run on the development VM, docs/testing.md).
fn testrun_setup() {
    let on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|s| s.trim() == "1");
    if on {
        eprintln!(
            "bench: kernel.bpf_stats_enabled is 1: every BPF_PROG_TEST_RUN figure below \
             includes the statistics' clock reads; set it to 0 for the program's cost"
        );
    }
    println!("{{\"bench\":\"testrun_setup\",\"bpf_stats_enabled\":{on}}}");
}

fn line(name: &str, ns: f64, repeat: u32) {
    println!("{{\"bench\":\"{name}\",\"ns_per_packet\":{ns:.1},\"repeat\":{repeat}}}");
}

/// Loads the object with a connection table of 4,194,304 entries (the largest
/// `flow_table_size`) and prints what each sized map costs in kernel memory, from
/// the maps' own fdinfo (`memlock`), with the bytes per entry.
fn memory() {
    const ENTRIES: u32 = 1 << 22;
    let start = std::time::Instant::now();
    let ebpf = xdpvs::dataplane::bpf::load(xdpvs::dataplane::LoadOptions {
        flow_entries: ENTRIES,
        ring_count: 16,
    })
    .expect("load with 4,194,304 flow entries");
    let took = start.elapsed();
    let mut total = 0u64;
    for fd in std::fs::read_dir("/proc/self/fdinfo")
        .expect("fdinfo")
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(entries), Some(memlock)) = (field("max_entries:"), field("memlock:")) else {
            continue;
        };
        if entries != u64::from(ENTRIES) {
            continue;
        }
        total += memlock;
        println!(
            "{{\"bench\":\"memory_map\",\"key_size\":{},\"value_size\":{},\"entries\":{entries},\"memlock_bytes\":{memlock},\"bytes_per_entry\":{:.0}}}",
            field("key_size:").unwrap_or(0),
            field("value_size:").unwrap_or(0),
            memlock as f64 / entries as f64
        );
    }
    println!(
        "{{\"bench\":\"memory_flow_tables\",\"entries\":{ENTRIES},\"memlock_bytes\":{total},\"bytes_per_connection\":{:.0},\"load_ms\":{}}}",
        total as f64 / f64::from(ENTRIES),
        took.as_millis()
    );
    drop(ebpf);
}

fn main() {
    tests::signals::stop_on_signals();
    run();
    tests::signals::exit_if_stopped();
}

/// Every part of the bench, or the one picked; returns early when a signal asks it to
/// stop, its labs and fixtures dropped on the way out.
fn run() {
    // `cargo xtask bench --live`: the live bench alone.
    if std::env::args().any(|a| a == "--live") {
        return tests::live::run();
    }
    if tests::scale::only() {
        return tests::scale::run();
    }
    memory();
    all_probes();
    if tests::signals::stopping() {
        return;
    }
    let mut y = String::from("interfaces: [lo]\ntunnel_source: [10.0.1.1, 'fd00:1::1']\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    real_servers:\n");
    for i in 1..=10 {
        y.push_str(&format!("      - address: 10.0.1.{i}\n"));
    }
    y.push_str("  - name: dns\n    address: 10.0.0.100\n    port: 53\n    protocol: udp\n    real_servers:\n");
    for i in 1..=10 {
        y.push_str(&format!("      - address: 10.0.1.{i}\n"));
    }
    testrun_setup();
    let mut f = Fixture::new(&y);
    let client = [192, 0, 2, 7];
    let vip = [10, 0, 0, 100];

    let frame = V4Packet::tcp(client, 1000, vip, 80).build();
    line(
        "floor_xdp_pass",
        f.run_pass(&frame, REPEAT).ns as f64,
        REPEAT,
    );
    let other = V4Packet::tcp(client, 1000, [10, 0, 0, 101], 80).build();
    line(
        "non_vip",
        f.run_n(lb_common::maps::PROG_LB, &other, REPEAT).ns as f64,
        REPEAT,
    );
    f.run(&frame); // establish
    line(
        "vip_established",
        f.run_n(lb_common::maps::PROG_LB, &frame, REPEAT).ns as f64,
        REPEAT,
    );
    line("vip_established_single", single(&f, &frame), 1);

    let mut floor = 0u64;
    let mut new = 0u64;
    for i in 0..NEW_FLOWS {
        let src = [198, 18, (i >> 16) as u8, (i >> 8) as u8];
        let p = V4Packet::tcp(src, (i & 0xffff) as u16 | 1024, vip, 80).build();
        floor += f.run_pass(&p, 1).ns;
        new += f.run(&p).ns;
    }
    line(
        "floor_xdp_pass_single",
        floor as f64 / f64::from(NEW_FLOWS),
        1,
    );
    line("vip_new_flow", new as f64 / f64::from(NEW_FLOWS), 1);
    if tests::signals::stopping() {
        return;
    }
    // Spoofed SYNs: each from a new source, forwarded without a table write.
    let mut syn = 0u64;
    for i in 0..NEW_FLOWS {
        let src = [198, 19, (i >> 16) as u8, (i >> 8) as u8];
        let p = V4Packet {
            tcp_flags: tests::packet::TCP_SYN,
            ..V4Packet::tcp(src, (i & 0xffff) as u16 | 1024, vip, 80)
        }
        .build();
        syn += f.run(&p).ns;
    }
    line("vip_syn_spoofed", syn as f64 / f64::from(NEW_FLOWS), 1);
    // UDP by direct routing (decision 0017): a flow's first packet leaves its mark in
    // UDP_SEEN and writes no entry; its second finds the mark and records the flow.
    let (mut first, mut second) = (0u64, 0u64);
    for i in 0..NEW_FLOWS {
        let src = [198, 20, (i >> 16) as u8, (i >> 8) as u8];
        let p = V4Packet::udp(src, (i & 0xffff) as u16 | 1024, vip, 53).build();
        first += f.run(&p).ns;
        second += f.run(&p).ns;
    }
    line(
        "vip_udp_first_packet",
        first as f64 / f64::from(NEW_FLOWS),
        1,
    );
    line(
        "vip_udp_second_packet",
        second as f64 / f64::from(NEW_FLOWS),
        1,
    );
    // What `xdpvs status` and each /metrics scrape pay to count flows per real.
    let start = std::time::Instant::now();
    let flows = f
        .rec
        .dataplane()
        .flow_reader()
        .and_then(FlowReader::count)
        .expect("walking FLOWS");
    let took = start.elapsed();
    let entries: u64 = flows.values().sum();
    println!(
        "{{\"bench\":\"flow_table_walk\",\"entries\":{entries},\"ms\":{:.1},\"ns_per_entry\":{:.0}}}",
        took.as_secs_f64() * 1e3,
        took.as_nanos() as f64 / entries.max(1) as f64
    );
    // With a NAT virtual server, a packet for no VIP is also looked up as a NAT reply.
    y.push_str(ROUTED);
    f.apply_config(&y);
    line(
        "non_vip_nat_configured",
        f.run_n(lb_common::maps::PROG_LB, &other, REPEAT).ns as f64,
        REPEAT,
    );
    routed(&f);
    drop(f);
    for part in [fuzz, tests::scale::run, tests::live::run] {
        if tests::signals::stopping() {
            return;
        }
        part();
    }
}

/// The fuzzer's long run: ten times the test's packets, its figures as one line.
/// Fails (panics) on any broken invariant, as the test does.
fn fuzz() {
    const PACKETS: u64 = 10_000_000;
    // The fixture enters a namespace of its own: run it on a thread of its own.
    std::thread::spawn(|| {
        let mut fuzzer = tests::fuzz::Fuzzer::new();
        let start = std::time::Instant::now();
        let r = fuzzer.run(PACKETS, 0xfeed_f00d);
        let secs = start.elapsed().as_secs_f64();
        assert!(r.problems.is_empty(), "fuzz: {}", r.problems.join("\n"));
        let fwd: u64 = r.forwarded.values().sum();
        println!(
            "{{\"bench\":\"fuzz\",\"packets\":{},\"forwarded\":{fwd},\"problems\":0,\"seconds\":{secs:.1},\"packets_per_s\":{:.0}}}",
            r.runs,
            r.runs as f64 / secs
        );
    })
    .join()
    .expect("fuzz run");
}
