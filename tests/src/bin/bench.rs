//! `cargo xtask bench`: per-packet cost of the XDP program under BPF_PROG_TEST_RUN,
//! printed as JSON lines. A benchmark, not a test: it asserts nothing about speed.
//!
//! - `floor_xdp_pass`: the do-nothing program, the cost of any XDP program here;
//! - `non_vip`: a TCP packet for an address that is no VIP (passed);
//! - `vip_established`: a VIP packet whose flow is in the connection table;
//! - `vip_new_flow`: a VIP packet of a flow never seen (hash, Maglev, table insert).
//!   The kernel repeats one packet, so after the first run a flow is established;
//!   new flows are measured one run per distinct packet instead, and reported beside a
//!   floor measured the same way (`floor_xdp_pass_single`), since a single run carries
//!   the timer's own cost.

use tests::{fixture::Fixture, packet::V4Packet};

const REPEAT: u32 = 1_000_000;
const NEW_FLOWS: u32 = 100_000;

fn line(name: &str, ns: f64, repeat: u32) {
    println!("{{\"bench\":\"{name}\",\"ns_per_packet\":{ns:.1},\"repeat\":{repeat}}}");
}

fn main() {
    let mut y = String::from("interfaces: [lo]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    real_servers:\n");
    for i in 1..=10 {
        y.push_str(&format!("      - address: 10.0.1.{i}\n"));
    }
    let f = Fixture::new(&y);
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
}
