//! `cargo xtask bench`: per-packet cost of the XDP program under BPF_PROG_TEST_RUN,
//! printed as JSON lines. A benchmark, not a test: it asserts nothing about speed.
//!
//! - `floor_xdp_pass`: the do-nothing program, the cost of any XDP program here;
//! - `non_vip`: a TCP packet for an address that is no VIP (passed); and
//!   `non_vip_nat_configured`, the same once a NAT virtual server exists (it is then
//!   also looked up as a possible NAT reply);
//! - `vip_established`: a VIP packet whose flow is in the connection table;
//! - `vip_new_flow`: a VIP packet of a flow never seen (hash, Maglev, table insert).
//!   The kernel repeats one packet, so after the first run a flow is established;
//!   new flows are measured one run per distinct packet instead, and reported beside a
//!   floor measured the same way (`floor_xdp_pass_single`), since a single run carries
//!   the timer's own cost.
//! - `nat_request`, `nat_reply`, `tunnel` (each `_v4` and `_v6`): established flows of
//!   NAT and tunnel virtual servers. These programs rewrite the frame, and the kernel
//!   re-runs a repeated packet on the already rewritten bytes, so they are measured
//!   like new flows: one run per packet, averaged, beside `floor_xdp_pass_single`.

use tests::{
    fixture::Fixture,
    packet::{V4Packet, V6Packet},
};

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

fn line(name: &str, ns: f64, repeat: u32) {
    println!("{{\"bench\":\"{name}\",\"ns_per_packet\":{ns:.1},\"repeat\":{repeat}}}");
}

fn main() {
    let mut y = String::from("interfaces: [lo]\ntunnel_source: [10.0.1.1, 'fd00:1::1']\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    real_servers:\n");
    for i in 1..=10 {
        y.push_str(&format!("      - address: 10.0.1.{i}\n"));
    }
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
    // With a NAT virtual server, a packet for no VIP is also looked up as a NAT reply.
    y.push_str(ROUTED);
    f.apply_config(&y);
    line(
        "non_vip_nat_configured",
        f.run_n(lb_common::maps::PROG_LB, &other, REPEAT).ns as f64,
        REPEAT,
    );
    routed(&f);
}
