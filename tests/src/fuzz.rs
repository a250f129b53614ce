//! Packet fuzzing of the balancer under BPF_PROG_TEST_RUN (issue 14): valid frames of
//! every kind the data path handles, mutated (every truncation point, random bytes,
//! header fields set to random values, VLAN stacks, IPv6 extension chains, IPv4
//! options, fragments, foreign MACs), run one by one, and each outcome held against
//! an oracle written here from the packet formats, not from the program:
//!
//! - a frame (of at least an Ethernet header) is forwarded (XDP_TX or XDP_REDIRECT) only if the oracle finds it a
//!   valid packet of a configured virtual server, a NAT reply of a flow the run
//!   opened (or a later fragment of one whose first was forwarded), or an ICMP error
//!   about a direct-routing or tunnel flow;
//! - a forwarded frame is what its method makes of it: direct routing changes the two
//!   MACs only, a tunnel prepends a correct outer header to the unchanged packet, NAT
//!   keeps every checksum exactly as valid (or invalid) as it came in, and changes
//!   only an address of a fragment after the first;
//! - a passed frame is untouched; no run returns XDP_ABORTED or an unknown action;
//! - every run is counted under exactly one verdict.
//!
//! The generator is a seeded xorshift: the same seed gives the same frames.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use lb_common::reason;
use xdpvs::dataplane::{DataplaneRead as _, FlowReader as _};

use crate::{
    fixture::{Fixture, LB_MAC},
    packet::{csum, pseudo_csum, V4Packet, V6Packet},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const ETH_HLEN: usize = 14;
const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const CLIENT6: &str = "2001:db8:c::7";

/// The virtual servers of the fuzzed balancer: one of each method and family.
pub const YAML: &str = "\
interfaces: [lo]
tunnel_source: [10.0.1.1, fd00:1::1]
virtual_servers:
  - { name: dr4, address: 10.0.0.100, port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 10.0.1.11 }, { address: 10.0.1.12 }] }
  - { name: dr4u, address: 10.0.0.100, port: 53, protocol: udp, method: dr, fragments: true,
      real_servers: [{ address: 10.0.1.13 }] }
  - { name: nat4, address: 10.0.0.101, port: 80, protocol: tcp, method: nat,
      real_servers: [{ address: 10.0.1.21, port: 8080 }, { address: 10.0.1.22, port: 8080 }] }
  - { name: nat4u, address: 10.0.0.101, port: 53, protocol: udp, method: nat, fragments: true,
      real_servers: [{ address: 10.0.1.23, port: 5353 }] }
  - { name: tun4, address: 10.0.0.102, port: 80, protocol: tcp, method: tunnel,
      real_servers: [{ address: 10.0.9.11 }, { address: 10.0.9.12 }] }
  - { name: dr6, address: '2001:db8:f::100', port: 80, protocol: tcp, method: dr,
      real_servers: [{ address: 'fd00:1::11' }] }
  - { name: nat6, address: '2001:db8:f::101', port: 80, protocol: tcp, method: nat,
      fragments: true, real_servers: [{ address: 'fd00:1::21', port: 8080 }] }
  - { name: tun6, address: '2001:db8:f::102', port: 80, protocol: tcp, method: tunnel,
      fragments: true, real_servers: [{ address: 'fd00:9::11' }] }
";

/// A virtual server as the oracle knows it.
#[derive(Clone, Copy, Debug)]
struct Vs {
    addr: IpAddr,
    port: u16,
    proto: u8,
    method: Method,
    fragments: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Dr,
    Nat,
    Tunnel,
}

/// What the oracle expects a forwarded frame to have become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forward {
    Dr,
    Nat,
    Tunnel,
    /// An ICMP error about a NAT flow, translated.
    NatIcmp,
    /// The first fragment of a NAT reply: translated as a reply, and its datagram's
    /// later fragments are translated from now on.
    NatFirst,
    /// A fragment after the first of a NAT request or reply: one address changed.
    NatLater,
}

/// A fragmented datagram: source, destination, identification, protocol.
type Datagram = (IpAddr, IpAddr, u32, u8);

/// A 5-tuple: source, source port, destination, destination port, protocol.
type Tuple = (IpAddr, u16, IpAddr, u16, u8);

/// A seeded xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// What a run found; [`Report::problems`] empty means every invariant held.
#[derive(Debug, Default)]
pub struct Report {
    pub runs: u64,
    /// Runs by XDP action.
    pub actions: BTreeMap<u32, u64>,
    /// Forwarded frames by what the oracle expected of them.
    pub forwarded: BTreeMap<String, u64>,
    /// Verdict counters' growth over the run.
    pub verdicts: u64,
    /// Connection table entries at the end, and whether each names a configured real.
    pub flow_entries: u64,
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, what: String) {
        if self.problems.len() < 20 {
            self.problems.push(what);
        }
    }
}

/// The balancer under test, its virtual servers and the NAT flows opened on it.
pub struct Fuzzer {
    pub fixture: Fixture,
    vss: Vec<Vs>,
    nat_replies: HashSet<Tuple>,
    /// NAT replies whose first fragment was forwarded.
    nat_frags: HashSet<Datagram>,
    templates: Vec<Vec<u8>>,
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

impl Fuzzer {
    /// Loads the balancer with [`YAML`], opens a NAT flow per NAT virtual server (so
    /// that their replies are valid packets) and builds the templates.
    pub fn new() -> Self {
        let fixture = Fixture::new(YAML);
        let vss = fixture
            .config
            .virtual_servers
            .iter()
            .map(|v| Vs {
                addr: v.address,
                port: v.port,
                proto: v.protocol.number(),
                method: match v.method {
                    xdpvs::config::Method::Dr => Method::Dr,
                    xdpvs::config::Method::Nat => Method::Nat,
                    xdpvs::config::Method::Tunnel => Method::Tunnel,
                },
                fragments: v.fragments,
            })
            .collect();
        let mut f = Self {
            fixture,
            vss,
            nat_replies: HashSet::new(),
            nat_frags: HashSet::new(),
            templates: Vec::new(),
        };
        f.build_templates();
        f
    }

    fn build_templates(&mut self) {
        let (c6, dr6, nat6, tun6) = (
            v6(CLIENT6),
            v6("2001:db8:f::100"),
            v6("2001:db8:f::101"),
            v6("2001:db8:f::102"),
        );
        let mut t = vec![
            V4Packet::tcp(CLIENT4, 1111, [10, 0, 0, 100], 80).build(),
            V4Packet::udp(CLIENT4, 1112, [10, 0, 0, 100], 53).build(),
            V4Packet::tcp(CLIENT4, 1113, [10, 0, 0, 101], 80).build(),
            V4Packet::udp(CLIENT4, 1114, [10, 0, 0, 101], 53).build(),
            V4Packet::tcp(CLIENT4, 1115, [10, 0, 0, 102], 80).build(),
            V4Packet {
                vlan: Some(7),
                ..V4Packet::tcp(CLIENT4, 1116, [10, 0, 0, 100], 80)
            }
            .build(),
            V4Packet::tcp(CLIENT4, 1117, [10, 0, 0, 99], 80).build(),
            // QinQ (802.1ad 5, 802.1Q 6) to the DR virtual server.
            {
                let mut f = V4Packet::tcp(CLIENT4, 1120, [10, 0, 0, 102], 80).build();
                f.splice(12..12, [0x88, 0xa8, 0, 5, 0x81, 0, 0, 6]);
                f
            },
            V6Packet::tcp(c6, 1118, dr6, 80).build(),
            V6Packet::tcp(c6, 1119, nat6, 80).build(),
            V6Packet::tcp(c6, 1120, tun6, 80).build(),
            V6Packet {
                hop_by_hop: true,
                ..V6Packet::tcp(c6, 1121, dr6, 80)
            }
            .build(),
        ];
        // NAT replies: open each flow, then answer it from the real it went to.
        for frame in [t[2].clone(), t[3].clone(), t[8].clone()] {
            let r = self.fixture.run(&frame);
            assert!(
                matches!(r.action, XDP_TX | XDP_REDIRECT),
                "opening a NAT flow"
            );
            let (src, sport, dst, dport, proto) = tuple(&r.out).expect("NAT request");
            self.nat_replies.insert((dst, dport, src, sport, proto));
            // The real's port unreachable about what it received.
            let received = &r.out[14..];
            let real_err = match (dst, src) {
                (IpAddr::V4(d), IpAddr::V4(s)) => crate::packet::icmp4_error(
                    LB_MAC,
                    [2, 0, 0, 0, 0, 9],
                    d.octets(),
                    s.octets(),
                    3,
                    3,
                    [0; 4],
                    &received[..28],
                ),
                (IpAddr::V6(d), IpAddr::V6(s)) => crate::packet::icmp6_error(
                    LB_MAC,
                    [2, 0, 0, 0, 0, 9],
                    d.octets(),
                    s.octets(),
                    1,
                    4,
                    [0; 4],
                    &received[..60],
                ),
                _ => unreachable!("one family"),
            };
            t.push(real_err);
            let reply = match (dst, src) {
                (IpAddr::V4(d), IpAddr::V4(s)) => {
                    let p = V4Packet {
                        proto,
                        ..V4Packet::tcp(d.octets(), dport, s.octets(), sport)
                    };
                    p.build()
                }
                (IpAddr::V6(d), IpAddr::V6(s)) => V6Packet {
                    proto,
                    ..V6Packet::tcp(d.octets(), dport, s.octets(), sport)
                }
                .build(),
                _ => unreachable!("one family"),
            };
            t.push(reply);
        }
        // ICMP errors about DR and tunnel flows, as a router sends them to the VIP.
        for (vip, sport) in [
            ([10, 0, 0, 100], 2001u16),
            ([10, 0, 0, 102], 2002),
            ([10, 0, 0, 101], 2004),
        ] {
            let reply = V4Packet {
                src_mac: LB_MAC,
                ..V4Packet::tcp(vip, 80, CLIENT4, sport)
            }
            .build();
            t.push(crate::packet::icmp4_too_big(&reply, 1280, 28));
        }
        for vip in [dr6, tun6] {
            let reply = V6Packet {
                src_mac: LB_MAC,
                ..V6Packet::tcp(vip, 80, c6, 2003)
            }
            .build();
            t.push(crate::packet::icmp6_too_big(&reply, 1280, 48));
        }
        self.templates = t;
    }

    /// Returns: how the oracle expects `frame` to be forwarded, `None` when it must
    /// not be.
    fn oracle(&self, frame: &[u8]) -> Option<Forward> {
        if frame.len() < 14 || (frame[0..6] != LB_MAC && frame[0] & 1 == 0) {
            return None;
        }
        let (ethertype, l3) = untagged(frame)?;
        // No VLAN device is registered: NAT and tunnel cannot route tagged frames.
        let vlan = l3 != 14;
        let ip = parse_ip(frame, l3, ethertype)?;
        let vs_of = |addr: IpAddr, port: u16, proto: u8| {
            self.vss
                .iter()
                .find(|v| v.addr == addr && v.port == port && v.proto == proto)
        };
        // Fragments, and errors quoting one, go by addresses to the taker, if any.
        let taker = |addr: IpAddr, proto: u8| {
            let vs = self
                .vss
                .iter()
                .find(|v| v.addr == addr && v.proto == proto && v.fragments)?;
            match vs.method {
                Method::Dr => Some(Forward::Dr),
                Method::Tunnel if !vlan => Some(Forward::Tunnel),
                _ => None,
            }
        };
        if ip.frag {
            return self.fragment(frame, &ip, vlan);
        }
        match ip.proto {
            6 | 17 => {
                let (sport, dport) = (be16(frame, ip.l4)?, be16(frame, ip.l4 + 2)?);
                let need = if ip.proto == 6 { 20 } else { 8 };
                let complete = frame.len() >= ip.l4 + need;
                match vs_of(ip.dst, dport, ip.proto) {
                    Some(vs) if complete => match vs.method {
                        Method::Dr => Some(Forward::Dr),
                        Method::Nat if !vlan => Some(Forward::Nat),
                        Method::Tunnel if !vlan => Some(Forward::Tunnel),
                        _ => None,
                    },
                    Some(_) => None,
                    None => {
                        let t = (ip.src, sport, ip.dst, dport, ip.proto);
                        (self.nat_replies.contains(&t) && complete && !vlan).then_some(Forward::Nat)
                    }
                }
            }
            1 | 58 => {
                // Type and code are read together.
                frame.get(ip.l4 + 1)?;
                let kind = frame[ip.l4];
                let error = if ip.v4 {
                    ip.proto == 1 && matches!(kind, 3 | 11 | 12)
                } else {
                    ip.proto == 58 && (1..=4).contains(&kind)
                };
                if !error {
                    return None;
                }
                let inner_type = if ip.v4 { 0x0800 } else { 0x86dd };
                let inner = parse_quoted(frame, ip.l4 + 8, inner_type)?;
                // The quoted ports must lie inside the IP packet.
                let end = if ip.v4 {
                    l3 + usize::from(be16(frame, l3 + 2)?)
                } else {
                    l3 + 40 + usize::from(be16(frame, l3 + 4)?)
                };
                if inner.l4 + 4 > end {
                    return None;
                }
                if !matches!(inner.proto, 6 | 17) || inner.src != ip.dst {
                    return None;
                }
                if inner.frag {
                    return taker(inner.src, inner.proto);
                }
                let sport = be16(frame, inner.l4)?;
                let dport = be16(frame, inner.l4 + 2)?;
                match vs_of(inner.src, sport, inner.proto).map(|v| v.method) {
                    Some(Method::Dr) => Some(Forward::Dr),
                    Some(Method::Tunnel) if !vlan => Some(Forward::Tunnel),
                    Some(Method::Nat) if !vlan => Some(Forward::NatIcmp),
                    Some(_) => None,
                    // A NAT real's error about a flow, on its way to the client.
                    None => {
                        let reply = (inner.dst, dport, inner.src, sport, inner.proto);
                        (self.nat_replies.contains(&reply) && !vlan).then_some(Forward::NatIcmp)
                    }
                }
            }
            _ => None,
        }
    }

    /// Returns: how the oracle expects the fragment `frame` (its IP header `ip`) to be
    /// forwarded, `None` when it must not be: by addresses to the virtual server that
    /// takes fragments at its destination (NAT: the first fragment only to its port, and
    /// whole enough to hold its TCP/UDP header), else as a fragment of a NAT reply.
    fn fragment(&self, frame: &[u8], ip: &Ip, vlan: bool) -> Option<Forward> {
        if !matches!(ip.proto, 6 | 17) {
            return None;
        }
        let need = if ip.proto == 6 { 20 } else { 8 };
        let complete = frame.len() >= ip.l4 + need;
        let ports = || Some((be16(frame, ip.l4)?, be16(frame, ip.l4 + 2)?));
        let taker = self
            .vss
            .iter()
            .find(|v| v.addr == ip.dst && v.proto == ip.proto && v.fragments);
        if let Some(vs) = taker {
            return match vs.method {
                Method::Dr => Some(Forward::Dr),
                Method::Tunnel if !vlan => Some(Forward::Tunnel),
                Method::Nat if !vlan && ip.first => {
                    (complete && ports()?.1 == vs.port).then_some(Forward::Nat)
                }
                Method::Nat if !vlan => Some(Forward::NatLater),
                _ => None,
            };
        }
        if vlan {
            return None;
        }
        if ip.first {
            let (sport, dport) = ports()?;
            let reply = (ip.src, sport, ip.dst, dport, ip.proto);
            return (complete && self.nat_replies.contains(&reply)).then_some(Forward::NatFirst);
        }
        let datagram = (ip.src, ip.dst, ip.id, ip.proto);
        self.nat_frags
            .contains(&datagram)
            .then_some(Forward::NatLater)
    }

    /// Runs `count` mutated frames (every truncation point of every template first).
    /// Returns: the report.
    pub fn run(&mut self, count: u64, seed: u64) -> Report {
        let mut rng = Rng::new(seed);
        let mut report = Report::default();
        let verdicts_before: u64 = self.verdicts_total();
        let mut truncations = Vec::new();
        // BPF_PROG_TEST_RUN refuses a frame shorter than an Ethernet header, which no
        // driver hands to XDP either.
        for t in &self.templates {
            for cut in ETH_HLEN..t.len() {
                truncations.push(t[..cut].to_vec());
            }
        }
        for i in 0..count {
            let frame = match truncations.get(i as usize) {
                Some(f) => f.clone(),
                None => {
                    let t = &self.templates[rng.below(self.templates.len())];
                    mutate(t, &mut rng)
                }
            };
            self.check(&frame, &mut report);
        }
        report.verdicts = self.verdicts_total() - verdicts_before;
        if report.verdicts != report.runs {
            let (v, r) = (report.verdicts, report.runs);
            report.problem(format!("{v} verdicts counted for {r} runs"));
        }
        self.check_flows(&mut report);
        report
    }

    fn verdicts_total(&self) -> u64 {
        let v = self.fixture.rec.dataplane().verdicts().expect("verdicts");
        assert_eq!(v.len(), reason::COUNT as usize);
        v.iter().sum()
    }

    /// Every connection table entry names a real of the configuration.
    fn check_flows(&self, report: &mut Report) {
        let reader = self.fixture.rec.dataplane().flow_reader().expect("flows");
        let counts = reader.count().expect("count flows");
        let ids: HashSet<u32> = self
            .fixture
            .config
            .virtual_servers
            .iter()
            .flat_map(|v| {
                v.real_servers.iter().filter_map(|r| {
                    let key = xdpvs::model::RealKey::real(&v.name, r.address, r.port);
                    self.fixture.rec.real_id(&key)
                })
            })
            .collect();
        report.flow_entries = counts.values().sum();
        for (id, _generation) in counts.keys() {
            if !ids.contains(id) {
                report.problem(format!(
                    "a connection table entry names real id {id}, no configured real"
                ));
            }
        }
    }

    fn check(&mut self, frame: &[u8], report: &mut Report) {
        let r = self.fixture.run(frame);
        report.runs += 1;
        *report.actions.entry(r.action).or_default() += 1;
        let want = self.oracle(frame);
        match r.action {
            XDP_PASS => {
                if r.out != frame {
                    report.problem(format!("passed but changed: {}", hex(frame)));
                }
            }
            XDP_DROP => {}
            XDP_TX | XDP_REDIRECT => {
                let Some(kind) = want else {
                    report.problem(format!(
                        "forwarded, but not a valid packet of a virtual server or flow: {}",
                        hex(frame)
                    ));
                    return;
                };
                *report.forwarded.entry(format!("{kind:?}")).or_default() += 1;
                if let Err(e) = forwarded_as(kind, frame, &r.out) {
                    report.problem(format!("forwarded as {kind:?} but {e}: {}", hex(frame)));
                }
                // A NAT request opens a flow: its replies are valid packets from now on.
                if kind == Forward::Nat {
                    if let Some((s, sp, d, dp, proto)) = tuple(&r.out) {
                        self.nat_replies.insert((d, dp, s, sp, proto));
                    }
                }
                // A NAT reply's first fragment: its datagram's later ones follow it.
                if kind == Forward::NatFirst {
                    if let Some(ip) = parse_ip(frame, 14, be16(frame, 12).unwrap_or(0)) {
                        self.nat_frags.insert((ip.src, ip.dst, ip.id, ip.proto));
                    }
                }
            }
            a => report.problem(format!("action {a}: {}", hex(frame))),
        }
    }
}

impl Default for Fuzzer {
    fn default() -> Self {
        Self::new()
    }
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

/// Returns: the EtherType after the frame's VLAN tags and where the IP header starts:
/// the data path reads an 802.1Q or 802.1ad tag, then at most one more 802.1Q tag
/// (a third leaves an 802.1Q EtherType, which is no IP).
fn untagged(f: &[u8]) -> Option<(u16, usize)> {
    let (mut et, mut l3) = (be16(f, 12)?, 14);
    if et == 0x8100 || et == 0x88a8 {
        (et, l3) = (be16(f, 16)?, 18);
        if et == 0x8100 {
            (et, l3) = (be16(f, 20)?, 22);
        }
    }
    Some((et, l3))
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// An IP header as the oracle reads it.
struct Ip {
    /// A fragment (IPv4 flags/offset, or an IPv6 fragment header first).
    frag: bool,
    /// A fragment at offset 0.
    first: bool,
    /// A fragment's identification (IPv4's 16 bits, or IPv6's 32).
    id: u32,
    v4: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: usize,
}

/// Reads the outer IP header at `l3`: `None` for anything the data path does not
/// balance (bad version or lengths, fragments, IPv6 extension headers).
fn parse_ip(f: &[u8], l3: usize, ethertype: u16) -> Option<Ip> {
    match ethertype {
        0x0800 => {
            let h = f.get(l3..l3 + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[0] >> 4 != 4 || ihl < 20 || tot < ihl || l3 + tot > f.len() {
                return None;
            }
            Some(Ip {
                frag: frag & 0x3fff != 0,
                first: frag & 0x3fff != 0 && frag & 0x1fff == 0,
                id: u32::from(u16::from_be_bytes([h[4], h[5]])),
                v4: true,
                src: IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?),
                dst: IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?),
                proto: h[9],
                l4: l3 + ihl,
            })
        }
        0x86dd => {
            let h = f.get(l3..l3 + 40)?;
            let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if h[0] >> 4 != 6 || l3 + 40 + payload > f.len() {
                return None;
            }
            let (frag, proto, l4) = match h[6] {
                6 | 17 | 58 => (false, h[6], l3 + 40),
                // The whole fragment header is read.
                44 => (true, *f.get(l3 + 40..l3 + 48)?.first()?, l3 + 48),
                _ => return None,
            };
            if frag && !matches!(proto, 6 | 17) {
                return None;
            }
            let (first, id) = match f.get(l3 + 40..l3 + 48) {
                Some(fh) if frag => (
                    u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 == 0,
                    u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
                ),
                _ => (false, 0),
            };
            Some(Ip {
                frag,
                first,
                id,
                v4: false,
                src: IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?),
                dst: IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?),
                proto,
                l4,
            })
        }
        _ => None,
    }
}

/// Reads the IP header an ICMP error quotes at `off` (its lengths may be cut short:
/// only the header and the ports must be there; a non-first fragment has no ports).
fn parse_quoted(f: &[u8], off: usize, ethertype: u16) -> Option<Ip> {
    if ethertype == 0x0800 {
        let h = f.get(off..off + 20)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        let frag = u16::from_be_bytes([h[6], h[7]]);
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        Some(Ip {
            frag: frag & 0x3fff != 0,
            first: false,
            id: 0,
            v4: true,
            src: IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?),
            dst: IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?),
            proto: h[9],
            l4: off + ihl,
        })
    } else {
        let h = f.get(off..off + 40)?;
        let (frag, proto, l4) = if h[6] == 44 {
            f.get(off + 41)?;
            (true, f[off + 40], off + 48)
        } else {
            (false, h[6], off + 40)
        };
        Some(Ip {
            frag,
            first: false,
            id: 0,
            v4: false,
            src: IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?),
            dst: IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?),
            proto,
            l4,
        })
    }
}

/// Returns: the 5-tuple of an untagged TCP/UDP frame.
fn tuple(f: &[u8]) -> Option<Tuple> {
    let ip = parse_ip(f, 14, be16(f, 12)?)?;
    Some((
        ip.src,
        be16(f, ip.l4)?,
        ip.dst,
        be16(f, ip.l4 + 2)?,
        ip.proto,
    ))
}

/// Whether the IPv4 header checksum and the TCP/UDP checksum of the IP packet at
/// `l3` verify (a UDP checksum of zero is "none" and verifies).
fn checksums_ok(f: &[u8], l3: usize) -> (bool, bool) {
    let Some(ip) = parse_ip(f, l3, be16(f, l3 - 2).unwrap_or(0)) else {
        return (false, false);
    };
    let end = if ip.v4 {
        l3 + usize::from(be16(f, l3 + 2).unwrap_or(0))
    } else {
        l3 + 40 + usize::from(be16(f, l3 + 4).unwrap_or(0))
    };
    let header_ok = !ip.v4 || csum(&f[l3..ip.l4]) == 0;
    let seg = &f[ip.l4.min(end)..end];
    let l4_ok = match (ip.proto, ip.src, ip.dst) {
        (17, _, _) if seg.len() >= 8 && seg[6..8] == [0, 0] && ip.v4 => true,
        (6 | 17, IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo_csum(&s.octets(), &d.octets(), ip.proto, seg) == 0
        }
        (6 | 17, IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo_csum(&s.octets(), &d.octets(), ip.proto, seg) == 0
        }
        _ => true,
    };
    (header_ok, l4_ok)
}

/// Whether the outer IPv4 header checksum and the ICMP (ICMPv6) checksum of an
/// untagged frame verify.
fn icmp_checksums_ok(f: &[u8]) -> (bool, bool) {
    let Some(ip) = parse_ip(f, 14, be16(f, 12).unwrap_or(0)) else {
        return (false, false);
    };
    let end = if ip.v4 {
        14 + usize::from(be16(f, 16).unwrap_or(0))
    } else {
        14 + 40 + usize::from(be16(f, 18).unwrap_or(0))
    };
    let msg = &f[ip.l4.min(end)..end];
    match (ip.src, ip.dst) {
        (IpAddr::V4(_), _) => (csum(&f[14..ip.l4]) == 0, csum(msg) == 0),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            (true, pseudo_csum(&s.octets(), &d.octets(), 58, msg) == 0)
        }
        _ => (false, false),
    }
}

/// Checks that `out` is what forwarding `input` as `kind` makes.
fn forwarded_as(kind: Forward, input: &[u8], out: &[u8]) -> Result<(), String> {
    match kind {
        Forward::Dr => {
            if out.len() != input.len() || out[12..] != input[12..] {
                return Err("more than the MACs changed".into());
            }
        }
        Forward::Tunnel => {
            let inner = &input[14..];
            let outer = out
                .len()
                .checked_sub(inner.len())
                .ok_or("shorter than its input")?;
            if out[outer..] != *inner {
                return Err("the inner packet changed".into());
            }
            let inner_len = if input[12..14] == [0x08, 0x00] {
                usize::from(u16::from_be_bytes([inner[2], inner[3]]))
            } else {
                40 + usize::from(u16::from_be_bytes([inner[4], inner[5]]))
            };
            match outer - 14 {
                20 => {
                    let tot = usize::from(u16::from_be_bytes([out[16], out[17]]));
                    if csum(&out[14..34]) != 0 || out[23] != 4 || tot != 20 + inner_len {
                        return Err("a bad outer IPv4 header".into());
                    }
                }
                40 => {
                    let payload = usize::from(u16::from_be_bytes([out[18], out[19]]));
                    if out[20] != 41 || payload != inner_len {
                        return Err("a bad outer IPv6 header".into());
                    }
                }
                n => return Err(format!("an outer header of {n} bytes")),
            }
        }
        Forward::NatIcmp => {
            if out.len() != input.len() {
                return Err("its length changed".into());
            }
            if icmp_checksums_ok(input) != icmp_checksums_ok(out) {
                return Err(format!(
                    "checksums (IP header, ICMP) went from {:?} to {:?}",
                    icmp_checksums_ok(input),
                    icmp_checksums_ok(out)
                ));
            }
        }
        Forward::NatLater => {
            if out.len() != input.len() {
                return Err("its length changed".into());
            }
            // Untagged (NAT routes no tagged frame here): the IP header at 14. Only the
            // addresses, and IPv4's header checksum, may change, which stays as valid.
            let v4 = input[12..14] == [0x08, 0x00];
            let may_change = if v4 { 24..34 } else { 22..54 };
            if (12..input.len()).any(|i| input[i] != out[i] && !may_change.contains(&i)) {
                return Err("more than an address changed".into());
            }
            if v4 {
                let ihl = usize::from(input[14] & 0x0f) * 4;
                if (csum(&input[14..14 + ihl]) == 0) != (csum(&out[14..14 + ihl]) == 0) {
                    return Err("the IPv4 header checksum's validity changed".into());
                }
            }
        }
        Forward::Nat | Forward::NatFirst => {
            if out.len() != input.len() {
                return Err("its length changed".into());
            }
            if checksums_ok(input, 14) != checksums_ok(out, 14) {
                return Err(format!(
                    "checksums (IP header, L4) went from {:?} to {:?}",
                    checksums_ok(input, 14),
                    checksums_ok(out, 14)
                ));
            }
        }
    }
    Ok(())
}

/// Returns: `t` changed by one mutation, chosen at random.
fn mutate(t: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut f = t.to_vec();
    let l3 = untagged(&f).map_or(14, |(_, l3)| l3);
    let v4 = be16(&f, l3 - 2) == Some(0x0800);
    match rng.below(10) {
        // A few random bytes anywhere in the headers.
        0 | 1 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(f.len().min(110));
                f[i] = rng.byte();
            }
        }
        // A header field of the outer or quoted IP header set to a random value.
        2 | 3 => {
            let fields: &[usize] = if v4 {
                &[0, 2, 3, 6, 7, 9, 20, 21, 28, 30, 31, 37, 38]
            } else {
                &[0, 4, 5, 6, 40, 41, 48, 52, 53, 54]
            };
            let i = l3 + fields[rng.below(fields.len())];
            if i < f.len() {
                f[i] = rng.byte();
            }
            if v4 && rng.below(2) == 0 && f.len() >= l3 + 20 {
                fix_ipv4_csum(&mut f, l3);
            }
        }
        // VLAN tags (one to three).
        4 => {
            for _ in 0..=rng.below(3) {
                let tag = [0x81, 0x00, 0x00, rng.byte()];
                f.splice(12..12, tag);
            }
        }
        // IPv4 options or an IPv6 extension header chain.
        5 => {
            if v4 && f.len() >= l3 + 20 {
                let words = 1 + rng.below(10);
                let opts: Vec<u8> = (0..words * 4)
                    .map(|_| [1u8, 0, rng.byte()][rng.below(3)])
                    .collect();
                f.splice(l3 + 20..l3 + 20, opts);
                f[l3] = 0x40 | (5 + words) as u8;
                let tot = be16(&f, l3 + 2).unwrap_or(0) as usize + words * 4;
                f[l3 + 2..l3 + 4].copy_from_slice(&(tot as u16).to_be_bytes());
                fix_ipv4_csum(&mut f, l3);
            } else if !v4 && f.len() >= l3 + 40 {
                let ext = [0u8, 43, 44, 60, 135, 139, 140, 50, 51][rng.below(9)];
                let len = 8 * (1 + rng.below(3));
                let mut h = vec![f[l3 + 6], (len / 8 - 1) as u8];
                h.resize(len, 0);
                f.splice(l3 + 40..l3 + 40, h);
                f[l3 + 6] = ext;
                let pl = be16(&f, l3 + 4).unwrap_or(0) as usize + len;
                f[l3 + 4..l3 + 6].copy_from_slice(&(pl as u16).to_be_bytes());
            }
        }
        // A fragment: more-fragments or an offset.
        6 => {
            if v4 && f.len() >= l3 + 20 {
                let frag: u16 = if rng.below(2) == 0 {
                    0x2000
                } else {
                    1 + rng.below(0x1fff) as u16
                };
                f[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
                fix_ipv4_csum(&mut f, l3);
            } else if !v4 && f.len() >= l3 + 40 {
                let h = vec![f[l3 + 6], 0, 0, rng.byte() | 1, 0, 0, 0, 1];
                f.splice(l3 + 40..l3 + 40, h);
                f[l3 + 6] = 44;
                let pl = be16(&f, l3 + 4).unwrap_or(0) as usize + 8;
                f[l3 + 4..l3 + 6].copy_from_slice(&(pl as u16).to_be_bytes());
            }
        }
        // Bytes added at the end, or the frame cut short.
        7 => {
            if rng.below(2) == 0 {
                for _ in 0..rng.below(64) {
                    f.push(rng.byte());
                }
            } else {
                f.truncate(ETH_HLEN + rng.below(f.len() - ETH_HLEN + 1));
            }
        }
        // Another host's MAC, or broadcast.
        8 => {
            let mac: [u8; 6] = if rng.below(2) == 0 {
                [0x02, rng.byte(), rng.byte(), 0, 0, 1]
            } else {
                [0xff; 6]
            };
            f[0..6].copy_from_slice(&mac);
        }
        // A random EtherType.
        _ => {
            let et = [
                0x0800u16,
                0x86dd,
                0x8100,
                0x88a8,
                0x0806,
                rng.next_u64() as u16,
            ][rng.below(6)];
            f[12..14].copy_from_slice(&et.to_be_bytes());
        }
    }
    f
}

fn fix_ipv4_csum(f: &mut [u8], l3: usize) {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    if ihl < 20 || f.len() < l3 + ihl {
        return;
    }
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = csum(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}
