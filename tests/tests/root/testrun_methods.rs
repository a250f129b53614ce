//! NAT, tunnel and IPv6 under BPF_PROG_TEST_RUN, byte-exact: every expected frame is
//! built here by the test's own packet code (headers and checksums from scratch), never
//! by transforming the program's output. Next hops come from the fixture namespace's
//! FIB (see `tests::fixture`).

use std::{collections::HashSet, net::IpAddr};

use lb_common::{
    flow_hash,
    maps::{client_hop_slot, CLIENT_HOPS, REAL_HOPS, REAL_HOP_SLOTS},
    realserver::{maps::PROG_DECAP, DECAP_DONE},
    reason, FlowKey, NeighMiss, PROTO_TCP,
};
use tests::{
    cpus,
    fixture::{real_mac, DecapFixture, Fixture, CLIENT_MAC, FIB_MAC, GW_MAC, LB_MAC},
    packet::{
        eth, fragments_v4, icmp4_error, icmp4_too_big, icmp6_error, icmp6_too_big, ipv4_header,
        ipv6_header, V4Packet, V6Packet, TCP_ACK, TCP_SYN,
    },
};
use xdpvs::model::RealKey;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const NAT_VIP4: [u8; 4] = [10, 0, 0, 100];
const TUN_VIP4: [u8; 4] = [10, 0, 0, 101];
const TUN_SRC4: [u8; 4] = [10, 0, 1, 1];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}
fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("not v4"),
    }
}
fn v6of(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not v6"),
    }
}

const YAML: &str = "\
interfaces: [lo]
tunnel_source: [10.0.1.1, fd00:1::1]
virtual_servers:
  - { name: nat4, address: 10.0.0.100, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }, { address: 10.0.1.12, port: 8080 }] }
  - { name: nat4u, address: 10.0.0.100, port: 53, protocol: udp, method: nat,
      real_servers: [{ address: 10.0.1.53, port: 5353 }] }
  - { name: tun4, address: 10.0.0.101, port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 10.0.9.11 }, { address: 10.0.9.12 }] }
  - { name: nat6, address: '2001:db8:f::100', port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 'fd00:1::11', port: 8080 }, { address: 'fd00:1::12', port: 8080 }] }
  - { name: tun6, address: '2001:db8:f::101', port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 'fd00:9::11' }, { address: 'fd00:9::12' }] }
  - { name: dr6, address: '2001:db8:f::102', port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 'fd00:1::21' }, { address: 'fd00:1::22' }] }
  - { name: dr4, address: 10.0.0.102, port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 10.0.1.21 }, { address: 10.0.1.22 }] }
";
const DR_VIP4: [u8; 4] = [10, 0, 0, 102];

fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(src, sport, dst, dport, proto)
}

#[test]
fn nat_v4_request_and_reply_are_rewritten_with_correct_checksums() {
    let f = Fixture::new(YAML);
    let mut seen = std::collections::HashSet::new();
    for sport in [1000u16, 2000, 3000, 40000, 50001, 65535] {
        let frame = V4Packet::tcp(CLIENT4, sport, NAT_VIP4, 80).build();
        let real = f.predict(
            "nat4",
            &key(CLIENT4.into(), sport, NAT_VIP4.into(), 80, PROTO_TCP),
        );
        seen.insert(real);
        let r = f.run(&frame);
        assert_eq!(
            r.action, XDP_REDIRECT,
            "sport {sport}: leaves by the routed interface"
        );
        let want = V4Packet {
            dst_mac: real_mac(real),
            src_mac: FIB_MAC,
            ..V4Packet::tcp(CLIENT4, sport, v4(real), 8080)
        }
        .build();
        assert_eq!(r.out, want, "sport {sport}: request to {real}:8080");

        // The real's answer comes back through the balancer.
        let reply = V4Packet::tcp(v4(real), 8080, CLIENT4, sport).build();
        let r = f.run(&reply);
        assert_eq!(r.action, XDP_REDIRECT, "sport {sport}: reply forwarded");
        let want = V4Packet {
            dst_mac: CLIENT_MAC,
            src_mac: FIB_MAC,
            ..V4Packet::tcp(NAT_VIP4, 80, CLIENT4, sport)
        }
        .build();
        assert_eq!(r.out, want, "sport {sport}: reply from VIP:80");
    }
    assert_eq!(seen.len(), 2, "both reals chosen across these flows");
    assert_eq!(f.verdicts(reason::FWD_REDIRECT), 6);
    assert_eq!(f.verdicts(reason::FWD_NAT_REPLY), 6);
}

#[test]
fn nat_reply_without_state_passes_untouched() {
    let f = Fixture::new(YAML);
    let frame = V4Packet::tcp(CLIENT4, 4321, NAT_VIP4, 80).build();
    let real = f.predict(
        "nat4",
        &key(CLIENT4.into(), 4321, NAT_VIP4.into(), 80, PROTO_TCP),
    );
    assert_eq!(f.run(&frame).action, XDP_REDIRECT);
    let other: IpAddr = if real == "10.0.1.11".parse::<IpAddr>().unwrap() {
        "10.0.1.12"
    } else {
        "10.0.1.11"
    }
    .parse()
    .unwrap();
    let cases = [
        (
            "client port never seen",
            V4Packet::tcp(v4(real), 8080, CLIENT4, 4322).build(),
        ),
        (
            "the other real",
            V4Packet::tcp(v4(other), 8080, CLIENT4, 4321).build(),
        ),
        (
            "other source port",
            V4Packet::tcp(v4(real), 8081, CLIENT4, 4321).build(),
        ),
        (
            "UDP, not TCP",
            V4Packet::udp(v4(real), 8080, CLIENT4, 4321).build(),
        ),
    ];
    for (what, reply) in cases {
        let r = f.run(&reply);
        assert_eq!(r.action, XDP_PASS, "{what}");
        assert_eq!(r.out, reply, "{what}: unchanged");
    }
}

/// A real two NAT virtual servers share has each flow's reply restored to the VIP
/// that flow was sent to (`NAT_STATE`); the real of one NAT virtual server has its
/// replies found through the flow's `FLOWS` entry (decision 0015). Either way the
/// answer to a SYN is restored: a NAT SYN, which `FLOWS` does not record (decision
/// 0012), leaves its reply state in `NAT_STATE` for a shared real, and only its mark
/// in `UDP_SEEN` for a sole one (decision 0021).
#[test]
fn nat_replies_of_shared_and_sole_reals_go_back_as_their_own_vip() {
    let y = "interfaces: [lo]\nvirtual_servers:
  - { name: a, address: 10.0.0.100, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }] }
  - { name: b, address: 10.0.0.101, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }] }
  - { name: c, address: 10.0.0.102, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.12, port: 8080 }] }
";
    let f = Fixture::new(y);
    let flows = [
        ([10, 0, 0, 100], [10, 0, 1, 11], 5000),
        ([10, 0, 0, 101], [10, 0, 1, 11], 5001),
        ([10, 0, 0, 102], [10, 0, 1, 12], 5002),
    ];
    for (vip, real, sport) in flows {
        let syn = V4Packet {
            tcp_flags: TCP_SYN,
            ..V4Packet::tcp(CLIENT4, sport, vip, 80)
        };
        assert_eq!(f.run(&syn.build()).action, XDP_REDIRECT, "SYN to {vip:?}");
        let answer = |flags| V4Packet {
            tcp_flags: flags,
            ..V4Packet::tcp(real, 8080, CLIENT4, sport)
        };
        let restored = |flags| V4Packet {
            dst_mac: CLIENT_MAC,
            src_mac: FIB_MAC,
            tcp_flags: flags,
            ..V4Packet::tcp(vip, 80, CLIENT4, sport)
        };
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
            let r = f.run(&answer(flags).build());
            assert_eq!(
                r.action, XDP_REDIRECT,
                "answer for {vip:?}, flags {flags:#x}"
            );
            assert_eq!(
                r.out,
                restored(flags).build(),
                "answer for {vip:?} from {vip:?}:80"
            );
        }
    }
    assert_eq!(f.flow_entries(), 0, "a NAT SYN writes no FLOWS entry");
    assert_eq!(
        f.nat_state_entries(),
        2,
        "the SYNs to the shared real left reply state, the SYN to the sole real none"
    );
    // The client's ACK records its flow in FLOWS, through which the sole real's
    // answers are found from then on.
    let ack = V4Packet::tcp(CLIENT4, 5002, [10, 0, 0, 102], 80).build();
    assert_eq!(f.run(&ack).action, XDP_REDIRECT);
    assert_eq!(f.flow_entries(), 1, "the ACK recorded the flow");
    // The sole real's answer to a client port it never served is no reply.
    let stray = V4Packet::tcp([10, 0, 1, 12], 8080, CLIENT4, 5003).build();
    let r = f.run(&stray);
    assert_eq!((r.action, &r.out), (XDP_PASS, &stray));
}

/// An unrecorded NAT flow (a SYN, a first datagram) is found by its mark in
/// `UDP_SEEN` (decision 0021): only the real Maglev gives the flow is restored, only
/// while the mark is the flow's own, and a flow whose mark another overwrote is not.
#[test]
fn an_unrecorded_nat_flow_is_answered_by_its_own_real_while_its_mark_holds() {
    let f = Fixture::new(YAML);
    let reals = [[10, 0, 1, 11], [10, 0, 1, 12]];
    let syn = |sport| V4Packet {
        tcp_flags: TCP_SYN,
        ..V4Packet::tcp(CLIENT4, sport, NAT_VIP4, 80)
    };
    let answer = |real, sport| V4Packet {
        tcp_flags: TCP_SYN | TCP_ACK,
        ..V4Packet::tcp(real, 8080, CLIENT4, sport)
    };
    let restored = |sport| V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: FIB_MAC,
        tcp_flags: TCP_SYN | TCP_ACK,
        ..V4Packet::tcp(NAT_VIP4, 80, CLIENT4, sport)
    };
    // Two client ports whose flows' hashes fall in one UDP_SEEN slot.
    let slot = |sport: u16| {
        flow_hash(&key(CLIENT4.into(), sport, NAT_VIP4.into(), 80, PROTO_TCP))
            % lb_common::maps::UDP_SEEN_SLOTS
    };
    let mut seen = std::collections::HashMap::new();
    let (first, rival) = (6000..=u16::MAX)
        .find_map(|p| seen.insert(slot(p), p).map(|q| (q, p)))
        .expect("two ports whose flows share a slot");
    let r = f.run(&syn(first).build());
    assert_eq!(r.action, XDP_REDIRECT);
    let chosen: [u8; 4] = r.out[30..34].try_into().expect("4");
    let other = *reals.iter().find(|r| **r != chosen).expect("two reals");
    assert_eq!((f.flow_entries(), f.nat_state_entries()), (0, 0));
    let stray = answer(other, first).build();
    let r = f.run(&stray);
    assert_eq!((r.action, &r.out), (XDP_PASS, &stray), "the other real's");
    let r = f.run(&answer(chosen, first).build());
    assert_eq!((r.action, r.out), (XDP_REDIRECT, restored(first).build()));
    assert_eq!(f.flow_entries(), 0, "a SYN-ACK records nothing");

    // The second SYN takes the slot over.
    let r = f.run(&syn(rival).build());
    assert_eq!(r.action, XDP_REDIRECT);
    let rival_real: [u8; 4] = r.out[30..34].try_into().expect("4");
    let lost = answer(chosen, first).build();
    let r = f.run(&lost);
    assert_eq!(
        (r.action, &r.out),
        (XDP_PASS, &lost),
        "the first flow's mark is gone"
    );
    let r = f.run(&answer(rival_real, rival).build());
    assert_eq!((r.action, r.out), (XDP_REDIRECT, restored(rival).build()));
}

/// A SYN that finds its 5-tuple's entry stale (its real failed) goes to another real
/// and leaves its reply state in `NAT_STATE`, not a mark: the new real's SYN-ACK,
/// which finds the stale entry first, is restored (decision 0021).
#[test]
fn a_nat_syn_re_steered_from_a_stale_entry_is_answered() {
    let mut f = Fixture::new(YAML);
    let ack = V4Packet::tcp(CLIENT4, 7100, NAT_VIP4, 80).build();
    let r = f.run(&ack);
    assert_eq!(r.action, XDP_REDIRECT);
    let first: [u8; 4] = r.out[30..34].try_into().expect("4");
    assert_eq!(f.flow_entries(), 1);
    let first_addr = std::net::Ipv4Addr::from(first).to_string();
    f.set_port_health("nat4", &first_addr, 8080, false);
    let syn = V4Packet {
        tcp_flags: TCP_SYN,
        ..V4Packet::tcp(CLIENT4, 7100, NAT_VIP4, 80)
    };
    let r = f.run(&syn.build());
    assert_eq!(r.action, XDP_REDIRECT);
    let second: [u8; 4] = r.out[30..34].try_into().expect("4");
    assert_ne!(second, first, "re-steered away from the failed real");
    let r = f.run(
        &V4Packet {
            tcp_flags: TCP_SYN | TCP_ACK,
            ..V4Packet::tcp(second, 8080, CLIENT4, 7100)
        }
        .build(),
    );
    let restored = V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: FIB_MAC,
        tcp_flags: TCP_SYN | TCP_ACK,
        ..V4Packet::tcp(NAT_VIP4, 80, CLIENT4, 7100)
    };
    assert_eq!((r.action, r.out), (XDP_REDIRECT, restored.build()));
}

/// The same during a SYN flood (decision 0025): the SYN skips the table, so it
/// leaves its mark, not reply state, and goes by Maglev; the new real's SYN-ACK, which
/// finds the stale entry naming another real, is restored through the mark; the
/// client's ACK is re-steered from the stale entry to the SYN's real and recorded.
#[test]
fn a_nat_syn_past_the_table_during_a_syn_flood_is_answered_through_its_mark() {
    let allowed = cpus::allowed();
    // One CPU: the SYNs are counted per CPU.
    cpus::only_on(&allowed[..1]);
    let mut f = Fixture::new(&format!("syn_flood_rate: 10\n{YAML}"));
    let ack = V4Packet::tcp(CLIENT4, 7200, NAT_VIP4, 80).build();
    let r = f.run(&ack);
    assert_eq!(r.action, XDP_REDIRECT);
    let first: [u8; 4] = r.out[30..34].try_into().expect("4");
    f.set_port_health(
        "nat4",
        &std::net::Ipv4Addr::from(first).to_string(),
        8080,
        false,
    );
    // Two SYNs from elsewhere: this CPU's window has counted more than one.
    for sport in [9001, 9002] {
        let other = V4Packet {
            tcp_flags: TCP_SYN,
            ..V4Packet::tcp([198, 18, 0, 1], sport, NAT_VIP4, 80)
        };
        assert_eq!(f.run(&other.build()).action, XDP_REDIRECT);
    }
    let past = f.syns_past_table();
    assert!(past >= 1, "the second SYN skipped the table");
    let syn = V4Packet {
        tcp_flags: TCP_SYN,
        ..V4Packet::tcp(CLIENT4, 7200, NAT_VIP4, 80)
    };
    let r = f.run(&syn.build());
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(
        f.syns_past_table(),
        past + 1,
        "the client's SYN skipped the table"
    );
    let second: [u8; 4] = r.out[30..34].try_into().expect("4");
    assert_ne!(second, first, "Maglev's real, not the failed one");
    assert_eq!(f.nat_state_entries(), 0, "a mark, no reply state");
    let answer = |real| V4Packet {
        tcp_flags: TCP_SYN | TCP_ACK,
        ..V4Packet::tcp(real, 8080, CLIENT4, 7200)
    };
    let r = f.run(&answer(second).build());
    let restored = V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: FIB_MAC,
        tcp_flags: TCP_SYN | TCP_ACK,
        ..V4Packet::tcp(NAT_VIP4, 80, CLIENT4, 7200)
    };
    assert_eq!((r.action, r.out), (XDP_REDIRECT, restored.build()));
    let r = f.run(&ack);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(r.out[30..34], second, "the ACK follows its SYN");
    assert_eq!(f.flow_entries(), 1, "re-recorded in place");
    cpus::only_on(&allowed);
}

#[test]
fn nat_udp_both_ways_and_a_zero_udp_checksum_stays_zero() {
    let f = Fixture::new(YAML);
    // The sole real of the UDP virtual server carries REAL_F_SOLE_NAT in REALS: its
    // requests write no NAT_STATE (below), without a NAT_REALS lookup.
    use xdpvs::dataplane::DataplaneContents as _;
    let reals = f.rec.dataplane().reals().expect("REALS");
    let sole = reals
        .iter()
        .find(|r| r.addr[0] == u32::from_ne_bytes([10, 0, 1, 53]));
    assert!(
        sole.is_some_and(|r| r.flags & lb_common::REAL_F_SOLE_NAT != 0),
        "{sole:?}"
    );
    let real = [10, 0, 1, 53];
    let frame = V4Packet::udp(CLIENT4, 7000, NAT_VIP4, 53).build();
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(
        r.out,
        V4Packet {
            dst_mac: real_mac(real.into()),
            src_mac: FIB_MAC,
            ..V4Packet::udp(CLIENT4, 7000, real, 5353)
        }
        .build()
    );
    assert_eq!(
        (f.flow_entries(), f.nat_state_entries()),
        (0, 0),
        "a NAT UDP flow's first datagram leaves only its mark (decision 0021)"
    );
    let r = f.run(&V4Packet::udp(real, 5353, CLIENT4, 7000).build());
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(
        r.out,
        V4Packet {
            dst_mac: CLIENT_MAC,
            src_mac: FIB_MAC,
            ..V4Packet::udp(NAT_VIP4, 53, CLIENT4, 7000)
        }
        .build()
    );
    assert_eq!(
        f.flow_entries(),
        1,
        "the reply found by the mark recorded the flow"
    );

    // IPv4 UDP without checksum (0): rewritten, still 0.
    let mut frame = V4Packet::udp(CLIENT4, 7001, NAT_VIP4, 53).build();
    frame[40..42].copy_from_slice(&[0, 0]);
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    let mut want = V4Packet {
        dst_mac: real_mac(real.into()),
        src_mac: FIB_MAC,
        ..V4Packet::udp(CLIENT4, 7001, real, 5353)
    }
    .build();
    want[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(r.out, want);
}

#[test]
fn nat_v6_request_and_reply() {
    let f = Fixture::new(YAML);
    let (client, vip) = (v6("2001:db8:c::7"), v6("2001:db8:f::100"));
    for sport in [1111u16, 2222, 33333] {
        let frame = V6Packet::tcp(client, sport, vip, 80).build();
        let real = f.predict(
            "nat6",
            &key(client.into(), sport, vip.into(), 80, PROTO_TCP),
        );
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT);
        let want = V6Packet {
            dst_mac: real_mac(real),
            src_mac: FIB_MAC,
            ..V6Packet::tcp(client, sport, v6of(real), 8080)
        }
        .build();
        assert_eq!(r.out, want, "request to [{real}]:8080");
        let r = f.run(&V6Packet::tcp(v6of(real), 8080, client, sport).build());
        assert_eq!(r.action, XDP_REDIRECT);
        let want = V6Packet {
            dst_mac: CLIENT_MAC,
            src_mac: FIB_MAC,
            ..V6Packet::tcp(vip, 80, client, sport)
        }
        .build();
        assert_eq!(r.out, want, "reply from [VIP]:80");
    }
}

/// Returns: the ifindex of `dev` in the fixture's namespace.
fn ifindex(f: &Fixture, dev: &str) -> u32 {
    let out = f
        .net
        .exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
    out.trim().parse().expect("ifindex")
}

/// Returns: the report of next hop `addr` unresolved on `ifindex`.
fn miss(addr: IpAddr, ifindex: u32) -> NeighMiss {
    let (addr, family) = lb_common::user::addr_words(addr);
    NeighMiss {
        addr,
        ifindex,
        family,
        _pad: [0; 3],
    }
}

/// Runs `frame` `repeat` times in one BPF_PROG_TEST_RUN, expecting every run dropped as
/// `drop_no_neigh`. Returns: the reports it left, and the most the rate limit allows for
/// the time the runs took (one per slot per 100 ms).
fn unresolved_runs(f: &mut Fixture, frame: &[u8], repeat: u32) -> (Vec<NeighMiss>, usize) {
    let before = f.verdicts(reason::DROP_NO_NEIGH);
    let start = std::time::Instant::now();
    let r = f.run_n(lb_common::maps::PROG_LB, frame, repeat);
    let allowed = 1 + (start.elapsed().as_millis() / 100) as usize;
    assert_eq!(r.action, XDP_DROP, "no neighbour entry: dropped");
    assert_eq!(
        f.verdicts(reason::DROP_NO_NEIGH) - before,
        u64::from(repeat),
        "each counted as drop_no_neigh"
    );
    (f.neigh_misses(), allowed)
}

#[test]
fn a_next_hop_without_neighbour_entry_is_reported_for_the_daemon_to_resolve() {
    let mut f = Fixture::new(YAML);
    let fxa = ifindex(&f, "fxa");
    assert!(f.neigh_misses().is_empty(), "nothing reported at load");

    // IPv4: a client on the connected network the balancer has no entry for. The
    // request goes to a real (resolved); the reply finds none and is reported: the
    // next hop is the client itself, on the interface the reply would leave by.
    let client = [192, 0, 2, 9];
    let request = V4Packet::tcp(client, 4000, NAT_VIP4, 80).build();
    assert_eq!(f.run(&request).action, XDP_REDIRECT, "request forwarded");
    let real = f.predict(
        "nat4",
        &key(client.into(), 4000, NAT_VIP4.into(), 80, PROTO_TCP),
    );
    let reply = V4Packet::tcp(v4(real), 8080, client, 4000).build();
    let (got, allowed) = unresolved_runs(&mut f, &reply, 1000);
    let want = miss(IpAddr::from(client), fxa);
    assert!(
        !got.is_empty() && got.len() <= allowed,
        "1,000 drops, one report per 100 ms at most ({allowed} allowed): {got:?}"
    );
    assert!(got.iter().all(|m| *m == want), "{got:?}");

    // Once the kernel holds the entry (what the daemon has it do), the reply leaves.
    f.net.exec(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.9",
        "lladdr",
        &xdpvs::reconcile::fmt_mac(&CLIENT_MAC),
        "dev",
        "fxa",
    ]);
    let r = f.run(&reply);
    assert_eq!(r.action, XDP_REDIRECT, "resolved: forwarded");
    let want = V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: FIB_MAC,
        ..V4Packet::tcp(NAT_VIP4, 80, client, 4000)
    }
    .build();
    assert_eq!(r.out, want, "reply from VIP:80 to the client's MAC");

    // IPv6: a client behind a router the balancer has no entry for. The report names
    // the router, the neighbour to resolve, not the client.
    sh(&f, "ip -6 route add 2001:db8:d::/64 via fd00:1::fd");
    let (client, vip) = (v6("2001:db8:d::9"), v6("2001:db8:f::100"));
    let request = V6Packet::tcp(client, 5000, vip, 80).build();
    assert_eq!(f.run(&request).action, XDP_REDIRECT, "v6 request forwarded");
    let real = f.predict("nat6", &key(client.into(), 5000, vip.into(), 80, PROTO_TCP));
    let reply = V6Packet::tcp(v6of(real), 8080, client, 5000).build();
    let (got, allowed) = unresolved_runs(&mut f, &reply, 1000);
    let want = miss("fd00:1::fd".parse().expect("v6"), fxa);
    assert!(
        !got.is_empty() && got.len() <= allowed,
        "v6: one report per 100 ms at most ({allowed} allowed): {got:?}"
    );
    assert!(got.iter().all(|m| *m == want), "v6: {got:?}");
}

/// A flow recorded by a packet that is then dropped on its way out (its real's next hop
/// has no neighbour entry) is in the connection table all the same: it is counted as a
/// new flow then, once, and its later packets, forwarded, are not new.
#[test]
fn a_new_flow_whose_first_packet_is_dropped_on_its_way_out_is_counted_once() {
    let f = Fixture::new(YAML);
    let flow = key(CLIENT4.into(), 4100, NAT_VIP4.into(), 80, PROTO_TCP);
    let addr = f.predict("nat4", &flow);
    f.net
        .exec(&["ip", "neigh", "del", &addr.to_string(), "dev", "fxa"]);
    let frame = V4Packet::tcp(CLIENT4, 4100, NAT_VIP4, 80).build();
    assert_eq!(
        f.run(&frame).action,
        XDP_DROP,
        "no neighbour entry for {addr}"
    );
    assert_eq!(f.verdicts(reason::DROP_NO_NEIGH), 1);
    assert_eq!(f.new_flows(), 1, "recorded, so counted, though dropped");
    f.neighbour(addr, "fxa");
    for _ in 0..3 {
        assert_eq!(f.run(&frame).action, XDP_REDIRECT, "resolved: forwarded");
    }
    assert_eq!(f.new_flows(), 1, "its later packets are not new");
}

#[test]
fn tunnel_v4_wraps_the_packet_in_a_correct_outer_header() {
    let f = Fixture::new(YAML);
    for sport in [1000u16, 2000, 3000] {
        let frame = V4Packet::tcp(CLIENT4, sport, TUN_VIP4, 80).build();
        let real = f.predict(
            "tun4",
            &key(CLIENT4.into(), sport, TUN_VIP4.into(), 80, PROTO_TCP),
        );
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT);
        let inner = &frame[14..];
        let mut want = eth(GW_MAC, FIB_MAC, None, 0x0800);
        want.extend_from_slice(&ipv4_header(
            0,
            20 + inner.len(),
            0,
            0x4000,
            64,
            4,
            TUN_SRC4,
            v4(real),
        ));
        want.extend_from_slice(inner);
        assert_eq!(r.out, want, "sport {sport}: IPIP to {real} via the router");
    }
}

/// An established flow of a tunnelling virtual server without persistence is wrapped
/// from its entry, its real and the outer source `TUNNEL_SRCS` holds for its virtual
/// server's index (decision 0028), byte for byte:
/// - a reload that gives the virtual server another source writes it there: with
///   `VS_MAP`'s value then taken away behind the daemon's back, the flow is wrapped
///   from the new source, while a new flow is passed;
/// - with the value back, the slot emptied and filled again from `VS_MAP` (what a load
///   does), and the value taken away again, the flow is still wrapped;
/// - a source read half-written is not used: the packet looks its virtual server up
///   (none: passed).
#[test]
fn an_established_tunnel_flow_is_wrapped_from_its_entry_real_and_outer_source() {
    use lb_common::{user::addr_words, TunnelSource, VsKey};
    use xdpvs::dataplane::Dataplane as _;
    let mut f = Fixture::new(YAML);
    let sport = 4242;
    let frame = V4Packet::tcp(CLIENT4, sport, TUN_VIP4, 80).build();
    let real = f.predict(
        "tun4",
        &key(CLIENT4.into(), sport, TUN_VIP4.into(), 80, PROTO_TCP),
    );
    // Runs the flow's frame: it must leave wrapped from outer source `src`.
    let assert_wrapped = |f: &Fixture, src: [u8; 4], what: &str| {
        let r = f.run(&frame);
        let want = ipip(&frame, src, v4(real), 0);
        assert_eq!((r.action, &r.out), (XDP_REDIRECT, &want), "{what}");
    };
    assert_wrapped(&f, TUN_SRC4, "recorded");
    let new_src = [10, 0, 1, 9];
    f.apply_config(&YAML.replace(
        "method: tunnel,\n      real_servers: [{ address: 10.0.9.11 }",
        "method: tunnel, tunnel_source: 10.0.1.9,\n      real_servers: [{ address: 10.0.9.11 }",
    ));
    let vs_key = VsKey::new(IpAddr::from(TUN_VIP4), 80, PROTO_TCP);
    let info = f.vs_info(&vs_key);
    let dp = f.rec.dataplane_behind_its_back();
    dp.remove_vs(&vs_key).expect("VS_MAP");
    assert_wrapped(
        &f,
        new_src,
        "reloaded: by its entry, real and outer source alone",
    );
    let other = V4Packet::tcp(CLIENT4, sport + 1, TUN_VIP4, 80).build();
    assert_eq!(
        f.run(&other).action,
        XDP_PASS,
        "no entry, no virtual server"
    );
    let dp = f.rec.dataplane_behind_its_back();
    dp.set_vs(&vs_key, &info).expect("VS_MAP");
    dp.write_tunnel_source(info.vs_index, TunnelSource::default())
        .expect("TUNNEL_SRCS");
    dp.fill_tunnel_sources().expect("TUNNEL_SRCS");
    dp.remove_vs(&vs_key).expect("VS_MAP");
    assert_wrapped(&f, new_src, "filled from VS_MAP");
    let (old, new) = (addr_words(TUN_SRC4.into()).0, addr_words(new_src.into()).0);
    let torn = TunnelSource {
        check: TunnelSource::new(old).check,
        ..TunnelSource::new(new)
    };
    let dp = f.rec.dataplane_behind_its_back();
    dp.write_tunnel_source(info.vs_index, torn)
        .expect("TUNNEL_SRCS");
    assert_eq!(f.run(&frame).action, XDP_PASS, "half-written: looked up");
    f.rec
        .dataplane_behind_its_back()
        .write_tunnel_source(info.vs_index, TunnelSource::new(new))
        .expect("TUNNEL_SRCS");
    assert_wrapped(&f, new_src, "whole again");
}

/// Decision 0033 for NAT and tunnelling: an established flow of a persistent virtual
/// server, stamped by the packet that recorded it, is forwarded by its entry and real
/// alone, byte for byte as through its virtual server: with the virtual server's
/// `VS_MAP` value taken away behind the daemon's back, its next packet is still
/// translated to its real, or wrapped from the tunnel's source. The program's clock
/// cannot be set: a packet passed is a failure only if a flow recorded right after it
/// bears a stamp less than `PERSIST_TOUCH_JIFFIES` later; otherwise a new flow tries
/// again.
#[test]
fn established_persistent_nat_and_tunnel_flows_go_by_their_real_between_touches() {
    use lb_common::{VsKey, PERSIST_TOUCH_JIFFIES};
    use xdpvs::dataplane::DataplaneContents as _;
    let persistent = "persistence: { timeout: 300s },\n      real_servers: [{ address: 10.0.1.11";
    let y = YAML
        .replace(
            "method: nat,\n      real_servers: [{ address: 10.0.1.11",
            &format!("method: nat, {persistent}"),
        )
        .replace(
            "method: tunnel,\n      real_servers: [{ address: 10.0.9.11",
            "method: tunnel, persistence: { timeout: 300s },\n      real_servers: [{ address: 10.0.9.11",
        );
    assert_ne!(y, YAML);
    let mut f = Fixture::new(&y);
    let ack = |vip: [u8; 4], sport: u16| {
        V4Packet {
            tcp_flags: TCP_ACK,
            ..V4Packet::tcp(CLIENT4, sport, vip, 80)
        }
        .build()
    };
    // Returns: the frame `vip`'s virtual server sends `frame` (from `sport`) on as.
    let sent = |f: &Fixture, vip: [u8; 4], sport: u16, frame: &[u8]| -> Vec<u8> {
        let k = key(CLIENT4.into(), sport, vip.into(), 80, PROTO_TCP);
        let real = f.flow_state(&k).expect("recorded").real_id;
        let addr = f.rec.dataplane().reals().expect("REALS")[real as usize].addr;
        let real = addr[0].to_ne_bytes();
        if vip == NAT_VIP4 {
            V4Packet {
                tcp_flags: TCP_ACK,
                dst_mac: real_mac(real.into()),
                src_mac: FIB_MAC,
                ..V4Packet::tcp(CLIENT4, sport, real, 8080)
            }
            .build()
        } else {
            ipip(frame, TUN_SRC4, real, 0)
        }
    };
    for (vip, name) in [(NAT_VIP4, "nat4"), (TUN_VIP4, "tun4")] {
        let vs_key = VsKey::new(IpAddr::from(vip), 80, PROTO_TCP);
        assert_ne!(
            f.vs_info(&vs_key).persist_timeout_ns,
            0,
            "{name} is persistent"
        );
        let mut by_its_real = false;
        for attempt in 0..20u16 {
            let sport = 7000 + attempt;
            let frame = ack(vip, sport);
            let r = f.run(&frame);
            let want = sent(&f, vip, sport, &frame);
            assert_eq!(
                (r.action, &r.out),
                (XDP_REDIRECT, &want),
                "{name}: recorded"
            );
            let k = key(CLIENT4.into(), sport, vip.into(), 80, PROTO_TCP);
            let stamped = f.flow_state(&k).expect("recorded").touched;
            let r = f.run_without_vs(&vs_key, &frame);
            if r.action != XDP_PASS {
                assert_eq!(
                    (r.action, &r.out),
                    (XDP_REDIRECT, &want),
                    "{name}: by its real"
                );
                by_its_real = true;
                break;
            }
            let probe = 9000 + attempt;
            let probe_key = key(CLIENT4.into(), probe, vip.into(), 80, PROTO_TCP);
            let now = f.ticks_now(&ack(vip, probe), &probe_key);
            assert!(
                now.wrapping_sub(stamped) >= PERSIST_TOUCH_JIFFIES,
                "{name}: stamped at tick {stamped}, passed before tick {now}"
            );
        }
        assert!(by_its_real, "{name}: 20 attempts, each slower than a touch");
    }
}

#[test]
fn tunnel_v6_wraps_the_packet_in_a_correct_outer_header() {
    let f = Fixture::new(YAML);
    let (client, vip, src) = (v6("2001:db8:c::7"), v6("2001:db8:f::101"), v6("fd00:1::1"));
    let frame = V6Packet::tcp(client, 5555, vip, 80).build();
    let k = key(client.into(), 5555, vip.into(), 80, PROTO_TCP);
    let real = f.predict("tun6", &k);
    // The first packet records the flow; the second is wrapped from its entry, its
    // real and `TUNNEL_SRCS` (decision 0028): the same frame.
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    let second = f.run(&frame);
    assert_eq!(
        (second.action, &second.out),
        (r.action, &r.out),
        "established"
    );
    let inner = &frame[14..];
    let mut want = eth(GW_MAC, FIB_MAC, None, 0x86dd);
    want.extend_from_slice(&ipv6_header(
        0,
        flow_hash(&k) & 0xf_ffff,
        inner.len(),
        41,
        64,
        src,
        v6of(real),
    ));
    want.extend_from_slice(inner);
    assert_eq!(r.out, want);
}

/// A CPU keeps a tunnel's next hop for at most `HOP_TTL_JIFFIES` (decisions 0023,
/// 0032): a route change reaches tunnelled packets once that has passed, without a
/// reload.
#[test]
fn a_route_change_reaches_tunnelled_packets_without_a_reload() {
    use std::time::{Duration, Instant};
    let f = Fixture::new(YAML);
    let frame = V4Packet::tcp(CLIENT4, 1000, TUN_VIP4, 80).build();
    // Every CPU's copy of the hop is filled before the change (the run takes place on
    // the calling thread's CPU).
    let allowed = cpus::allowed();
    for &cpu in &allowed {
        cpus::only_on(&[cpu]);
        let r = f.run(&frame);
        assert_eq!((r.action, &r.out[..6]), (XDP_REDIRECT, &GW_MAC[..]));
    }
    cpus::only_on(&allowed);
    let new_gw = [0x02, 0, 0, 0, 0xfe, 0x02];
    sh(
        &f,
        "ip neigh replace 10.0.1.253 lladdr 02:00:00:00:fe:02 dev fxa nud permanent",
    );
    f.net
        .exec(&["ip", "route", "replace", "10.0.9.0/24", "via", "10.0.1.253"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT);
        if r.out[..6] == new_gw {
            break;
        }
        assert_eq!(&r.out[..6], &GW_MAC[..], "one router or the other");
        assert!(
            Instant::now() < deadline,
            "still sent to the old router 5 s after the route changed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The interface a frame leaves by is read from `IFACE_INDEX` below ifindex 4,096 and
/// from `IFACES` above: either way a direct routing frame toward a real behind it
/// leaves with its MAC, and once it is removed, not at all.
#[test]
fn dr_leaves_by_an_interface_of_any_index_with_that_interfaces_mac() {
    let mut f = Fixture::new(YAML);
    let real: IpAddr = "10.0.1.21".parse().unwrap();
    let sport = (1000u16..)
        .find(|&p| {
            f.predict(
                "dr4",
                &key(CLIENT4.into(), p, DR_VIP4.into(), 80, PROTO_TCP),
            ) == real
        })
        .expect("a port to each real");
    let frame = V4Packet::tcp(CLIENT4, sport, DR_VIP4, 80).build();
    for (ifindex, mac) in [(7, [2, 0, 0, 0, 7, 7]), (5000, [2, 0, 0, 0, 0x50, 0])] {
        let info = lb_common::IfaceInfo {
            mac,
            flags: 0,
            _pad: 0,
        };
        f.rec.set_iface(ifindex, &info).expect("iface");
        f.set_next_hop(real, ifindex);
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT, "ifindex {ifindex}");
        assert_eq!(
            r.out[..12],
            [real_mac(real), mac].concat(),
            "ifindex {ifindex}"
        );
        let dropped = f.verdicts(reason::DROP_NO_IFACE);
        f.rec.remove_iface(ifindex).expect("remove");
        assert_eq!(f.run(&frame).action, XDP_DROP, "ifindex {ifindex} removed");
        assert_eq!(f.verdicts(reason::DROP_NO_IFACE), dropped + 1);
    }
}

/// Returns: a source port from which `client`'s flow to the TCP NAT virtual server
/// goes to real `want`.
fn port_to(f: &Fixture, client: [u8; 4], want: &str) -> u16 {
    let want: IpAddr = want.parse().expect("address");
    (1000u16..)
        .find(|&sport| {
            f.predict(
                "nat4",
                &key(client.into(), sport, NAT_VIP4.into(), 80, PROTO_TCP),
            ) == want
        })
        .expect("some port goes to each real")
}

/// Returns: the destination MAC a NAT request from `client:sport` leaves with.
fn nat_request_mac(f: &Fixture, client: [u8; 4], sport: u16) -> [u8; 6] {
    let r = f.run(&V4Packet::tcp(client, sport, NAT_VIP4, 80).build());
    assert_eq!(r.action, XDP_REDIRECT, "request from {client:?}:{sport}");
    r.out[..6].try_into().expect("a frame")
}

/// Decision 0024: the daemon marks a NAT real whose route depends on its address alone,
/// and only then does the data path keep a request's next hop for every client. A rule
/// on the clients' source, or a multipath route, takes the mark away, and each client's
/// request then goes where the kernel would send it.
#[test]
fn nat_requests_keep_one_hop_only_while_the_route_depends_on_the_real_alone() {
    let mut f = Fixture::new(YAML);
    let found = f.refresh_by_dest();
    let real: IpAddr = "10.0.1.11".parse().unwrap();
    assert!(found.reals.contains(&(real, true)), "{found:?}");
    assert!(found.reals.iter().all(|&(_, one)| one), "{found:?}");
    assert!(found.clients, "{found:?}");
    let (a, b) = ([192, 0, 2, 7], [192, 0, 2, 8]);
    let (pa, pb) = (port_to(&f, a, "10.0.1.11"), port_to(&f, b, "10.0.1.11"));
    assert_eq!(nat_request_mac(&f, a, pa), real_mac(real));
    assert_eq!(nat_request_mac(&f, b, pb), real_mac(real));

    // Client b's requests go through the router, by a rule on their source.
    sh(&f, "ip rule add from 192.0.2.8 lookup 100");
    sh(
        &f,
        "ip route add 10.0.1.0/24 via 10.0.1.254 dev fxa onlink table 100",
    );
    let found = f.refresh_by_dest();
    assert!(found.reals.iter().all(|&(_, one)| !one), "{found:?}");
    assert!(!found.clients, "{found:?}");
    // Not read, since the rules alone rule the clients out: not "too many routes".
    assert!(!found.too_many_routes, "{found:?}");
    // a first, so that a kept hop, if one were used, would be a's.
    assert_eq!(nat_request_mac(&f, a, pa), real_mac(real));
    assert_eq!(nat_request_mac(&f, b, pb), GW_MAC, "b's rule is followed");

    // No rule, but a real reached by two paths: that real alone loses the mark.
    sh(&f, "ip rule del from 192.0.2.8 lookup 100");
    sh(
        &f,
        "ip neigh replace 10.0.1.253 lladdr 02:00:00:00:fe:02 dev fxa nud permanent",
    );
    sh(&f, "ip route add 10.0.1.11/32 nexthop via 10.0.1.254 dev fxa onlink nexthop via 10.0.1.253 dev fxa onlink");
    let found = f.refresh_by_dest();
    assert!(!found.clients, "{found:?}");
    for (addr, one) in found.reals {
        assert_eq!(one, addr != real, "{addr}");
    }

    // Back to one path toward the real; two paths in a table of its own, which no
    // rule names now, still count against the clients (every table is read).
    sh(&f, "ip route del 10.0.1.11/32");
    assert!(f.refresh_by_dest().clients);
    sh(&f, "ip route add 198.51.100.0/24 table 100 nexthop via 10.0.1.254 dev fxa onlink nexthop via 10.0.1.253 dev fxa onlink");
    let found = f.refresh_by_dest();
    assert!(!found.clients, "{found:?}");
    assert!(found.reals.iter().all(|&(_, one)| one), "{found:?}");
}

/// A CPU keeps a NAT real's and a client's next hop for at most `HOP_TTL_JIFFIES`
/// (decision 0024), as a tunnel's: a route change reaches requests and replies once
/// that has passed, without a reload (the new routes depend on the destination alone
/// too, so the hops are still kept).
#[test]
fn a_route_change_reaches_nat_requests_and_replies_kept_per_cpu_without_a_reload() {
    use std::time::{Duration, Instant};
    let mut f = Fixture::new(YAML);
    f.refresh_by_dest();
    let real: IpAddr = "10.0.1.11".parse().unwrap();
    let client = [192, 0, 2, 7];
    let sport = port_to(&f, client, "10.0.1.11");
    let allowed = cpus::allowed();
    for &cpu in &allowed {
        cpus::only_on(&[cpu]);
        assert_eq!(nat_request_mac(&f, client, sport), real_mac(real));
        assert_eq!(nat_reply_mac(&f, client, sport), CLIENT_MAC);
    }
    cpus::only_on(&allowed);
    // Each CPU that ran them keeps both hops: toward the real, and toward the client.
    let id = f
        .rec
        .real_id(&RealKey::real("nat4", real, 8080))
        .expect("real id");
    let kept = |map: &str, slot: u32, want: u32| {
        f.kept_hops(map, slot)
            .iter()
            .filter(|&&(at, id)| at != 0 && id == want)
            .count()
    };
    assert_eq!(
        kept(REAL_HOPS, id & (REAL_HOP_SLOTS - 1), id),
        allowed.len()
    );
    let slot = client_hop_slot(&[u32::from_ne_bytes(client), 0, 0, 0]);
    let v4 = u32::from(lb_common::FAMILY_V4);
    assert_eq!(kept(CLIENT_HOPS, slot, v4), allowed.len());
    for to in ["10.0.1.11/32", "192.0.2.7/32"] {
        sh(
            &f,
            &format!("ip route add {to} via 10.0.1.254 dev fxa onlink"),
        );
    }
    let found = f.refresh_by_dest();
    assert!(
        found.reals.contains(&(real, true)) && found.clients,
        "{found:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut request, mut reply) = (false, false);
    while !(request && reply) {
        let mac = nat_request_mac(&f, client, sport);
        assert!(
            mac == real_mac(real) || mac == GW_MAC,
            "the real or the router"
        );
        request |= mac == GW_MAC;
        let mac = nat_reply_mac(&f, client, sport);
        assert!(
            mac == CLIENT_MAC || mac == GW_MAC,
            "the client or the router"
        );
        reply |= mac == GW_MAC;
        assert!(
            Instant::now() < deadline,
            "5 s after the routes changed: request by the router {request}, reply {reply}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Returns: the destination MAC the reply of real `real` (port 8080) to `client:sport`
/// leaves with, once the request recorded the flow.
fn nat_reply_mac(f: &Fixture, client: [u8; 4], sport: u16) -> [u8; 6] {
    let real = f.predict(
        "nat4",
        &key(client.into(), sport, NAT_VIP4.into(), 80, PROTO_TCP),
    );
    nat_request_mac(f, client, sport);
    let r = f.run(&V4Packet::tcp(v4(real), 8080, client, sport).build());
    assert_eq!(r.action, XDP_REDIRECT, "reply to {client:?}:{sport}");
    r.out[..6].try_into().expect("a frame")
}

/// With routes hashed over ports (`fib_multipath_hash_policy` 1) and two paths toward
/// a real and toward a client, the flows of one real and one client spread over both
/// paths: the daemon finds that the routes depend on more than the destination, and
/// neither requests nor replies reuse a hop another flow found (decision 0024).
#[test]
fn flows_spread_over_multipath_routes_toward_a_real_and_a_client() {
    let mut f = Fixture::new(YAML);
    let other_gw = [0x02, 0, 0, 0, 0xfe, 0x02];
    sh(&f, "sysctl -qw net.ipv4.fib_multipath_hash_policy=1");
    sh(
        &f,
        "ip neigh replace 10.0.1.253 lladdr 02:00:00:00:fe:02 dev fxa nud permanent",
    );
    for to in ["10.0.1.11/32", "192.0.2.8/32"] {
        sh(&f, &format!("ip route add {to} nexthop via 10.0.1.254 dev fxa onlink nexthop via 10.0.1.253 dev fxa onlink"));
    }
    let found = f.refresh_by_dest();
    assert!(!found.clients, "{found:?}");
    let real: IpAddr = "10.0.1.11".parse().unwrap();
    assert!(found.reals.contains(&(real, false)), "{found:?}");
    // Every run on one CPU, within a few ms: a hop kept for the first flow would be
    // used for all of them.
    let allowed = cpus::allowed();
    cpus::only_on(&allowed[..1]);
    let client = [192, 0, 2, 8];
    let (mut to_real, mut to_client) = (HashSet::new(), HashSet::new());
    let mut sport = 1000;
    while to_real.len() < 32 {
        sport += 1;
        let to = f.predict(
            "nat4",
            &key(client.into(), sport, NAT_VIP4.into(), 80, PROTO_TCP),
        );
        if to != real {
            continue;
        }
        to_real.insert((sport, nat_request_mac(&f, client, sport)));
        to_client.insert(nat_reply_mac(&f, client, sport));
    }
    cpus::only_on(&allowed);
    // Nothing was kept for that real, nor for that client.
    let id = f
        .rec
        .real_id(&RealKey::real("nat4", real, 8080))
        .expect("real id");
    let never = |map: &str, slot: u32| f.kept_hops(map, slot).iter().all(|&(at, _)| at == 0);
    assert!(
        never(REAL_HOPS, id & (REAL_HOP_SLOTS - 1)),
        "a hop kept for {real}"
    );
    let slot = client_hop_slot(&[u32::from_ne_bytes(client), 0, 0, 0]);
    assert!(never(CLIENT_HOPS, slot), "a hop kept for the client");
    let macs: HashSet<[u8; 6]> = to_real.iter().map(|&(_, m)| m).collect();
    assert_eq!(
        macs,
        HashSet::from([GW_MAC, other_gw]),
        "requests to {real}"
    );
    assert_eq!(to_client, HashSet::from([GW_MAC, other_gw]), "replies");
}

/// Runs `cmd` (words split at spaces) in the fixture's namespace.
fn sh(f: &Fixture, cmd: &str) {
    f.net.exec(&cmd.split(' ').collect::<Vec<_>>());
}

#[test]
fn tunnel_too_big_is_answered_with_icmp_carrying_the_usable_mtu() {
    let f = Fixture::new(YAML);
    // On one CPU, so that the too big packet finds the hop the one before it left.
    let allowed = cpus::allowed();
    cpus::only_on(&allowed[..1]);
    // 1480 bytes of IP packet fit a 1500 MTU with the 20-byte outer header.
    let sized = |ip_len: usize, sport: u16| {
        let mut p = V4Packet::tcp(CLIENT4, sport, TUN_VIP4, 80);
        p.payload = vec![0x5a; ip_len - 40];
        p
    };
    let fits = sized(1480, 100).build();
    assert_eq!(
        f.run(&fits).action,
        XDP_REDIRECT,
        "exactly the MTU once wrapped"
    );
    // The same flow, to the same real: its next hop is kept from the packet before
    // (decision 0023), which must not let a longer packet past the MTU.
    let big = sized(1481, 100).build();
    let r = f.run(&big);
    assert_eq!(
        r.action, XDP_TX,
        "answered back out of the receiving interface"
    );
    assert_eq!(r.out, icmp4_too_big(&big, 1480, 128));
    assert_eq!(f.verdicts(reason::ICMP_TOO_BIG), 1);

    // Without DF the sender allowed fragmentation, which XDP cannot do: counted drop.
    let mut no_df = big.clone();
    no_df[20] = 0;
    no_df[24..26].copy_from_slice(&[0, 0]);
    let c = tests::packet::csum(&no_df[14..34]);
    no_df[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(f.run(&no_df).action, XDP_DROP);
    assert_eq!(f.verdicts(reason::DROP_TOO_BIG), 1);

    // IPv6: 1460 + 40 = 1500 fits; one more byte is answered with packet-too-big 1460.
    let (client, vip) = (v6("2001:db8:c::7"), v6("2001:db8:f::101"));
    let sized6 = |ip_len: usize| {
        let mut p = V6Packet::tcp(client, 600, vip, 80);
        p.payload = vec![0xa5; ip_len - 60];
        p.build()
    };
    assert_eq!(f.run(&sized6(1460)).action, XDP_REDIRECT);
    let big6 = sized6(1461);
    let r = f.run(&big6);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out, icmp6_too_big(&big6, 1460, 128));
    cpus::only_on(&allowed);
}

/// Returns: `frame` as direct routing sends it to `real`: only the MACs rewritten.
fn dr_to(frame: &[u8], real: IpAddr) -> Vec<u8> {
    let mut w = frame.to_vec();
    w[0..6].copy_from_slice(&real_mac(real));
    w[6..12].copy_from_slice(&LB_MAC);
    w
}

/// Returns: the IP packet of `frame` wrapped in IPv4 from `src` to `real` with `tos`
/// copied and DF, as the tunnel sends it through the fixture's router.
fn ipip(frame: &[u8], src: [u8; 4], real: [u8; 4], tos: u8) -> Vec<u8> {
    let inner = &frame[14..];
    let mut w = eth(GW_MAC, FIB_MAC, None, 0x0800);
    w.extend_from_slice(&ipv4_header(
        tos,
        20 + inner.len(),
        0,
        0x4000,
        64,
        4,
        src,
        real,
    ));
    w.extend_from_slice(inner);
    w
}

/// Returns: the IP packet of `frame` as the tunnel sends it to `real` through the
/// fixture's router: IPIP from the IPv4 tunnel source with `tos` copied and DF, or
/// IPv6-in-IPv6 with the flow label of `k`.
fn tunnelled(frame: &[u8], real: IpAddr, k: &FlowKey, tos: u8) -> Vec<u8> {
    if real.is_ipv4() {
        return ipip(frame, TUN_SRC4, v4(real), tos);
    }
    let inner = &frame[14..];
    let mut w = eth(GW_MAC, FIB_MAC, None, 0x86dd);
    w.extend_from_slice(&ipv6_header(
        tos,
        flow_hash(k) & 0xf_ffff,
        inner.len(),
        41,
        64,
        v6("fd00:1::1"),
        v6of(real),
    ));
    w.extend_from_slice(inner);
    w
}

#[test]
fn icmp_errors_about_dr_and_tunnel_flows_reach_the_flows_real_v4_and_v6() {
    let f = Fixture::new(YAML);
    let flows_before = f.flow_entries();
    // What a router on the client's path sends when a real's reply (from the VIP) is
    // too big for it: "fragmentation needed" / "packet too big", addressed to the VIP,
    // arriving at the balancer's MAC.
    for (vs, vip) in [("dr4", DR_VIP4), ("tun4", TUN_VIP4)] {
        for sport in [1000u16, 2000, 3000] {
            let reply = V4Packet {
                src_mac: LB_MAC,
                dst_mac: GW_MAC,
                ..V4Packet::tcp(vip, 80, CLIENT4, sport)
            }
            .build();
            let err = icmp4_too_big(&reply, 1280, 28);
            let k = key(CLIENT4.into(), sport, vip.into(), 80, PROTO_TCP);
            let real = f.predict(vs, &k);
            let r = f.run(&err);
            let want = if vs == "dr4" {
                assert_eq!(r.action, XDP_TX, "{vs} {sport}");
                dr_to(&err, real)
            } else {
                assert_eq!(r.action, XDP_REDIRECT, "{vs} {sport}");
                tunnelled(&err, real, &k, 0xc0)
            };
            assert_eq!(r.out, want, "{vs} sport {sport}: the error goes to {real}");
        }
    }
    let (client, dr6, tun6) = (
        v6("2001:db8:c::7"),
        v6("2001:db8:f::102"),
        v6("2001:db8:f::101"),
    );
    for (vs, vip) in [("dr6", dr6), ("tun6", tun6)] {
        let reply = V6Packet {
            src_mac: LB_MAC,
            dst_mac: GW_MAC,
            ..V6Packet::tcp(vip, 80, client, 4444)
        }
        .build();
        let err = icmp6_too_big(&reply, 1280, 48);
        let k = key(client.into(), 4444, vip.into(), 80, PROTO_TCP);
        let real = f.predict(vs, &k);
        let r = f.run(&err);
        let want = if vs == "dr6" {
            assert_eq!(r.action, XDP_TX, "{vs}");
            dr_to(&err, real)
        } else {
            assert_eq!(r.action, XDP_REDIRECT, "{vs}");
            tunnelled(&err, real, &k, 0)
        };
        assert_eq!(r.out, want, "{vs}: the error goes to {real}");
    }
    assert_eq!(f.verdicts(reason::FWD_ICMP_ERROR), 8);
    assert_eq!(
        f.flow_entries(),
        flows_before,
        "an error creates no connection table entry"
    );

    // Not forwarded: an error quoting a packet from another address than the one it
    // is sent to, an echo request.
    let reply = V4Packet {
        src_mac: LB_MAC,
        ..V4Packet::tcp([10, 0, 0, 99], 80, CLIENT4, 1000)
    }
    .build();
    let mut forged = icmp4_too_big(&reply, 1280, 28);
    forged[30..34].copy_from_slice(&DR_VIP4);
    forged[24..26].copy_from_slice(&[0, 0]);
    let c = tests::packet::csum(&forged[14..34]);
    forged[24..26].copy_from_slice(&c.to_be_bytes());
    let mut echo = eth(LB_MAC, GW_MAC, None, 0x0800);
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let c = tests::packet::csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    echo.extend_from_slice(&ipv4_header(0, 28, 0, 0, 64, 1, CLIENT4, DR_VIP4));
    echo.extend_from_slice(&icmp);
    for (what, frame) in [
        ("error quoting another source", &forged),
        ("echo request", &echo),
    ] {
        let r = f.run(frame);
        assert_eq!((r.action, &r.out), (XDP_PASS, frame), "{what}");
    }
    assert_eq!(f.verdicts(reason::FWD_ICMP_ERROR), 8);
}

#[test]
fn icmp_errors_about_nat_flows_are_translated_both_ways() {
    let f = Fixture::new(YAML);
    // A real's port unreachable about a UDP datagram it got through NAT reaches the
    // client quoting the datagram the client sent (to VIP:53), from the VIP.
    let req = V4Packet::udp(CLIENT4, 5000, NAT_VIP4, 53).build();
    let r = f.run(&req);
    assert_eq!(r.action, XDP_REDIRECT, "the datagram goes to the real");
    let real: [u8; 4] = [10, 0, 1, 53];
    let received = &r.out[14..];
    let err = icmp4_error(
        LB_MAC,
        real_mac(real.into()),
        real,
        CLIENT4,
        3,
        3,
        [0; 4],
        &received[..28],
    );
    let r = f.run(&err);
    assert_eq!(r.action, XDP_REDIRECT, "toward the client");
    let want = icmp4_error(
        CLIENT_MAC,
        FIB_MAC,
        NAT_VIP4,
        CLIENT4,
        3,
        3,
        [0; 4],
        &req[14..42],
    );
    assert_eq!(
        r.out, want,
        "the client sees the VIP's error about its own datagram"
    );
    assert_eq!(
        f.flow_entries(),
        0,
        "an error found by the datagram's mark records nothing (decision 0021)"
    );

    // A router's fragmentation-needed about a reply from VIP:80 reaches the real that
    // serves the flow, quoting the reply as the real sent it (from real:8080).
    let syn = V4Packet::tcp(CLIENT4, 6000, NAT_VIP4, 80).build();
    assert_eq!(f.run(&syn).action, XDP_REDIRECT);
    let real = v4(f.predict(
        "nat4",
        &key(CLIENT4.into(), 6000, NAT_VIP4.into(), 80, PROTO_TCP),
    ));
    let seen_by_client = V4Packet::tcp(NAT_VIP4, 80, CLIENT4, 6000).build();
    let sent_by_real = V4Packet::tcp(real, 8080, CLIENT4, 6000).build();
    let router = [192, 0, 2, 1];
    let mtu = [0, 0, 0x05, 0x00];
    let err = icmp4_error(
        LB_MAC,
        GW_MAC,
        router,
        NAT_VIP4,
        3,
        4,
        mtu,
        &seen_by_client[14..42],
    );
    let r = f.run(&err);
    assert_eq!(r.action, XDP_REDIRECT, "toward the real");
    let want = icmp4_error(
        real_mac(real.into()),
        FIB_MAC,
        router,
        real,
        3,
        4,
        mtu,
        &sent_by_real[14..42],
    );
    assert_eq!(r.out, want, "the real sees the error about its own reply");

    // IPv6: a real's port unreachable quoting the whole TCP header (its checksum is
    // translated too).
    let (client, vip) = (v6("2001:db8:c::7"), v6("2001:db8:f::100"));
    let req = V6Packet::tcp(client, 7000, vip, 80).build();
    let r = f.run(&req);
    assert_eq!(r.action, XDP_REDIRECT);
    let real = v6of(f.predict("nat6", &key(client.into(), 7000, vip.into(), 80, PROTO_TCP)));
    let received = &r.out[14..];
    let err = icmp6_error(
        LB_MAC,
        real_mac(real.into()),
        real,
        client,
        1,
        4,
        [0; 4],
        &received[..60],
    );
    let r = f.run(&err);
    assert_eq!(r.action, XDP_REDIRECT);
    let want = icmp6_error(CLIENT_MAC, FIB_MAC, vip, client, 1, 4, [0; 4], &req[14..74]);
    assert_eq!(r.out, want);
    assert_eq!(f.verdicts(reason::FWD_ICMP_ERROR), 3);
}

#[test]
fn dr_v6_rewrites_only_macs_and_ipv6_extension_headers_pass() {
    let f = Fixture::new(YAML);
    let (client, vip) = (v6("2001:db8:c::7"), v6("2001:db8:f::102"));
    let frame = V6Packet::tcp(client, 7777, vip, 80).build();
    let real = f.predict("dr6", &key(client.into(), 7777, vip.into(), 80, PROTO_TCP));
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX);
    let mut want = frame.clone();
    want[0..6].copy_from_slice(&real_mac(real));
    want[6..12].copy_from_slice(&LB_MAC);
    assert_eq!(r.out, want);

    for name in ["dr6", "nat6", "tun6"] {
        let vip = v6(match name {
            "dr6" => "2001:db8:f::102",
            "nat6" => "2001:db8:f::100",
            _ => "2001:db8:f::101",
        });
        let ext = V6Packet {
            hop_by_hop: true,
            ..V6Packet::tcp(client, 7778, vip, 80)
        }
        .build();
        let r = f.run(&ext);
        assert_eq!(
            (r.action, &r.out),
            (XDP_PASS, &ext),
            "{name}: hop-by-hop header: passed unchanged"
        );
    }
    assert_eq!(f.verdicts(reason::PASS_IPV6_EXT), 3);
    let udp = V6Packet::udp(client, 1, vip, 80).build();
    assert_eq!(f.run(&udp).action, XDP_PASS, "UDP to a TCP VS");
}

#[test]
fn decap_unwraps_only_tunnelled_packets_for_configured_vips() {
    let mut f = DecapFixture::load();
    let real4: IpAddr = "10.0.9.11".parse().unwrap();
    let real6: IpAddr = "fd00:9::11".parse().unwrap();
    f.set_decap(
        &[IpAddr::from(TUN_VIP4), "2001:db8:f::101".parse().unwrap()],
        &[real4, real6],
    );
    let wrap4 = |inner: &[u8], dst: [u8; 4]| {
        let mut w = eth([2, 0, 0, 0, 0, 0x11], FIB_MAC, None, 0x0800);
        w.extend_from_slice(&ipv4_header(
            0,
            20 + inner.len() - 14,
            0,
            0x4000,
            64,
            4,
            TUN_SRC4,
            dst,
        ));
        w.extend_from_slice(&inner[14..]);
        w
    };
    let inner = V4Packet {
        dst_mac: [2, 0, 0, 0, 0, 0x11],
        src_mac: FIB_MAC,
        ..V4Packet::tcp(CLIENT4, 999, TUN_VIP4, 80)
    }
    .build();
    let r = f.run_n(PROG_DECAP, &wrap4(&inner, v4(real4)), 1);
    assert_eq!(
        (r.action, &r.out),
        (XDP_PASS, &inner),
        "outer header stripped, MACs kept"
    );

    let not_vip = V4Packet::tcp(CLIENT4, 999, [10, 0, 0, 222], 80).build();
    let not_local = wrap4(&inner, [10, 0, 9, 99]);
    let plain = inner.clone();
    for (what, frame) in [
        ("inner not a VIP", wrap4(&not_vip, v4(real4))),
        ("outer not local", not_local),
        ("not tunnelled", plain),
    ] {
        let r = f.run_n(PROG_DECAP, &frame, 1);
        assert_eq!((r.action, &r.out), (XDP_PASS, &frame), "{what}: unchanged");
    }

    let (client, vip) = (v6("2001:db8:c::7"), v6("2001:db8:f::101"));
    let inner6 = V6Packet {
        dst_mac: [2, 0, 0, 0, 0, 0x11],
        src_mac: FIB_MAC,
        ..V6Packet::tcp(client, 999, vip, 80)
    }
    .build();
    let mut w = eth([2, 0, 0, 0, 0, 0x11], FIB_MAC, None, 0x86dd);
    w.extend_from_slice(&ipv6_header(
        0,
        0,
        inner6.len() - 14,
        41,
        64,
        v6("fd00:1::1"),
        v6of(real6),
    ));
    w.extend_from_slice(&inner6[14..]);
    let r = f.run_n(PROG_DECAP, &w, 1);
    assert_eq!(
        (r.action, &r.out),
        (XDP_PASS, &inner6),
        "IPv6-in-IPv6 stripped"
    );
    assert_eq!(f.decap_count(DECAP_DONE), 2);
}

const FRAG_YAML: &str = "\
interfaces: [lo]
tunnel_source: [10.0.1.1, fd00:1::1]
virtual_servers:
  - { name: dns, address: 10.0.0.110, port: 53, protocol: udp, method: dr, fragments: true,
      real_servers: [{ address: 10.0.1.31 }, { address: 10.0.1.32 }, { address: 10.0.1.33 }] }
  - { name: ntp, address: 10.0.0.110, port: 123, protocol: udp, method: dr,
      real_servers: [{ address: 10.0.1.34 }] }
  - { name: web, address: 10.0.0.110, port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 10.0.1.35 }] }
  - { name: dns6, address: '2001:db8:f::110', port: 53, protocol: udp, method: tunnel,
      fragments: true, real_servers: [{ address: 'fd00:9::31' }, { address: 'fd00:9::32' }] }
";

#[test]
fn every_fragment_of_a_datagram_reaches_the_same_real_v4_dr_and_v6_tunnel() {
    let f = Fixture::new(FRAG_YAML);
    let vip = [10, 0, 0, 110];
    let mut reals = std::collections::HashSet::new();
    for c in 1..=20u8 {
        let client = [192, 0, 2, c];
        let mut p = V4Packet::udp(client, 40000 + u16::from(c), vip, 53);
        p.payload = vec![0x42; 3000];
        let frame = p.build();
        let real = f.predict("dns", &key(client.into(), 0, vip.into(), 0, 17));
        reals.insert(real);
        for (i, part) in fragments_v4(&frame, 1480, u16::from(c)).iter().enumerate() {
            let r = f.run(part);
            assert_eq!(r.action, XDP_TX, "client {c}, fragment {i}");
            let want = dr_to(part, real);
            assert_eq!(
                r.out, want,
                "client {c}, fragment {i}: to {real}, by addresses"
            );
        }
    }
    assert!(reals.len() >= 2, "clients spread over the reals: {reals:?}");

    // A datagram in one piece is balanced by its ports as before.
    let whole = V4Packet::udp([192, 0, 2, 1], 999, vip, 53).build();
    let real = f.predict("dns", &key([192, 0, 2, 1].into(), 999, vip.into(), 53, 17));
    let r = f.run(&whole);
    assert_eq!(&r.out[0..6], &real_mac(real));

    // Fragments of a protocol no virtual server at the address takes: the kernel's.
    let mut tcp = V4Packet::tcp([192, 0, 2, 1], 999, vip, 80);
    tcp.payload = vec![0; 64];
    let mut frag = tcp.build();
    frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    frag[24..26].copy_from_slice(&[0, 0]);
    let c = tests::packet::csum(&frag[14..34]);
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    let r = f.run(&frag);
    assert_eq!((r.action, &r.out), (XDP_PASS, &frag), "TCP fragment");
    assert_eq!(f.verdicts(reason::PASS_FRAGMENT), 1);

    // IPv6: a fragment header after the fixed one; tunnelled to one real by addresses.
    let (client, vip6) = (v6("2001:db8:c::7"), v6("2001:db8:f::110"));
    let mut p = V6Packet::udp(client, 4000, vip6, 53);
    // Small enough to fit the 1500-byte path once tunnelled.
    p.payload = vec![0x24; 2000];
    let whole = p.build();
    let datagram = &whole[54..];
    let k = key(client.into(), 0, vip6.into(), 0, 17);
    let real = f.predict("dns6", &k);
    for (i, (chunk, off_flags)) in [(&datagram[..1232], 1u16), (&datagram[1232..], 1232)]
        .into_iter()
        .enumerate()
    {
        let mut frame = eth(LB_MAC, [2, 0, 0, 0, 0, 0xcc], None, 0x86dd);
        let mut fh = vec![17, 0];
        fh.extend_from_slice(&off_flags.to_be_bytes());
        fh.extend_from_slice(&7u32.to_be_bytes());
        frame.extend_from_slice(&ipv6_header(
            0,
            0,
            fh.len() + chunk.len(),
            44,
            64,
            client,
            vip6,
        ));
        frame.extend_from_slice(&fh);
        frame.extend_from_slice(chunk);
        let r = f.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT, "IPv6 fragment {i}");
        let want = tunnelled(&frame, real, &k, 0);
        assert_eq!(r.out, want, "IPv6 fragment {i}: tunnelled to {real}");
    }
}
