//! Scratch: quick per-packet figures while working on the data path (not committed).
use tests::{fixture::Fixture, packet::V4Packet};

fn main() {
    let size: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(262144);
    let n: u32 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(100_000);
    let mut y = format!("interfaces: [lo]\nflow_table_size: {size}\ntunnel_source: [10.0.1.1, 'fd00:1::1']\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: udp\n    real_servers:\n");
    for i in 1..=10 {
        y.push_str(&format!("      - address: 10.0.1.{i}\n"));
    }
    y.push_str(
        "  - { name: nat4, address: 10.0.0.110, port: 80, protocol: udp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }, { address: 10.0.1.12, port: 8080 }] }
  - { name: tun4, address: 10.0.0.111, port: 80, protocol: udp, method: tunnel,
      real_servers: [{ address: 10.0.9.11 }, { address: 10.0.9.12 }] }
",
    );
    let f = Fixture::new(&y);
    let vip = [10, 0, 0, 100];
    let frame = V4Packet::udp([192, 0, 2, 7], 1000, vip, 80).build();
    f.run(&frame);
    println!("pass_repeat {}", f.run_pass(&frame, 1_000_000).ns);
    println!(
        "dr_est_repeat {}",
        f.run_n(lb_common::maps::PROG_LB, &frame, 1_000_000).ns
    );
    for (name, vip) in [
        ("dr", [10, 0, 0, 100]),
        ("nat", [10, 0, 0, 110]),
        ("tun", [10, 0, 0, 111]),
    ] {
        let mut floor = 0u64;
        let mut new = 0u64;
        for i in 0..n {
            let src = [198, 18, (i >> 16) as u8, (i >> 8) as u8];
            let p = V4Packet::udp(src, (i & 0xffff) as u16 | 1024, vip, 80).build();
            floor += f.run_pass(&p, 1).ns;
            new += f.run(&p).ns;
        }
        let mut est = 0u64;
        let mut efloor = 0u64;
        for i in 0..n {
            let src = [198, 18, 0, 0];
            let p = V4Packet::udp(src, (i & 0x7) as u16 | 1024, vip, 80).build();
            efloor += f.run_pass(&p, 1).ns;
            est += f.run(&p).ns;
        }
        println!(
            "{name}: new {:.0} (floor {:.0}) est {:.0} (floor {:.0}) entries {}",
            new as f64 / n as f64,
            floor as f64 / n as f64,
            est as f64 / n as f64,
            efloor as f64 / n as f64,
            f.flow_entries()
        );
    }
}
