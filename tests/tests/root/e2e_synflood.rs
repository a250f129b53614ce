//! Issue 15, the SYN-flood guard end to end: a spoofed SYN flood from the client's
//! namespace (random sources, bounded in count and time) through a direct-routing VIP,
//! while a long-lived stream and 200 new connections run. The stream must survive, at
//! least 198 of the 200 connections succeed, the connection table must not fill with
//! the flood, and the flood must have switched SYNs past the connection table
//! (decision 0025). Twice, at the two rates the issue names:
//! - paced at 100,000 SYNs a second (the flood rate of the issue's own figures) by the
//!   live bench's paced sender (`tests::paced`, within its bounds);
//! - from trafgen as fast as it sends (the live bench's generator, within its bounds):
//!   about 140,000 a second on the AMD EPYC development VM, 560,000-720,000 on the
//!   Intel one of 2026-11-24.
//!
//! Both send Ethernet frames from random sources of 198.18.0.0/16, pinned to the last
//! CPU, the path of every frame in softirq on that CPU.

use std::time::{Duration, Instant};

use tests::{
    daemon::Daemon,
    lab::{Family, Kind, Lab, Spec},
    netns, paced, trafgen,
};

/// The paced flood's rate, SYNs a second.
const PACE_PPS: u32 = 100_000;
/// It must reach this share of its pace, or it is not the flood the test is about.
const PACE_REACHED: f64 = 0.8;
/// The web virtual server's probes: the defaults' timeout and fall (1 s, 3), rise 1 so
/// that the lab serves at once. Direct routing hands the flood's SYNs to the reals,
/// whose stacks share the machine's two CPUs with trafgen; at the 560,000-720,000
/// SYNs a second trafgen sends on a faster VM, a real's probe can take longer than
/// the labs' usual 200 ms twice running, and the real then leaves the table with its
/// flows, the stream's among them (seen once in CI, 2026-11-24): health checking at
/// work, not the SYN guard this test is about.
const PROBES: &str = "{ interval: 1s, timeout: 1s, rise: 1, fall: 3 }";

/// Where a flood comes from.
#[derive(Clone, Copy, Debug)]
enum Flooder {
    /// A raw socket, at this many SYNs a second.
    Paced(u32),
    /// trafgen, as fast as it sends.
    Trafgen,
}

#[test]
fn a_spoofed_syn_flood_of_100k_a_second_fills_nothing_and_breaks_nothing() {
    flood_while_serving(Flooder::Paced(PACE_PPS));
}

#[test]
fn a_spoofed_syn_flood_at_trafgen_s_full_rate_fills_nothing_and_breaks_nothing() {
    flood_while_serving(Flooder::Trafgen);
}

/// Returns: the last CPU, which the floods send from.
fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// A flood in progress; stopped on drop (each sender stops itself), so that a failed
/// assertion leaves no flood running into the next test.
enum Flood {
    Paced(paced::Run),
    Trafgen { run: trafgen::Run, started: Instant },
}

impl Flood {
    /// Starts `flooder` against the VIP of `lab`.
    fn start(lab: &Lab, flooder: Flooder) -> Flood {
        let std::net::IpAddr::V4(vip) = lab.vip else {
            unreachable!("a v4 lab")
        };
        let frame = trafgen::Frame {
            dst_mac: netns::mac(&lab.lb, &lab.lb_ifs[0]),
            src: trafgen::Src::Random,
            dst: vip,
            sport: trafgen::Src::Random,
            dport: 80,
            l4: trafgen::L4::TcpSyn,
        };
        let dev = format!("{}c", lab.instance);
        match flooder {
            Flooder::Paced(pps) => {
                let mac = netns::mac(&lab.client, &dev);
                Flood::Paced(paced::start(
                    &lab.client,
                    &dev,
                    &frame,
                    mac,
                    last_cpu(),
                    pps,
                ))
            }
            Flooder::Trafgen => Flood::Trafgen {
                run: trafgen::start(&lab.client, &dev, &frame, last_cpu(), &lab.dir, "flood"),
                started: Instant::now(),
            },
        }
    }

    /// Stops it. Returns: the SYNs sent, and the seconds they took (trafgen's: from
    /// its start to its stop).
    fn stop(&mut self) -> (u64, f64) {
        match self {
            Flood::Paced(run) => {
                let sent = run.stop();
                (sent.frames, sent.secs)
            }
            Flood::Trafgen { run, started } => {
                let secs = started.elapsed().as_secs_f64();
                run.stop();
                (run.sent(), secs)
            }
        }
    }
}

/// Returns: the connection table's entries, summed over the web virtual server's
/// reals, per `xdpvs status --json`.
fn flows(lab: &Lab) -> u64 {
    lab.status()["virtual_servers"][0]["reals"]
        .as_array()
        .expect("reals")
        .iter()
        .map(|r| r["flows"].as_u64().unwrap_or(0))
        .sum()
}

/// Returns: the SYNs balanced past the connection table so far, per `xdpvs status`.
fn syns_past(lab: &Lab) -> u64 {
    lab.status()["syns_past_flow_table"]
        .as_u64()
        .expect("syns_past_flow_table")
}

/// Floods the VIP from `flooder` while a stream and 200 new connections run, and
/// checks what the module doc says.
fn flood_while_serving(flooder: Flooder) {
    let lab = Lab::new(Kind::Dr, Family::V4, 3);
    let cfg = lab.write_spec(&Spec {
        health: Some(PROBES),
        ..Spec::default()
    });
    let d = Daemon::start(&lab.lb, &cfg);
    lab.wait_serving(&[0, 1, 2], &d);
    // The daemon's first rebuild of the connection table's filter makes it complete
    // (decision 0026): from then on the flood's SYNs and the new connections' first
    // packets skip the table's lookup where the filter rules them out.
    let filter = lab.map_pin(lb_common::maps::FLOW_FILTER);
    let complete = || {
        let c = tests::pins::element(&filter, 0);
        let c = u64::from_ne_bytes(c.try_into().expect("a u64 control word"));
        c & lb_common::maps::FLOW_FILTER_COMPLETE != 0
    };
    assert!(
        tests::wait_for(Duration::from_secs(10), complete),
        "the connection table's filter was not made complete"
    );
    let stream = lab.stream();
    let before = flows(&lab);
    let past_before = syns_past(&lab);

    let started = Instant::now();
    let mut flood = Flood::start(&lab, flooder);
    // The connections start once the flood has reached the balancer and switched its
    // SYNs past the table (the paced sender builds its SYNs first).
    assert!(
        tests::wait_for(Duration::from_secs(30), || syns_past(&lab) > past_before),
        "the flood did not reach the balancer within 30 s"
    );
    // While it floods: 200 new connections, one request each, one every 25 ms.
    let traffic = lab.traffic_every(Duration::from_millis(25), Duration::from_secs(2), 200);
    assert!(
        tests::wait_for(Duration::from_secs(30), || traffic.samples().len() >= 200),
        "200 requests not done within 30 s"
    );
    let answers: Vec<_> = traffic.finish().into_iter().map(|s| s.1).collect();
    let during = started.elapsed();
    let (sent, secs) = flood.stop();
    let rate = sent as f64 / secs.max(f64::MIN_POSITIVE);
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    let after = flows(&lab);
    let past = syns_past(&lab) - past_before;
    let chunks = stream.chunks();
    let stream_failed = stream.failed();
    let result = stream.finish();
    println!(
        "flood ({flooder:?}): {sent} spoofed SYNs in {secs:.1} s ({rate:.0}/s); {ok}/200 connections answered in {} ms; connection table {before} -> {after} entries; {past} SYNs past the table; stream {chunks} chunks",
        during.as_millis()
    );
    assert!(
        sent >= 10_000,
        "the flood sent only {sent} SYNs (as its sender counts them): no flood to speak of"
    );
    if let Flooder::Paced(pps) = flooder {
        assert!(
            rate >= PACE_REACHED * f64::from(pps),
            "the flood ran at {rate:.0} SYNs a second, not the {pps} it is paced at"
        );
    }
    assert!(ok >= 198, "{ok}/200 connections answered: {answers:?}");
    // Far more than syn_flood_rate (10,000/s by default) on the CPU that takes the
    // flood: most of its SYNs went past the connection table (decision 0025).
    assert!(
        past >= sent / 2,
        "{past} of {sent} SYNs skipped the connection table during the flood"
    );
    assert!(
        after < 10_000,
        "the connection table filled with the flood: {after} entries"
    );
    assert!(
        !stream_failed && result.is_ok(),
        "the stream broke during the flood: {result:?}"
    );
}
