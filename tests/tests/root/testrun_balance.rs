//! The XDP program under BPF_PROG_TEST_RUN: crafted frames in, verdict and bytes out.
//! Maps are filled through the daemon's own code (config -> Reconciler -> maps).

use std::net::IpAddr;

use lb_common::{reason, FlowKey, PROTO_TCP, PROTO_UDP};
use tests::{
    cpus,
    fixture::{real_mac, Fixture, LB_MAC},
    packet::{V4Packet, TCP_ACK, TCP_SYN},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [10, 0, 0, 100];
const CLIENT: [u8; 4] = [192, 0, 2, 7];

fn yaml(reals: &[&str]) -> String {
    let mut y = String::from(
        "interfaces: [lo]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 65537\n    real_servers:\n",
    );
    for r in reals {
        y.push_str(&format!("      - address: {r}\n"));
    }
    y.push_str("  - name: dns\n    address: 10.0.0.100\n    port: 53\n    protocol: udp\n    real_servers:\n      - address: 10.0.1.53\n");
    y
}

fn three() -> Fixture {
    Fixture::new(&yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]))
}

fn key(sport: u16) -> FlowKey {
    FlowKey::new(
        IpAddr::from(CLIENT),
        sport,
        IpAddr::from(VIP),
        80,
        PROTO_TCP,
    )
}

/// Checks a forwarded frame: equal to the input but for the two MACs.
fn assert_dr_rewrite(input: &[u8], out: &[u8], real: IpAddr) {
    assert_eq!(out.len(), input.len(), "length unchanged");
    assert_eq!(&out[0..6], &real_mac(real), "destination MAC is the real's");
    assert_eq!(&out[6..12], &LB_MAC, "source MAC is the egress interface's");
    assert_eq!(
        &out[12..],
        &input[12..],
        "every byte after the MACs unchanged"
    );
}

#[test]
fn vip_syn_is_sent_to_the_predicted_real_with_only_macs_changed() {
    let f = three();
    for sport in [1000u16, 2000, 3000, 40000, 65535] {
        let frame = V4Packet::tcp(CLIENT, sport, VIP, 80).build();
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_TX, "sport {sport}");
        assert_dr_rewrite(&frame, &r.out, f.predict("web", &key(sport)));
    }
    assert_eq!(f.verdicts(reason::FWD_TX), 5);
}

/// Returns: a TCP segment from `src:sport` to VIP:80 with `flags`.
fn segment(src: [u8; 4], sport: u16, flags: u8) -> Vec<u8> {
    V4Packet {
        tcp_flags: flags,
        ..V4Packet::tcp(src, sport, VIP, 80)
    }
    .build()
}

#[test]
fn a_syn_writes_no_state_and_the_packet_after_it_does() {
    let f = three();
    // 10,000 SYNs from as many spoofed sources: each forwarded to its Maglev real,
    // none recorded.
    for i in 0..10_000u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let frame = segment(src, 1024 + (i % 50_000) as u16, TCP_SYN);
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_TX, "SYN {i} forwarded");
    }
    assert_eq!(
        f.flow_entries(),
        0,
        "the SYN flood left no connection entry"
    );
    assert_eq!(f.new_flows(), 0, "no SYN counted as a new connection");

    // A client's SYN, then its ACK: the same real both times; the ACK records it.
    let syn = segment(CLIENT, 5555, TCP_SYN);
    let first = f.run(&syn);
    assert_dr_rewrite(&syn, &first.out, f.predict("web", &key(5555)));
    assert_eq!(f.flow_entries(), 0);
    let ack = segment(CLIENT, 5555, TCP_ACK);
    let r = f.run(&ack);
    assert_eq!(
        r.out[0..6],
        first.out[0..6],
        "the ACK goes where the SYN went"
    );
    assert_eq!(f.flow_entries(), 1, "the ACK recorded the flow");
    assert_eq!(f.new_flows(), 1, "counted once, at the ACK");
    // SYN+ACK, RST, FIN: not openings, recorded like any segment.
    for (sport, flags) in [
        (5556, TCP_SYN | TCP_ACK),
        (5557, 0x04),
        (5558, 0x01 | TCP_ACK),
    ] {
        f.run(&segment(CLIENT, sport, flags));
    }
    assert_eq!(f.flow_entries(), 4);
}

/// During a SYN flood (decision 0025) opening SYNs are balanced without looking up
/// the connection table, and only then: with `syn_flood_rate: 10` (one SYN per CPU in
/// a 100 ms window), the first SYN of a 5-tuple whose entry names a real that Maglev
/// no longer gives it to goes where the entry says, the SYNs past the first go by
/// Maglev, and none writes an entry; with `syn_flood_rate: 0` none skips the table.
#[test]
fn during_a_syn_flood_syns_skip_the_connection_table_and_only_then() {
    let allowed = cpus::allowed();
    // One CPU: the SYNs are counted per CPU.
    cpus::only_on(&allowed[..1]);
    let flooding = |reals: &[&str]| format!("syn_flood_rate: 10\n{}", yaml(reals));
    let mut f = Fixture::new(&flooding(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]));
    let ports = 30000..30400u16;
    for sport in ports.clone() {
        assert_eq!(f.run(&segment(CLIENT, sport, TCP_ACK)).action, XDP_TX);
    }
    let entries = f.flow_entries();
    assert_eq!(entries, ports.len() as u64);
    let added: IpAddr = "10.0.1.14".parse().unwrap();
    f.apply_config(&flooding(&[
        "10.0.1.11",
        "10.0.1.12",
        "10.0.1.13",
        "10.0.1.14",
    ]));
    // A recorded flow that Maglev now gives to the added real: its entry still names
    // one of the first three, all up.
    let sport = ports
        .clone()
        .find(|&p| f.predict("web", &key(p)) == added)
        .expect("a recorded flow Maglev moved to the added real");
    let ack = segment(CLIENT, sport, TCP_ACK);
    let entry_real = f.run(&ack).out[0..6].to_vec();
    assert_ne!(entry_real, real_mac(added), "the entry keeps its real");
    let syn = segment(CLIENT, sport, TCP_SYN);
    let first = f.run(&syn);
    assert_eq!(
        first.out[0..6],
        entry_real[..],
        "the first SYN of the window looks the table up"
    );
    assert_eq!(f.syns_past_table(), 0);
    // Within a window or across one boundary (never two in microseconds), the third
    // and fourth SYN of the run count more than one: they skip the table.
    let outs: Vec<Vec<u8>> = (0..3).map(|_| f.run(&syn).out).collect();
    for (i, out) in outs.iter().enumerate() {
        let by_maglev = out[0..6] == real_mac(added);
        assert!(
            by_maglev || (i == 0 && out[0..6] == entry_real[..]),
            "SYN {} went neither by Maglev nor, as the first of a window, by its entry",
            i + 2
        );
        if by_maglev {
            assert_dr_rewrite(&syn, out, added);
        }
    }
    let skipped = outs.iter().filter(|o| o[0..6] == real_mac(added)).count() as u64;
    assert_eq!(f.syns_past_table(), skipped, "each skip counted");
    assert_eq!(f.flow_entries(), entries, "no SYN wrote an entry");
    // The stale entry still takes the ACK: what a SYN flood costs a 5-tuple reused
    // while its entry names another real that is up (decision 0025).
    assert_eq!(f.run(&ack).out[0..6], entry_real[..]);

    // syn_flood_rate 0: never.
    f.apply_config(&format!(
        "syn_flood_rate: 0\n{}",
        yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13", "10.0.1.14"])
    ));
    for _ in 0..20 {
        assert_eq!(f.run(&syn).out[0..6], entry_real[..], "the table looked up");
    }
    assert_eq!(f.syns_past_table(), skipped);
    cpus::only_on(&allowed);
}

/// The connection table's filter (decision 0026) never hides a flow the table holds:
/// flows whose bits were never set (a filter cleared, as a release without it leaves
/// the table) are found by the daemon's walk, one recorded after the rebuild by the
/// bit its insert set; each is a flow Maglev no longer gives to its real, so only its
/// entry brings it there. A flow never recorded is not held.
#[test]
fn the_flow_filter_holds_every_recorded_flow_and_no_other() {
    let mut f = Fixture::new(&yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]));
    let mut filter = f.flow_filter();
    let ports = 30000..30400u16;
    for sport in ports.clone() {
        assert_eq!(f.run(&segment(CLIENT, sport, TCP_ACK)).action, XDP_TX);
    }
    let four = ["10.0.1.11", "10.0.1.12", "10.0.1.13", "10.0.1.14"];
    f.apply_config(&yaml(&four));
    let added: IpAddr = "10.0.1.14".parse().unwrap();
    let moved = ports
        .clone()
        .find(|&p| f.predict("web", &key(p)) == added)
        .expect("a recorded flow Maglev moved to the added real");
    let ack = |sport| segment(CLIENT, sport, TCP_ACK);
    let before = f.run(&ack(moved)).out[0..6].to_vec();
    assert_ne!(before, real_mac(added), "found in the table");
    assert!(!filter.state().1, "not complete before a rebuild");

    filter.clear();
    assert!(!filter.holds(&key(moved)));
    let rebuilt = filter.rebuild().expect("rebuild");
    assert_eq!(
        rebuilt.flows as u64,
        f.flow_entries(),
        "the walk found every flow"
    );
    assert!(filter.state().1, "complete");
    assert!(filter.holds(&key(moved)), "the walk set the flow's byte");
    assert_eq!(
        f.run(&ack(moved)).out[0..6],
        before[..],
        "a flow recorded before the filter is still found"
    );

    // Recorded now (its insert sets the byte), then moved away by a drain.
    let fresh = (31000..32000u16)
        .find(|&p| f.predict("web", &key(p)) == added)
        .expect("a new flow for the added real");
    assert!(!filter.holds(&key(fresh)), "never recorded, not held");
    assert_eq!(f.run(&ack(fresh)).out[0..6], real_mac(added));
    assert!(filter.holds(&key(fresh)), "its insert set the byte");
    f.apply_config(&yaml(&[
        "10.0.1.11",
        "10.0.1.12",
        "10.0.1.13",
        "10.0.1.14\n        weight: 0",
    ]));
    assert_ne!(f.predict("web", &key(fresh)), added);
    assert_eq!(
        f.run(&ack(fresh)).out[0..6],
        real_mac(added),
        "a flow recorded after the rebuild is found"
    );
    // A second rebuild, into the other half, holds them both.
    let again = filter.rebuild().expect("rebuild");
    assert_eq!(again.flows as u64, f.flow_entries());
    assert!(filter.holds(&key(moved)) && filter.holds(&key(fresh)));
    assert_eq!(f.run(&ack(moved)).out[0..6], before[..]);
}

/// A draining real (weight 0) keeps its connections, is sent no SYN, and a SYN flood
/// while it drains still writes no entry.
#[test]
fn a_draining_real_keeps_its_connections_and_no_syn_writes_an_entry() {
    let mut f = three();
    let drained: IpAddr = "10.0.1.13".parse().unwrap();
    let sport = (30000..31000)
        .find(|&s| f.predict("web", &key(s)) == drained)
        .expect("a port whose flow lands on .13");
    let ack = segment(CLIENT, sport, TCP_ACK);
    assert_eq!(f.run(&ack).out[0..6], real_mac(drained));
    assert_eq!(f.flow_entries(), 1);

    f.apply_config(&yaml(&[
        "10.0.1.11",
        "10.0.1.12",
        "10.0.1.13\n        weight: 0",
    ]));
    assert_eq!(
        f.run(&ack).out[0..6],
        real_mac(drained),
        "the connection stays on the draining real"
    );
    for i in 0..2_000u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let r = f.run(&segment(src, 1024 + i as u16, TCP_SYN));
        assert_eq!(r.action, XDP_TX, "SYN {i} forwarded");
        assert_ne!(
            r.out[0..6],
            real_mac(drained),
            "SYN {i} sent to the draining real"
        );
    }
    assert_eq!(f.flow_entries(), 1, "no SYN wrote an entry");
    // The client's next connection opens on another real and is recorded at its ACK.
    let next = segment(CLIENT, sport + 1000, TCP_ACK);
    assert_ne!(f.run(&next).out[0..6], real_mac(drained));
    assert_eq!(f.flow_entries(), 2);
}

/// A UDP virtual server by direct routing with `reals` (each line a real's address,
/// maybe with more of its fields), and `extra` lines of its own (e.g. persistence).
fn udp_yaml(reals: &[&str], extra: &str) -> String {
    let mut y = format!(
        "interfaces: [lo]\nvirtual_servers:\n  - name: dns\n    address: 10.0.0.100\n    port: 53\n    protocol: udp\n    table_size: 65537\n{extra}    real_servers:\n",
    );
    for r in reals {
        y.push_str(&format!("      - address: {r}\n"));
    }
    y
}

fn udp_key(src: [u8; 4], sport: u16) -> FlowKey {
    FlowKey::new(IpAddr::from(src), sport, IpAddr::from(VIP), 53, PROTO_UDP)
}

/// Returns: a port from which `src`'s UDP flow lands on `real` by Maglev.
fn udp_port_to(f: &Fixture, src: [u8; 4], from: u16, real: IpAddr) -> u16 {
    (from..from + 1000)
        .find(|&s| f.predict("dns", &udp_key(src, s)) == real)
        .expect("a port whose flow lands on the real")
}

/// A UDP flow of a direct-routing virtual server enters the connection table with its
/// second packet (decision 0017): a flood of one-packet flows writes no entry, each
/// still reaching its Maglev real and counted as a new flow once; a flow's second
/// packet records it, and from then on it keeps its real when the table changes,
/// while an unrecorded flow of the same real follows the table.
#[test]
fn a_udp_flow_is_recorded_at_its_second_packet() {
    let reals = ["10.0.1.11", "10.0.1.12", "10.0.1.13"];
    let mut f = Fixture::new(&udp_yaml(&reals, ""));
    for i in 0..10_000u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let sport = 1024 + i as u16;
        let frame = V4Packet::udp(src, sport, VIP, 53).build();
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_TX, "datagram {i} forwarded");
        assert_dr_rewrite(&frame, &r.out, f.predict("dns", &udp_key(src, sport)));
    }
    assert_eq!(f.flow_entries(), 0, "one-packet flows left no entry");
    assert_eq!(f.new_flows(), 10_000, "each counted as a new flow");

    // Two flows whose Maglev real is .13, so that draining .13 would move them.
    let moved: IpAddr = "10.0.1.13".parse().unwrap();
    let sport = udp_port_to(&f, CLIENT, 20000, moved);
    let frame = V4Packet::udp(CLIENT, sport, VIP, 53).build();
    let other = [198, 51, 100, 9];
    let next = V4Packet::udp(other, udp_port_to(&f, other, 21000, moved), VIP, 53).build();
    assert_eq!(f.run(&frame).out[0..6], real_mac(moved));
    assert_eq!(f.flow_entries(), 0, "its first packet wrote nothing");
    assert_eq!(f.run(&frame).out[0..6], real_mac(moved));
    assert_eq!(f.flow_entries(), 1, "its second packet recorded it");
    assert_eq!(f.new_flows(), 10_001, "counted once, at its first packet");
    let r = f.run(&next);
    assert_eq!(
        r.out[0..6],
        real_mac(moved),
        "the other flow's first packet"
    );
    assert_eq!(f.flow_entries(), 1, "not recorded yet");

    // .13 drains: the recorded flow stays; the unrecorded one follows the new table
    // and is recorded there at its next packet.
    f.apply_config(&udp_yaml(
        &["10.0.1.11", "10.0.1.12", "10.0.1.13\n        weight: 0"],
        "",
    ));
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(
        r.out[0..6],
        real_mac(moved),
        "the recorded flow keeps its real"
    );
    let r = f.run(&next);
    assert_eq!(r.action, XDP_TX);
    assert_ne!(
        r.out[0..6],
        real_mac(moved),
        "the unrecorded flow follows the table"
    );
    assert_eq!(
        f.flow_entries(),
        2,
        "and is recorded at that packet, its second"
    );
    assert_eq!(f.new_flows(), 10_002, "counted once, at its first packet");
}

/// With persistence, a UDP flow's first packet places its client network (decision
/// 0017 leaves such virtual servers out): one-datagram flows from one network stick to
/// the real the first of them got.
#[test]
fn persistent_udp_one_datagram_flows_stick_to_the_first_real() {
    let reals = ["10.0.1.11", "10.0.1.12", "10.0.1.13"];
    let f = Fixture::new(&udp_yaml(
        &reals,
        "    persistence: { timeout: 30s, netmask: 24 }\n",
    ));
    let frame = V4Packet::udp(CLIENT, 5000, VIP, 53).build();
    let first = f.predict("dns", &udp_key(CLIENT, 5000));
    assert_eq!(f.run(&frame).out[0..6], real_mac(first));
    assert_eq!(f.flow_entries(), 1, "recorded at its first packet");
    let neighbour = [192, 0, 2, 99];
    for r in reals.iter().map(|r| r.parse::<IpAddr>().unwrap()) {
        if r == first {
            continue;
        }
        // A one-datagram flow from the same network that Maglev alone sends to `r`.
        let sport = udp_port_to(&f, neighbour, 30000, r);
        let d = V4Packet::udp(neighbour, sport, VIP, 53).build();
        let out = f.run(&d);
        assert_eq!(out.action, XDP_TX);
        assert_eq!(out.out[0..6], real_mac(first), "{sport} sticks to {first}");
    }
}

#[test]
fn same_flow_same_real_and_flows_spread() {
    let f = three();
    let frame = V4Packet::tcp(CLIENT, 4242, VIP, 80).build();
    let first = f.run(&frame).out;
    for _ in 0..50 {
        assert_eq!(f.run(&frame).out, first);
    }
    let mut seen = std::collections::HashSet::new();
    for sport in 10000..10200u16 {
        seen.insert(f.run(&V4Packet::tcp(CLIENT, sport, VIP, 80).build()).out[0..6].to_vec());
    }
    assert_eq!(seen.len(), 3, "200 flows reach all three reals");
}

#[test]
fn udp_virtual_server_and_vlan_tag() {
    let f = three();
    let frame = V4Packet::udp(CLIENT, 5353, VIP, 53).build();
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX);
    assert_dr_rewrite(&frame, &r.out, "10.0.1.53".parse().unwrap());

    let mut p = V4Packet::tcp(CLIENT, 777, VIP, 80);
    p.vlan = Some(42);
    let frame = p.build();
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX);
    assert_dr_rewrite(&frame, &r.out, f.predict("web", &key(777)));
    assert_eq!(&r.out[12..16], &[0x81, 0x00, 0, 42], "VLAN tag kept");
}

#[test]
fn traffic_not_for_a_virtual_server_passes_untouched() {
    let f = three();
    let cases = [
        (
            "other address",
            V4Packet::tcp(CLIENT, 1000, [10, 0, 0, 101], 80).build(),
        ),
        ("other port", V4Packet::tcp(CLIENT, 1000, VIP, 22).build()),
        (
            "wrong protocol (UDP to a TCP VS)",
            V4Packet::udp(CLIENT, 1000, VIP, 80).build(),
        ),
        (
            "wrong protocol (TCP to a UDP VS)",
            V4Packet::tcp(CLIENT, 1000, VIP, 53).build(),
        ),
        ("ICMP", {
            let mut b = V4Packet::tcp(CLIENT, 1000, VIP, 80).build();
            b[23] = 1; // protocol ICMP (checksum now off: the kernel's business)
            b
        }),
        ("ARP", {
            let mut b = V4Packet::tcp(CLIENT, 1000, VIP, 80).build();
            b[12..14].copy_from_slice(&[0x08, 0x06]);
            b
        }),
        (
            "IPv6 to another address",
            tests::packet::V6Packet::udp([0xfd; 16], 1000, [0xfe; 16], 53).build(),
        ),
        // The host's own traffic is told apart before the whole parse (balance.rs,
        // `first_look`); what that parse would not pass as `pass_not_vs` is left
        // to it.
        ("another address, shorter than its IP header says", {
            let mut b = V4Packet::udp(CLIENT, 1000, [10, 0, 0, 101], 53).build();
            b.truncate(b.len() - 4);
            b
        }),
        ("another address, no room for its ports", {
            let mut b = V4Packet::udp(CLIENT, 1000, [10, 0, 0, 101], 53).build();
            b.truncate(14 + 20 + 2);
            b[16..18].copy_from_slice(&22u16.to_be_bytes());
            b
        }),
    ];
    for (what, frame) in cases {
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_PASS, "{what}");
        assert_eq!(r.out, frame, "{what}: bytes unchanged");
    }
    assert_eq!(f.verdicts(reason::PASS_NOT_VS), 6);
    assert_eq!(f.verdicts(reason::PASS_NOT_IP), 1);
    assert_eq!(f.verdicts(reason::PASS_MALFORMED), 2);
}

#[test]
fn a_frame_for_another_hosts_mac_is_passed_untouched_never_forwarded() {
    let mut f = three();
    let other = [0x02, 0x99, 0, 0, 0, 0x42];
    let mut p = V4Packet::tcp(CLIENT, 5000, VIP, 80);
    p.dst_mac = other;
    let frame = p.build();
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_PASS, "flooded frame for another host");
    assert_eq!(r.out, frame, "passed untouched");
    assert_eq!(f.verdicts(reason::PASS_OTHER_HOST), 1);
    assert_eq!(f.verdicts(reason::FWD_TX), 0);

    // Broadcast and multicast destinations are this host's as much as any.
    for dst in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
        let mut p = V4Packet::tcp(CLIENT, 5000, VIP, 80);
        p.dst_mac = dst;
        let frame = p.build();
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_TX, "destination {dst:02x?}");
        assert_dr_rewrite(&frame, &r.out, f.predict("web", &key(5000)));
    }

    // A MAC the host also answers for (a macvlan on the interface) is its own.
    let macs = [(other, 7)].into_iter().collect();
    f.rec.set_own_macs(&macs).expect("OWN_MACS");
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX, "a MAC of this host's");
    assert_dr_rewrite(&frame, &r.out, f.predict("web", &key(5000)));
    f.rec
        .set_own_macs(&Default::default())
        .expect("OWN_MACS emptied");
    assert_eq!(f.run(&frame).action, XDP_PASS, "removed again");
    assert_eq!(f.verdicts(reason::PASS_OTHER_HOST), 2);
}

#[test]
fn truncated_and_garbage_frames_are_never_forwarded() {
    let f = three();
    let good = V4Packet::tcp(CLIENT, 1000, VIP, 80).build();
    // Cut inside the TCP header, IP total length adjusted: a VIP packet, unreadable L4.
    let mut cut_l4 = good[..14 + 20 + 10].to_vec();
    cut_l4[16..18].copy_from_slice(&30u16.to_be_bytes());
    let r = f.run(&cut_l4);
    assert_eq!(
        r.action, XDP_DROP,
        "truncated TCP header to a VIP is dropped"
    );
    assert_eq!(f.verdicts(reason::DROP_MALFORMED), 1);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut inside the IP header", good[..14 + 12].to_vec()),
        (
            "IP total length beyond the frame",
            good[..good.len() - 4].to_vec(),
        ),
        ("IP version 5", {
            let mut b = good.clone();
            b[14] = 0x55;
            b
        }),
        ("IHL below 5", {
            let mut b = good.clone();
            b[14] = 0x44;
            b
        }),
        ("fragment", {
            let mut b = good.clone();
            b[20] = 0x20; // more fragments
            b
        }),
        ("zeros", vec![0u8; 64]),
        ("bytes 0..255", (0..=255u8).collect()),
    ];
    for (what, frame) in cases {
        let r = f.run(&frame);
        assert_ne!(r.action, XDP_TX, "{what}: must not be forwarded");
        assert_eq!(r.action, XDP_PASS, "{what}: left to the kernel");
        assert_eq!(r.out, frame, "{what}: unchanged");
    }
}

#[test]
fn established_flows_keep_their_real_across_table_changes() {
    let mut f = three();
    // Pin 300 flows.
    let flows: Vec<u16> = (20000..20300).collect();
    let mut pinned = std::collections::HashMap::new();
    for &sport in &flows {
        let r = f.run(&V4Packet::tcp(CLIENT, sport, VIP, 80).build());
        pinned.insert(sport, r.out[0..6].to_vec());
    }
    // Add two reals: the table changes, and fresh flows would land elsewhere.
    f.apply_config(&yaml(&[
        "10.0.1.11",
        "10.0.1.12",
        "10.0.1.13",
        "10.0.1.14",
        "10.0.1.15",
    ]));
    let moved_in_table = flows
        .iter()
        .filter(|&&s| real_mac(f.predict("web", &key(s))).to_vec() != pinned[&s])
        .count();
    assert!(
        moved_in_table > 50,
        "the new table must move some of these flows ({moved_in_table})"
    );
    for &sport in &flows {
        let r = f.run(&V4Packet::tcp(CLIENT, sport, VIP, 80).build());
        assert_eq!(
            r.out[0..6].to_vec(),
            pinned[&sport],
            "flow {sport} kept its real after reals were added"
        );
    }
    // Remove real .11: its flows are re-steered by the new table; the others stay.
    f.apply_config(&yaml(&["10.0.1.12", "10.0.1.13", "10.0.1.14", "10.0.1.15"]));
    let gone = real_mac("10.0.1.11".parse().unwrap()).to_vec();
    let mut resteered = 0;
    for &sport in &flows {
        let r = f.run(&V4Packet::tcp(CLIENT, sport, VIP, 80).build());
        if pinned[&sport] == gone {
            resteered += 1;
            assert_eq!(
                r.out[0..6],
                real_mac(f.predict("web", &key(sport))),
                "flow {sport} of the removed real follows the new table"
            );
        } else {
            assert_eq!(
                r.out[0..6].to_vec(),
                pinned[&sport],
                "flow {sport} kept its real after another was removed"
            );
        }
    }
    assert!(resteered > 0, "some flows were on the removed real");
}

/// Decision 0027: a packet of an established flow of a virtual server that forwards
/// by direct routing without persistence is forwarded by the flow's entry and its
/// real alone. Shown behind the daemon's back: with the virtual server's `VS_MAP`
/// value taken away, the flow's packet still reaches its real (a new flow is passed:
/// no virtual server); once its real lacks `REAL_F_PLAIN_DR`, the packet looks its
/// virtual server up like any other, and is passed too.
#[test]
fn an_established_plain_flow_is_forwarded_by_its_entry_and_real_alone() {
    use xdpvs::dataplane::{Dataplane as _, DataplaneContents as _};
    let mut f = three();
    let established = segment(CLIENT, 5000, TCP_ACK);
    let real = f.predict("web", &key(5000));
    let r = f.run(&established);
    assert_eq!(r.action, XDP_TX);
    assert_dr_rewrite(&established, &r.out, real);
    let id = f
        .rec
        .real_id(&xdpvs::model::RealKey::real("web", real, 80))
        .expect("the real's id");
    let dp = f.rec.dataplane_behind_its_back();
    let mut info = dp.reals().expect("REALS")[id as usize];
    assert_ne!(info.flags & lb_common::REAL_F_PLAIN_DR, 0, "{info:?}");
    dp.remove_vs(&lb_common::VsKey::new(IpAddr::from(VIP), 80, PROTO_TCP))
        .expect("VS_MAP");
    let r = f.run(&established);
    assert_eq!(r.action, XDP_TX, "by its entry and real alone");
    assert_dr_rewrite(&established, &r.out, real);
    let other = segment(CLIENT, 5001, TCP_ACK);
    assert_eq!(
        f.run(&other).action,
        XDP_PASS,
        "no entry, no virtual server"
    );
    info.flags &= !lb_common::REAL_F_PLAIN_DR;
    f.rec
        .dataplane_behind_its_back()
        .set_real(id, &info)
        .expect("REALS");
    assert_eq!(f.run(&established).action, XDP_PASS, "looked up: none");
    assert_eq!(f.verdicts(reason::PASS_NOT_VS), 2);
}

/// Decision 0033: an established flow of a persistent virtual server is forwarded by
/// its entry and real alone too, and goes through its virtual server, which keeps the
/// client network's persistence entry alive and stamps the flow's entry, once the
/// stamp (`FlowState::touched`, kernel ticks) is `PERSIST_TOUCH_JIFFIES` old. Shown
/// behind the daemon's back, with the virtual server's `VS_MAP` value taken away: a
/// due packet is looked up and passed; a stamped flow's next packet still reaches its
/// real. The program's clock cannot be set, so a packet that found no virtual server
/// right after a stamp is a failure only if a flow recorded just after it bears a
/// stamp less than `PERSIST_TOUCH_JIFFIES` later (else the attempt is made again).
#[test]
fn an_established_persistent_flow_goes_by_its_real_and_through_its_virtual_server_when_due() {
    use lb_common::{FlowState, PersistState, PERSIST_TOUCH_JIFFIES};
    use xdpvs::dataplane::DataplaneContents as _;
    let y = yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]).replace(
        "    table_size: 65537\n",
        "    table_size: 65537\n    persistence: { timeout: 300s, netmask: 24 }\n",
    );
    let mut f = Fixture::new(&y);
    let established = segment(CLIENT, 5000, TCP_ACK);
    let r = f.run(&established);
    assert_eq!(r.action, XDP_TX);
    let real = ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
        .iter()
        .map(|a| a.parse::<IpAddr>().unwrap())
        .find(|a| r.out[0..6] == real_mac(*a))
        .expect("sent to a real");
    assert_dr_rewrite(&established, &r.out, real);
    let id = f
        .rec
        .real_id(&xdpvs::model::RealKey::real("web", real, 80))
        .expect("the real's id");
    let flags = f.rec.dataplane().reals().expect("REALS")[id as usize].flags;
    let plain = lb_common::REAL_F_PLAIN_DR | lb_common::REAL_F_PLAIN_PERSIST;
    assert_eq!(flags & plain, plain, "{flags:#x}");
    let entry = f.flow_state(&key(5000)).expect("recorded");
    // (A tick count whose low half is zero, one in 2^32, would fail this.)
    assert_ne!(
        entry.touched, 0,
        "a new persistent flow is recorded stamped"
    );
    let persisted = f.persist_entries();
    assert_eq!(persisted.len(), 1, "{persisted:?}");
    let (pk, ps) = persisted[0];
    assert_eq!(ps.real_id, id);

    let vs_key = lb_common::VsKey::new(IpAddr::from(VIP), 80, PROTO_TCP);
    // Due (a stamp half the clock away), its virtual server gone: looked up, passed.
    let due = FlowState {
        touched: entry.touched.wrapping_add(1 << 31),
        ..entry
    };
    f.set_flow_state(&key(5000), &due);
    let r = f.run_without_vs(&vs_key, &established);
    assert_eq!(r.action, XDP_PASS, "due: looked up");
    assert_eq!(f.flow_state(&key(5000)), Some(due), "nothing stamped");
    // Due, its virtual server back, the network's entry long untouched: forwarded,
    // the flow stamped and the network's entry touched.
    let stale = PersistState {
        last_seen_ns: 1,
        ..ps
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        f.set_flow_state(&key(5000), &due);
        f.set_persist_entry(&pk, &stale);
        let r = f.run(&established);
        assert_eq!(r.action, XDP_TX, "due, through its virtual server");
        assert_dr_rewrite(&established, &r.out, real);
        let stamped = f.flow_state(&key(5000)).expect("kept").touched;
        assert_ne!(stamped, due.touched, "the flow is stamped");
        let touched = f.persist_entries()[0].1;
        assert!(touched.last_seen_ns > 1, "the network's entry is touched");
        f.set_persist_entry(&pk, &stale);
        // Stamped: the next packet goes by the entry and the real alone.
        let r = f.run_without_vs(&vs_key, &established);
        if r.action == XDP_TX {
            assert_dr_rewrite(&established, &r.out, real);
            assert_eq!(
                f.persist_entries()[0].1,
                stale,
                "by its real alone: the network's entry untouched"
            );
            break;
        }
        // Passed: only right if the stamp was due already, which a flow recorded now
        // tells by its own stamp.
        let probe = 6000 + attempts;
        let now = f.ticks_now(&segment(CLIENT, probe, TCP_ACK), &key(probe));
        assert!(
            now.wrapping_sub(stamped) >= PERSIST_TOUCH_JIFFIES,
            "stamped at tick {stamped}, passed before tick {now}"
        );
        assert!(
            attempts < 20,
            "{attempts} attempts, each slower than a touch"
        );
    }
}

/// A fragment's entry (by addresses: both ports zero) is never taken for a whole
/// packet's: a packet to port 0, which no virtual server has, is passed even when the
/// client's fragments recorded an entry for the VIP (decision 0027).
#[test]
fn a_packet_to_port_zero_never_uses_a_fragments_entry() {
    let y = yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]).replace(
        "    table_size: 65537\n",
        "    table_size: 65537\n    fragments: true\n",
    );
    let f = Fixture::new(&y);
    let whole = V4Packet {
        payload: vec![7; 64],
        ..V4Packet::tcp(CLIENT, 5000, VIP, 80)
    }
    .build();
    let frags = tests::packet::fragments_v4(&whole, 32, 77);
    for frag in &frags {
        assert_eq!(f.run(frag).action, XDP_TX, "a fragment is forwarded");
    }
    assert_eq!(f.flow_entries(), 1, "the fragments' entry, by addresses");
    let mut port0 = segment(CLIENT, 0, TCP_ACK);
    port0[36..38].copy_from_slice(&0u16.to_be_bytes());
    let r = f.run(&port0);
    assert_eq!(
        (r.action, r.out),
        (XDP_PASS, port0.clone()),
        "no virtual server"
    );
}

/// A virtual server that changes how it forwards, or moves to another VIP under its
/// name, takes its established flows along at once (decision 0027): after a change to
/// NAT, a flow's packet is translated; after the move, a packet to the old VIP is
/// passed, not sent to the real its entry names.
#[test]
fn a_changed_or_moved_virtual_server_takes_its_established_flows_along() {
    let mut f = three();
    let established = segment(CLIENT, 5000, TCP_ACK);
    assert_eq!(f.run(&established).action, XDP_TX);
    let nat = yaml(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]).replace(
        "protocol: tcp\n    table_size",
        "protocol: tcp\n    method: nat\n    table_size",
    );
    f.apply_config(&nat);
    let r = f.run(&established);
    assert!(
        r.action == XDP_TX || r.action == XDP_REDIRECT,
        "{}",
        r.action
    );
    let IpAddr::V4(real) = f.predict("web", &key(5000)) else {
        panic!("an IPv4 real")
    };
    assert_eq!(
        &r.out[30..34],
        &real.octets(),
        "NAT: destination is the real's"
    );
    let flows = f.flow_entries();
    f.apply_config(&nat.replace(
        "address: 10.0.0.100\n    port: 80",
        "address: 10.0.0.101\n    port: 80",
    ));
    let passed = f.verdicts(reason::PASS_NOT_VS);
    let r = f.run(&established);
    assert_eq!(
        (r.action, r.out),
        (XDP_PASS, established.clone()),
        "old VIP"
    );
    assert_eq!(f.verdicts(reason::PASS_NOT_VS), passed + 1);
    assert_eq!(f.flow_entries(), flows, "the entry is still there");
}

#[test]
fn no_real_and_unresolved_mac_drop_with_a_reason() {
    let f = Fixture::new(&yaml(&[]).replace(
        "    real_servers:\n  - name: dns",
        "    real_servers: []\n  - name: dns",
    ));
    let r = f.run(&V4Packet::tcp(CLIENT, 1, VIP, 80).build());
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(f.verdicts(reason::DROP_NO_REAL), 1);

    let mut f = three();
    // A new real whose MAC is not known yet.
    f.rec
        .apply(&{
            let mut c = f.config.clone();
            c.virtual_servers[1].real_servers[0].address = "10.0.1.99".parse().unwrap();
            c
        })
        .unwrap();
    let r = f.run(&V4Packet::udp(CLIENT, 5353, VIP, 53).build());
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(f.verdicts(reason::DROP_NO_MAC), 1);
}

/// Returns: a client port from `src` whose new flow Maglev sends somewhere else than
/// `avoid` (so that going to `avoid` anyway proves persistence).
fn port_avoiding(f: &Fixture, src: [u8; 4], from: u16, avoid: IpAddr) -> u16 {
    (from..from + 1000)
        .find(|&p| {
            let k = FlowKey::new(IpAddr::from(src), p, IpAddr::from(VIP), 80, PROTO_TCP);
            f.predict("web", &k) != avoid
        })
        .expect("a port hashing elsewhere")
}

/// Returns: the real a frame from `src:sport` was sent to (by its destination MAC).
fn sent_to(f: &Fixture, src: [u8; 4], sport: u16, reals: &[&str]) -> IpAddr {
    let r = f.run(&V4Packet::tcp(src, sport, VIP, 80).build());
    assert_eq!(r.action, XDP_TX, "from {src:?}:{sport}");
    reals
        .iter()
        .map(|a| a.parse::<IpAddr>().unwrap())
        .find(|a| r.out[0..6] == real_mac(*a))
        .unwrap_or_else(|| panic!("frame sent to an unknown MAC {:02x?}", &r.out[0..6]))
}

#[test]
fn persistence_holds_a_client_network_until_timeout_failure_or_drain() {
    let reals = ["10.0.1.11", "10.0.1.12", "10.0.1.13"];
    let with = |weights: [u32; 3]| {
        let mut y = String::from("interfaces: [lo]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 65537\n    persistence: { timeout: 1s, netmask: 24 }\n    real_servers:\n");
        for (r, w) in reals.iter().zip(weights) {
            y.push_str(&format!("      - {{ address: {r}, weight: {w} }}\n"));
        }
        y
    };
    let mut f = Fixture::new(&with([1, 1, 1]));
    let same_net = [192, 0, 2, 99];
    let other_net = [198, 51, 100, 7];

    // The first connection from 192.0.2.0/24 picks a real; the next ones follow it,
    // from other hosts of the network too, though Maglev alone would send them elsewhere.
    let first = sent_to(&f, CLIENT, 1000, &reals);
    for (i, src) in [CLIENT, same_net, same_net].into_iter().enumerate() {
        let p = port_avoiding(&f, src, 2000 + 1000 * i as u16, first);
        assert_eq!(sent_to(&f, src, p, &reals), first, "{src:?}:{p} sticks");
    }
    // Another network is not held.
    let p = port_avoiding(&f, other_net, 2000, first);
    let k = FlowKey::new(IpAddr::from(other_net), p, IpAddr::from(VIP), 80, PROTO_TCP);
    assert_eq!(sent_to(&f, other_net, p, &reals), f.predict("web", &k));

    // After the timeout with no packet from the network, Maglev decides again. (The
    // wait is the behaviour under test: the entry's age.)
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let p = port_avoiding(&f, CLIENT, 6000, first);
    let second = sent_to(&f, CLIENT, p, &reals);
    assert_eq!(
        second,
        f.predict("web", &key(p)),
        "expired: Maglev's choice"
    );
    let p2 = port_avoiding(&f, CLIENT, 7000, second);
    assert_eq!(sent_to(&f, CLIENT, p2, &reals), second, "a new entry holds");

    // The held real fails: new connections and its pinned flows go to healthy reals,
    // and the network is held by the new choice.
    f.set_health("web", &second.to_string(), false);
    let q = 8000;
    let third = sent_to(&f, CLIENT, q, &reals);
    assert_ne!(third, second);
    assert_eq!(third, f.predict("web", &key(q)));
    assert_ne!(
        sent_to(&f, CLIENT, p, &reals),
        second,
        "pinned flow re-steered"
    );
    let q2 = port_avoiding(&f, CLIENT, 9000, third);
    assert_eq!(sent_to(&f, CLIENT, q2, &reals), third);

    // Draining the held real (weight 0): its flows go on, new ones are not held to it.
    f.set_health("web", &second.to_string(), true);
    let mut w = [1, 1, 1];
    w[reals
        .iter()
        .position(|r| r.parse::<IpAddr>().unwrap() == third)
        .unwrap()] = 0;
    f.apply_config(&with(w));
    assert_eq!(
        sent_to(&f, CLIENT, q, &reals),
        third,
        "established flow continues"
    );
    for p in 20000..20020 {
        assert_ne!(
            sent_to(&f, CLIENT, p, &reals),
            third,
            "new flow {p} to a drained real"
        );
    }
}
