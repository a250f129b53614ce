//! NAT of fragmented datagrams under BPF_PROG_TEST_RUN, byte-exact (decision 0016): a
//! request's fragments reach the real chosen by addresses, the first with the real's
//! port; a fragmented reply leaves as the VIP's, the first fragment with the VIP's
//! port. Every expected fragment is cut here from a datagram built from scratch as the
//! real, or the client, must receive it (so its checksum is computed independently),
//! never derived from the program's output.

use std::net::IpAddr;

use lb_common::{reason, FlowKey, PROTO_UDP};
use tests::{
    fixture::{real_mac, Fixture, CLIENT_MAC, FIB_MAC, LB_MAC},
    packet::{fragments_v4, fragments_v6, V4Packet, V6Packet},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const VIP4: [u8; 4] = [10, 0, 0, 120];
const CLIENT6: &str = "2001:db8:c::7";
const VIP6: &str = "2001:db8:f::120";
const CLIENT_PORT: u16 = 40000;

const YAML: &str = "\
interfaces: [lo]
virtual_servers:
  - { name: dns4, address: 10.0.0.120, port: 53, protocol: udp, method: nat, fragments: true,
      real_servers: [{ address: 10.0.1.61, port: 5353 }, { address: 10.0.1.62, port: 5353 }] }
  - { name: dns6, address: '2001:db8:f::120', port: 53, protocol: udp, method: nat,
      fragments: true,
      real_servers: [{ address: 'fd00:1::61', port: 5353 }, { address: 'fd00:1::62', port: 5353 }] }
";

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

/// A datagram's payload: 3,000 bytes, two full fragments and a short one on a
/// 1500-byte path.
fn payload(seed: usize) -> Vec<u8> {
    (0..3000).map(|i| ((i + seed) % 251) as u8).collect()
}

/// One family's virtual server, client and fragment size.
struct Family {
    vs: &'static str,
    client: IpAddr,
    vip: IpAddr,
    /// Fragment payload size (a multiple of 8 filling a 1500-byte packet).
    size: usize,
}

fn family4() -> Family {
    Family {
        vs: "dns4",
        client: CLIENT4.into(),
        vip: VIP4.into(),
        size: 1480,
    }
}

fn family6() -> Family {
    Family {
        vs: "dns6",
        client: v6(CLIENT6).into(),
        vip: v6(VIP6).into(),
        size: 1232,
    }
}

/// The client's MAC on the crafted frames, and a real's (the balancer rewrites both).
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];

/// A UDP datagram between two ends (address, port), built whole with every checksum
/// computed here, then split as its sender would.
struct Datagram {
    from: (IpAddr, u16),
    to: (IpAddr, u16),
    /// Source and destination MACs of every fragment.
    macs: ([u8; 6], [u8; 6]),
    /// Seed of its payload.
    seed: usize,
}

impl Datagram {
    /// Returns: its fragments of `fam.size` bytes, identification `id`.
    fn fragments(&self, fam: &Family, id: u32) -> Vec<Vec<u8>> {
        let ((src, sport), (dst, dport)) = (self.from, self.to);
        let (smac, dmac) = self.macs;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let whole = V4Packet {
                    src_mac: smac,
                    dst_mac: dmac,
                    payload: payload(self.seed),
                    ..V4Packet::udp(s.octets(), sport, d.octets(), dport)
                }
                .build();
                fragments_v4(&whole, fam.size, id as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let whole = V6Packet {
                    src_mac: smac,
                    dst_mac: dmac,
                    payload: payload(self.seed),
                    ..V6Packet::udp(s.octets(), sport, d.octets(), dport)
                }
                .build();
                fragments_v6(&whole, fam.size, id)
            }
            _ => panic!("one family per datagram"),
        }
    }
}

/// Runs each of `sent` and asserts it leaves as `want` (same index), redirected.
fn each_translated(f: &Fixture, sent: &[Vec<u8>], want: &[Vec<u8>], order: &[usize], what: &str) {
    assert_eq!(sent.len(), want.len());
    for &i in order {
        let r = f.run(&sent[i]);
        assert_eq!(r.action, XDP_REDIRECT, "{what}: fragment {i} forwarded");
        assert_eq!(r.out, want[i], "{what}: fragment {i} byte for byte");
    }
}

fn fragments_both_ways(fam: &Family) {
    let f = Fixture::new(YAML);
    let by_addresses = FlowKey::new(fam.client, 0, fam.vip, 0, PROTO_UDP);
    let real = f.predict(fam.vs, &by_addresses);
    let client = (fam.client, CLIENT_PORT);
    let (to_vip, to_lb) = ((fam.vip, 53), (SENDER_MAC, LB_MAC));
    // What the real receives and sends, and what the client receives.
    let (at_real, to_real) = ((real, 5353), (FIB_MAC, real_mac(real)));
    let from_real = (real_mac(real), LB_MAC);
    let to_client = (FIB_MAC, CLIENT_MAC);

    // A request in three fragments: every one to the real, the first with its port.
    for (seed, id, order, what) in [
        (0, 0x4242, [0, 1, 2], "request"),
        // Out of order, the last first: no state is needed, the real reassembles.
        (1, 0x4243, [2, 1, 0], "request out of order"),
    ] {
        let sent = Datagram {
            from: client,
            to: to_vip,
            macs: to_lb,
            seed,
        }
        .fragments(fam, id);
        assert_eq!(sent.len(), 3, "two full fragments and a short one");
        let want = Datagram {
            from: client,
            to: at_real,
            macs: to_real,
            seed,
        }
        .fragments(fam, id);
        each_translated(&f, &sent, &want, &order, what);
    }

    // The real's reply in three fragments: every one from the VIP, the first from its
    // port, as the client's socket expects.
    let reply = |seed, id| {
        let sent = Datagram {
            from: at_real,
            to: client,
            macs: from_real,
            seed,
        };
        let want = Datagram {
            from: to_vip,
            to: client,
            macs: to_client,
            seed,
        };
        (sent.fragments(fam, id), want.fragments(fam, id))
    };
    let (sent, want) = reply(2, 0x777);
    each_translated(&f, &sent, &want, &[0, 1, 2], "reply");

    // A later fragment of a reply that overtakes its first finds no state: the
    // kernel's, untouched. The ones after the first are translated.
    let (sent, want) = reply(3, 0x778);
    let r = f.run(&sent[2]);
    assert_eq!(
        (r.action, &r.out),
        (XDP_PASS, &sent[2]),
        "a later reply fragment ahead of its first passes"
    );
    each_translated(&f, &sent, &want, &[0, 1], "reply after the overtaking one");

    // Fragments that belong to no NAT reply pass untouched: a first fragment to a
    // client port no request came from, a later one of a datagram never begun.
    let other_client = (fam.client, CLIENT_PORT + 1);
    let stray = Datagram {
        from: at_real,
        to: other_client,
        macs: from_real,
        seed: 4,
    }
    .fragments(fam, 0x779);
    for (what, frame) in [("no flow", &stray[0]), ("never begun", &stray[1])] {
        let r = f.run(frame);
        assert_eq!((r.action, &r.out), (XDP_PASS, frame), "{what}");
    }

    // A datagram to another port of the VIP: its first fragment holds a port no real
    // serves behind NAT, and is the kernel's.
    let other_port = (fam.vip, 54);
    let other = Datagram {
        from: client,
        to: other_port,
        macs: to_lb,
        seed: 5,
    }
    .fragments(fam, 0x4244);
    let r = f.run(&other[0]);
    assert_eq!((r.action, &r.out), (XDP_PASS, &other[0]), "another port");

    assert_eq!(f.verdicts(reason::FWD_REDIRECT), 6, "request fragments");
    assert_eq!(f.verdicts(reason::FWD_NAT_REPLY), 5, "reply fragments");
    assert_eq!(f.verdicts(reason::PASS_FRAGMENT), 4, "passed fragments");
}

#[test]
fn nat_v4_fragments_are_translated_both_ways() {
    fragments_both_ways(&family4());
}

#[test]
fn nat_v6_fragments_are_translated_both_ways() {
    fragments_both_ways(&family6());
}
