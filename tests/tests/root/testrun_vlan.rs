//! VLAN trunks under BPF_PROG_TEST_RUN, byte-exact: tagged frames (802.1Q, and QinQ:
//! 802.1ad then 802.1Q) routed by NAT and tunnel as arriving by their VLAN device, and
//! frames routed out of a VLAN device tagged with its tags. Expected frames are built
//! from scratch by the test's packet code. The fixture's VLAN world (interfaces
//! standing in for VLAN devices, which this kernel cannot make): see
//! `Fixture::add_vlans`.

use std::net::IpAddr;

use lb_common::{reason, FlowKey, PROTO_TCP};
use tests::{
    fixture::{real_mac, Fixture, CLIENT_MAC, FIB_MAC, GW_MAC, LB_MAC, QINQ_MAC, VLAN_MAC},
    packet::{eth, ipv6_header, V4Packet, V6Packet},
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const YAML: &str = "\
interfaces: [lo]
tunnel_source: [10.0.1.1, fd00:1::1]
virtual_servers:
  - { name: nat, address: 10.0.0.100, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.11, port: 8080 }] }
  - { name: natq, address: 10.0.0.100, port: 81, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.20.5, port: 8080 }] }
  - { name: tun6, address: '2001:db8:f::101', port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 'fd00:9::11' }] }
  - { name: dr, address: 10.0.0.102, port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 10.0.100.21 }] }
";

const VIP: [u8; 4] = [10, 0, 0, 100];
/// A client on VLAN 100, and one on the untagged network.
const VCLIENT: [u8; 4] = [198, 51, 100, 7];
const CLIENT: [u8; 4] = [192, 0, 2, 7];
const REAL: [u8; 4] = [10, 0, 1, 11];
const QREAL: [u8; 4] = [10, 0, 20, 5];

/// Returns: `frame` with VLAN tags (TPID, VLAN id) inserted after its MACs, outermost first.
fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

const V100: &[(u16, u16)] = &[(0x8100, 100)];
const QINQ: &[(u16, u16)] = &[(0x88a8, 300), (0x8100, 200)];

/// Returns: the fixture with its VLAN devices, and the ifindex of fxv.
fn fixture() -> (Fixture, u32) {
    let mut f = Fixture::new(YAML);
    let (fxv, _) = f.add_vlans();
    f.neighbour(IpAddr::from(QREAL), "fxq");
    (f, fxv)
}

#[test]
fn nat_from_a_vlan_client_to_an_untagged_real_and_back() {
    let (f, _) = fixture();
    let req = tagged(&V4Packet::tcp(VCLIENT, 4000, VIP, 80).build(), V100);
    let r = f.run(&req);
    assert_eq!(r.action, XDP_REDIRECT, "routed from fxv out of fxa");
    let want = V4Packet {
        dst_mac: real_mac(REAL.into()),
        src_mac: FIB_MAC,
        ..V4Packet::tcp(VCLIENT, 4000, REAL, 8080)
    }
    .build();
    assert_eq!(r.out, want, "tag removed, destination rewritten");

    let reply = V4Packet::tcp(REAL, 8080, VCLIENT, 4000).build();
    let r = f.run(&reply);
    assert_eq!(
        r.action, XDP_TX,
        "out of fxv: tagged on the trunk it came in by"
    );
    let want = V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: VLAN_MAC,
        vlan: Some(100),
        ..V4Packet::tcp(VIP, 80, VCLIENT, 4000)
    }
    .build();
    assert_eq!(r.out, want, "reply restored and tagged 100");
}

#[test]
fn nat_to_a_real_behind_qinq_and_back() {
    let (f, _) = fixture();
    let req = V4Packet::tcp(CLIENT, 4001, VIP, 81).build();
    let r = f.run(&req);
    assert_eq!(r.action, XDP_TX, "out of fxq: sent on the trunk");
    let want = V4Packet {
        dst_mac: real_mac(QREAL.into()),
        src_mac: QINQ_MAC,
        ..V4Packet::tcp(CLIENT, 4001, QREAL, 8080)
    }
    .build();
    assert_eq!(
        r.out,
        tagged(&want, QINQ),
        "two tags pushed: 802.1ad 300, 802.1Q 200"
    );

    let reply = V4Packet {
        dst_mac: LB_MAC,
        ..V4Packet::tcp(QREAL, 8080, CLIENT, 4001)
    }
    .build();
    let r = f.run(&tagged(&reply, QINQ));
    assert_eq!(r.action, XDP_REDIRECT, "routed from fxq out of fxa");
    let want = V4Packet {
        dst_mac: CLIENT_MAC,
        src_mac: FIB_MAC,
        ..V4Packet::tcp(VIP, 81, CLIENT, 4001)
    }
    .build();
    assert_eq!(r.out, want, "both tags removed, source restored");
}

#[test]
fn tunnel_v6_from_a_vlan_client() {
    let (f, _) = fixture();
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    let (client, vip) = (v6("2001:db8:100::7"), v6("2001:db8:f::101"));
    let frame = V6Packet::tcp(client, 5555, vip, 80).build();
    let r = f.run(&tagged(&frame, V100));
    assert_eq!(r.action, XDP_REDIRECT);
    let inner = &frame[14..];
    let k = FlowKey::new(client.into(), 5555, vip.into(), 80, PROTO_TCP);
    let mut want = eth(GW_MAC, FIB_MAC, None, 0x86dd);
    want.extend_from_slice(&ipv6_header(
        0,
        lb_common::flow_hash(&k) & 0xf_ffff,
        inner.len(),
        41,
        64,
        v6("fd00:1::1"),
        v6("fd00:9::11"),
    ));
    want.extend_from_slice(inner);
    assert_eq!(r.out, want, "untagged IPv6-in-IPv6 toward the router");
}

#[test]
fn dr_to_a_real_on_a_vlan_device_gets_its_tag() {
    let (mut f, fxv) = fixture();
    f.set_next_hop("10.0.100.21".parse().expect("addr"), fxv);
    let frame = V4Packet::tcp(CLIENT, 4002, [10, 0, 0, 102], 80).build();
    let r = f.run(&frame);
    assert_eq!(r.action, XDP_TX);
    let mut want = frame.clone();
    want[0..6].copy_from_slice(&real_mac("10.0.100.21".parse().expect("addr")));
    want[6..12].copy_from_slice(&VLAN_MAC);
    assert_eq!(r.out, tagged(&want, V100), "MACs rewritten, tag 100 pushed");

    // Whatever the frame came in with, a real on a VLAN device gets that VLAN's tag.
    let r = f.run(&tagged(&frame, &[(0x8100, 999)]));
    assert_eq!(r.action, XDP_TX);
    assert_eq!(
        r.out,
        tagged(&want, V100),
        "egress tags replace the frame's"
    );
}

#[test]
fn a_vlan_without_a_device_is_dropped_for_routed_methods() {
    let (f, _) = fixture();
    let req = tagged(
        &V4Packet::tcp(VCLIENT, 4003, VIP, 80).build(),
        &[(0x8100, 999)],
    );
    let r = f.run(&req);
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(f.verdicts(reason::DROP_VLAN), 1);
    // A third tag is more than the data path parses: the kernel's.
    let req = tagged(
        &V4Packet::tcp(VCLIENT, 4004, VIP, 80).build(),
        &[(0x88a8, 300), (0x8100, 200), (0x8100, 7)],
    );
    let r = f.run(&req);
    assert_eq!(r.action, 2, "XDP_PASS");
    assert_eq!(f.verdicts(reason::PASS_NOT_IP), 1);
}
