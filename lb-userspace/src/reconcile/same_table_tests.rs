//! The contract active-active scale-out behind ECMP relies on (maglev's module doc):
//! nodes that reached the same configuration, with the same probe verdicts, hold the
//! same real in every slot of every table, whatever the order of their file, the reloads
//! on the way, or a restart that adopted the maps. Their real ids differ, so tables are
//! compared as identities (address, port, sorry server or not), read through
//! `real_views`. The cases come from a small seeded generator: every run tries the same
//! ones.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    path::Path,
};

use lb_common::{maps::VS_RINGS, IfaceInfo, RealInfo, VsInfo, VsKey, NO_REAL};

use super::{tables::vs_value, Reconciler};
use crate::{
    config::{self, AnyInterface, CheckType, Config},
    dataplane::{memory::MemoryDataplane, Dataplane, DataplaneError},
    model::RealKey,
};

/// Generated configurations each test tries.
const CASES: u64 = 40;

/// splitmix64: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns: a number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Returns: one of `items`.
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A virtual server the generator can write: name, VIP, port, protocol, method.
struct Shape {
    name: &'static str,
    vip: &'static str,
    port: u16,
    protocol: &'static str,
    method: &'static str,
}

/// Two families and both port rules (`dr` keeps the port, `nat` may change it).
const SHAPES: [Shape; 3] = [
    Shape {
        name: "web",
        vip: "10.0.0.100",
        port: 80,
        protocol: "tcp",
        method: "dr",
    },
    Shape {
        name: "dns",
        vip: "10.0.0.100",
        port: 53,
        protocol: "udp",
        method: "nat",
    },
    Shape {
        name: "six",
        vip: "fd00::100",
        port: 443,
        protocol: "tcp",
        method: "nat",
    },
];

/// A virtual server's part of a generated file, in the order the file lists it.
#[derive(Clone)]
struct Vs {
    shape: usize,
    table_size: u32,
    /// (address, port, weight, probed).
    reals: Vec<(String, u16, u32, bool)>,
    sorry: Option<String>,
}

/// Returns: a configuration drawn from `rng`: `web` always and the others mostly; up to
/// six reals each from a pool of ten addresses (two ports for `nat`), weights from 0 to
/// 5, a third of them probed, now and then all of weight 0; a sorry server half the
/// time.
fn generate(rng: &mut Rng) -> Vec<Vs> {
    let mut out = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        if i > 0 && rng.below(4) == 0 {
            continue;
        }
        let all_drained = rng.below(6) == 0;
        let count = rng.below(7);
        let mut seen = HashSet::new();
        let mut reals = Vec::new();
        while reals.len() < count {
            let host = 1 + rng.below(10);
            let port = if shape.method == "nat" {
                rng.pick(&[8080, 8081])
            } else {
                shape.port
            };
            if !seen.insert((host, port)) {
                continue;
            }
            let weight = if all_drained {
                0
            } else {
                rng.pick(&[0, 1, 1, 1, 2, 3, 5])
            };
            reals.push((address(i, host), port, weight, rng.below(3) == 0));
        }
        out.push(Vs {
            shape: i,
            table_size: rng.pick(&[61, 251, 1009]),
            reals,
            sorry: (rng.below(2) == 0).then(|| address(i, 99)),
        });
    }
    out
}

/// Returns: host `host` of the real servers' network of shape `shape`, in its family.
fn address(shape: usize, host: usize) -> String {
    if SHAPES[shape].vip.contains(':') {
        format!("fd00::{shape}:{host:x}")
    } else {
        format!("10.0.{shape}.{host}")
    }
}

/// Returns: `vss` as a configuration file.
fn file(vss: &[Vs]) -> String {
    let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
    for vs in vss {
        let s = &SHAPES[vs.shape];
        t += &format!(
            "  - name: {}\n    address: \"{}\"\n    port: {}\n    protocol: {}\n    method: {}\n    table_size: {}\n    health_check: {{ type: none }}\n",
            s.name, s.vip, s.port, s.protocol, s.method, vs.table_size
        );
        if let Some(a) = &vs.sorry {
            t += &format!("    sorry_server: {{ address: \"{a}\" }}\n");
        }
        t += "    real_servers:\n";
        if vs.reals.is_empty() {
            t.truncate(t.len() - 1);
            t += " []\n";
        }
        for (a, port, weight, probed) in &vs.reals {
            let check = if *probed {
                ", health_check: { type: tcp, port: 9 }"
            } else {
                ""
            };
            t +=
                &format!("      - {{ address: \"{a}\", port: {port}, weight: {weight}{check} }}\n");
        }
    }
    t
}

/// Returns: `vss` parsed as the daemon would.
fn parse(vss: &[Vs]) -> Config {
    let text = file(vss);
    config::parse(Path::new("t.yaml"), &text, &AnyInterface)
        .unwrap_or_else(|e| panic!("generated file refused: {e:?}\n{text}"))
}

/// Returns: `vss` with its virtual servers, and each one's reals, in another order.
fn reordered(vss: &[Vs], rng: &mut Rng) -> Vec<Vs> {
    let mut out = vss.to_vec();
    rng.shuffle(&mut out);
    for vs in &mut out {
        rng.shuffle(&mut vs.reals);
    }
    out
}

/// Returns: a node starting empty (8 virtual server slots, 16 rings).
fn node() -> Reconciler<MemoryDataplane> {
    Reconciler::new(MemoryDataplane::default(), 8, 16)
}

/// The probe verdict on `key` in round `round`: the same on every node, but changing
/// from round to round (reals fail and recover on the way).
fn verdict(key: &RealKey, round: u32) -> bool {
    let mut h = DefaultHasher::new();
    (key, round).hash(&mut h);
    !h.finish().is_multiple_of(3)
}

/// Reports round `round`'s verdicts on every probed real of `c`, as probes would.
fn report(r: &mut Reconciler<MemoryDataplane>, c: &Config, round: u32) {
    for vs in &c.virtual_servers {
        for real in &vs.real_servers {
            if real.health_check.kind != CheckType::None {
                let key = RealKey::real(&vs.name, real.address, real.port);
                r.set_health(&key, verdict(&key, round)).unwrap();
            }
        }
    }
}

/// Applies `c` (a start or a reload), then round `round`'s verdicts.
fn reload(r: &mut Reconciler<MemoryDataplane>, c: &Config, round: u32) {
    r.apply(c).unwrap();
    report(r, c, round);
}

/// One table read as what each slot sends new flows to (`None`: nothing).
type Identities = Vec<Option<RealKey>>;

/// Returns: virtual server `vs`'s live table as identities, after checking that the
/// data path holds exactly the table the reconciler says is live.
fn identities(r: &Reconciler<MemoryDataplane>, vs: &str) -> Identities {
    let live = r.live_table(vs).unwrap_or_else(|| panic!("{vs}: no table"));
    let cfg = r.virtual_servers().find(|v| v.name == vs).unwrap();
    assert_eq!(
        r.dataplane().table(&vs_value(cfg).0).as_deref(),
        Some(live),
        "{vs}: the data path reads another table than the reconciler's"
    );
    let views = r.real_views(vs);
    live.iter()
        .map(|&id| {
            (id != NO_REAL).then(|| {
                let v = views.iter().find(|v| v.id == id);
                v.unwrap_or_else(|| panic!("{vs}: slot names id {id}, no real of it"))
                    .key
                    .clone()
            })
        })
        .collect()
}

/// What the cases covered, so that a generator change cannot quietly make the tests
/// prove nothing.
#[derive(Debug, Default)]
struct Covered {
    /// Compared tables whose raw ids differed (the identities are what agree).
    ids_differed: bool,
    /// A table holding a real of weight above 1.
    weighted: bool,
    /// A table filled by the sorry server.
    sorry: bool,
    /// A table with no real at all.
    empty: bool,
}

impl Covered {
    /// Asserts that `b` holds, as identities, the same tables as `a` for every virtual
    /// server of `c`; `what` names the comparison.
    fn same(
        &mut self,
        a: &Reconciler<MemoryDataplane>,
        b: &Reconciler<MemoryDataplane>,
        c: &Config,
        what: &str,
    ) {
        for vs in &c.virtual_servers {
            let ta = identities(a, &vs.name);
            assert!(
                ta == identities(b, &vs.name),
                "{what}: {} differs\n{}",
                vs.name,
                describe(c)
            );
            self.ids_differed |= a.live_table(&vs.name) != b.live_table(&vs.name);
            self.sorry |= ta.iter().flatten().any(|k| k.sorry);
            self.empty |= ta.iter().all(Option::is_none);
            self.weighted |= vs.real_servers.iter().any(|r| {
                r.weight > 1 && ta.contains(&Some(RealKey::real(&vs.name, r.address, r.port)))
            });
        }
    }

    fn check(&self) {
        assert!(
            self.ids_differed && self.weighted && self.sorry && self.empty,
            "the cases no longer cover every kind of table: {self:?}"
        );
    }
}

/// Returns: the reals of `c`, for a failure message.
fn describe(c: &Config) -> String {
    let mut s = String::new();
    for vs in &c.virtual_servers {
        let reals: Vec<String> = vs
            .real_servers
            .iter()
            .map(|r| {
                format!(
                    "{}:{} w{} {:?}",
                    r.address, r.port, r.weight, r.health_check.kind
                )
            })
            .collect();
        s += &format!(
            "{} ({} slots): {reals:?} sorry {:?}\n",
            vs.name, vs.table_size, vs.sorry_server
        );
    }
    s
}

#[test]
fn reals_listed_in_another_order_give_the_same_tables() {
    let mut rng = Rng(1);
    let mut covered = Covered::default();
    for _ in 0..CASES {
        let vss = generate(&mut rng);
        let c = parse(&vss);
        let mut a = node();
        reload(&mut a, &c, 0);
        for _ in 0..3 {
            let other = parse(&reordered(&vss, &mut rng));
            let mut b = node();
            reload(&mut b, &other, 0);
            covered.same(&a, &b, &c, "the same file in another order");
        }
    }
    covered.check();
}

#[test]
fn any_path_of_reloads_to_a_configuration_gives_its_tables() {
    let mut rng = Rng(2);
    let mut covered = Covered::default();
    for _ in 0..CASES {
        let (x, y, z) = (generate(&mut rng), generate(&mut rng), generate(&mut rng));
        let (x, y, zc) = (parse(&x), parse(&y), parse(&reordered(&z, &mut rng)));
        let z = parse(&z);
        // B starts with Z; the others reach it by reloads, reals added, removed and
        // re-added on the way (and their ids reused), probes changing their verdicts.
        let mut b = node();
        reload(&mut b, &z, 3);
        let paths: [(&str, &[&Config]); 4] = [
            ("X, Y, Z", &[&x, &y, &z]),
            ("Y, Z", &[&y, &z]),
            ("Y, X, Z (Z's file in another order)", &[&y, &x, &zc]),
            ("Z, X, Z", &[&z, &x, &z]),
        ];
        for (path, configs) in paths {
            let mut a = node();
            for (round, c) in (1..).zip(configs) {
                reload(&mut a, c, round);
            }
            // The final verdicts are the same everywhere.
            report(&mut a, &z, 3);
            covered.same(&a, &b, &z, path);
        }
    }
    covered.check();
}

#[test]
fn a_restart_that_adopts_the_maps_gives_the_tables_of_a_fresh_start() {
    let mut rng = Rng(3);
    let mut covered = Covered::default();
    for _ in 0..CASES {
        let (x, z) = (generate(&mut rng), generate(&mut rng));
        let (x, z) = (parse(&x), parse(&z));
        let mut fresh = node();
        reload(&mut fresh, &z, 2);
        // Restarted with the configuration it ran: health comes back from the maps.
        let mut earlier = node();
        reload(&mut earlier, &x, 1);
        reload(&mut earlier, &z, 2);
        let (mut adopted, _) = Reconciler::adopt(earlier.into_dataplane(), 8, 16, &z).unwrap();
        adopted.apply(&z).unwrap();
        covered.same(&adopted, &fresh, &z, "restarted with the same file");
        // Restarted with a changed file, then probed.
        let mut earlier = node();
        reload(&mut earlier, &x, 1);
        let (mut adopted, _) = Reconciler::adopt(earlier.into_dataplane(), 8, 16, &z).unwrap();
        reload(&mut adopted, &z, 2);
        covered.same(&adopted, &fresh, &z, "restarted with a changed file");
    }
    covered.check();
}

#[test]
fn weights_and_the_sorry_server_give_the_same_tables_by_any_path() {
    let web = |order: [usize; 3]| {
        let reals = [("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)];
        Vs {
            shape: 0,
            table_size: 1009,
            reals: order
                .iter()
                .map(|&i| (reals[i].0.to_string(), 80, reals[i].1, true))
                .collect(),
            sorry: Some("10.0.0.99".to_string()),
        }
    };
    let key = |a: &str| RealKey::real("web", a.parse::<IpAddr>().unwrap(), 80);
    let (c, other) = (parse(&[web([0, 1, 2])]), parse(&[web([2, 0, 1])]));
    let mut covered = Covered::default();
    // A served with every real, then lost them all: the sorry server fills the table.
    let mut a = node();
    a.apply(&c).unwrap();
    for r in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        a.set_health(&key(r), true).unwrap();
    }
    for r in ["10.0.0.3", "10.0.0.1", "10.0.0.2"] {
        a.set_health(&key(r), false).unwrap();
    }
    // B has just started on the file in another order: no real is healthy yet.
    let mut b = node();
    b.apply(&other).unwrap();
    covered.same(&a, &b, &c, "sorry server");
    let sorry = RealKey::sorry("web", "10.0.0.99".parse().unwrap(), 80);
    assert!(identities(&a, "web")
        .iter()
        .all(|k| k.as_ref() == Some(&sorry)));
    // Reals 2 and 3 recover, in other orders on the two nodes.
    for r in ["10.0.0.2", "10.0.0.3"] {
        a.set_health(&key(r), true).unwrap();
    }
    for r in ["10.0.0.3", "10.0.0.2"] {
        b.set_health(&key(r), true).unwrap();
    }
    covered.same(&a, &b, &c, "weights 2 and 3");
    let t = identities(&a, "web");
    let share = |r: &str| t.iter().filter(|k| k.as_ref() == Some(&key(r))).count();
    let ratio = share("10.0.0.3") as f64 / share("10.0.0.2") as f64;
    assert!((ratio - 1.5).abs() < 0.05, "weights 2:3 gave {ratio:.3}");
    // A restart of A that adopts its maps, and C restarted fresh, after the probes.
    let (mut a, _) = Reconciler::adopt(a.into_dataplane(), 8, 16, &c).unwrap();
    a.apply(&c).unwrap();
    let mut c_node = node();
    c_node.apply(&c).unwrap();
    for r in ["10.0.0.3", "10.0.0.2"] {
        c_node.set_health(&key(r), true).unwrap();
    }
    covered.same(&a, &c_node, &c, "adopted and fresh, weights 2 and 3");
    assert!(covered.ids_differed && covered.sorry && covered.weighted);
}

#[test]
fn known_answer_pins_how_reals_are_named_to_maglev() {
    // Pins the identities the reconciler hands Maglev (maglev's known answer pins the
    // rest, and spells its reals alike: the tables match). Changing how a real is spelt
    // re-deals every table, and nodes running the two versions disagree until all are
    // upgraded. (The sorry server's spelling cannot show: it is alone in its table.)
    let reals = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let vs = Vs {
        shape: 0,
        table_size: 13,
        reals: reals
            .iter()
            .map(|a| (a.to_string(), 80, 1, false))
            .collect(),
        sorry: None,
    };
    let mut r = node();
    r.apply(&parse(&[vs])).unwrap();
    let t: Vec<&str> = identities(&r, "web")
        .iter()
        .map(|k| {
            let addr = k.as_ref().expect("every slot has a real").addr;
            reals
                .into_iter()
                .find(|a| a.parse::<IpAddr>().unwrap() == addr)
                .unwrap()
        })
        .collect();
    let [a, b, c] = reals;
    assert_eq!(t, [b, a, c, a, a, c, c, c, b, a, b, b, a]);
}

/// The in-memory data path, but a ring write longer than `budget` slots writes that many
/// and fails, as a map update can part-way through a table; and the next
/// `failing_reals` writes of a `REALS` value fail. Records every real a ring write
/// names that `REALS` does not hold.
#[derive(Default)]
struct Flaky {
    dp: MemoryDataplane,
    budget: Option<usize>,
    failing_reals: usize,
    named_unwritten: std::collections::BTreeSet<u32>,
}

/// A map update that failed for want of memory.
fn enomem(map: &'static str) -> DataplaneError {
    let io_error = std::io::Error::from_raw_os_error(12); // ENOMEM
    let source = aya::sys::SyscallError {
        call: "bpf_map_update_elem",
        io_error,
    };
    DataplaneError::Map {
        map,
        source: source.into(),
    }
}

impl Dataplane for Flaky {
    fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DataplaneError> {
        self.dp.set_iface(ifindex, info)
    }
    fn set_vlans(
        &mut self,
        ins: &std::collections::BTreeMap<lb_common::VlanKey, u32>,
        outs: &std::collections::BTreeMap<u32, (IfaceInfo, lb_common::VlanOut)>,
    ) -> Result<(), DataplaneError> {
        self.dp.set_vlans(ins, outs)
    }
    fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.dp.remove_iface(ifindex)
    }
    fn set_own_macs(
        &mut self,
        macs: &std::collections::BTreeMap<[u8; 6], u32>,
    ) -> Result<(), DataplaneError> {
        self.dp.set_own_macs(macs)
    }
    fn set_fragment_takers(&mut self, takers: &[(VsKey, u16)]) -> Result<(), DataplaneError> {
        self.dp.set_fragment_takers(takers)
    }
    fn set_nat_reals(
        &mut self,
        reals: &[(VsKey, lb_common::NatState)],
    ) -> Result<(), DataplaneError> {
        self.dp.set_nat_reals(reals)
    }
    fn set_real(&mut self, id: u32, info: &RealInfo) -> Result<(), DataplaneError> {
        if self.failing_reals > 0 {
            self.failing_reals -= 1;
            return Err(enomem(lb_common::maps::REALS));
        }
        self.dp.set_real(id, info)
    }
    fn set_ring_slots(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        for &(_, id) in slots {
            if id != NO_REAL && !self.dp.reals.contains_key(&id) {
                self.named_unwritten.insert(id);
            }
        }
        match self.budget {
            Some(n) if slots.len() > n => {
                self.dp.set_ring_slots(ring_id, &slots[..n])?;
                Err(enomem(VS_RINGS))
            }
            _ => self.dp.set_ring_slots(ring_id, slots),
        }
    }
    fn set_vs(&mut self, key: &VsKey, info: &VsInfo) -> Result<(), DataplaneError> {
        self.dp.set_vs(key, info)
    }
    fn remove_vs(&mut self, key: &VsKey) -> Result<(), DataplaneError> {
        self.dp.remove_vs(key)
    }
    fn set_settings(&mut self, bits: u32) -> Result<(), DataplaneError> {
        self.dp.set_settings(bits)
    }
    fn set_syn_guard(&mut self, per_window: u32) -> Result<(), DataplaneError> {
        self.dp.set_syn_guard(per_window)
    }
    fn set_addr_filter(
        &mut self,
        words: &[(u32, u64)],
        written: bool,
    ) -> Result<(), DataplaneError> {
        self.dp.set_addr_filter(words, written)
    }
    fn reset_counters(&mut self, vs: Option<u32>, real: Option<u32>) -> Result<(), DataplaneError> {
        self.dp.reset_counters(vs, real)
    }
}

#[test]
fn a_ring_write_that_failed_part_way_is_rewritten_whole() {
    let web = |reals: usize| {
        parse(&[Vs {
            shape: 0,
            table_size: 1009,
            reals: (1..=reals).map(|h| (address(0, h), 80, 1, false)).collect(),
            sorry: None,
        }])
    };
    let mut r = Reconciler::new(Flaky::default(), 8, 16);
    r.apply(&web(2)).unwrap(); // ring A
    r.apply(&web(3)).unwrap(); // ring B, live
    r.dataplane_mut().budget = Some(20);
    assert!(r.apply(&web(4)).is_err(), "ring A half written");
    r.dataplane_mut().budget = None;
    // Back to what ring A held before: the slots the failed write changed must be
    // written back, or the data path reads reals the reconciler thinks are not there.
    r.apply(&web(2)).unwrap();
    let key = vs_value(r.virtual_servers().next().unwrap()).0;
    let read = r.dataplane().dp.table(&key).unwrap();
    let live = r.live_table("web").unwrap();
    let stale = read.iter().zip(live).filter(|(a, b)| a != b).count();
    assert_eq!(
        stale, 0,
        "slots the data path reads otherwise than the reconciler"
    );
}

#[test]
fn a_real_whose_write_failed_is_written_before_a_table_names_it() {
    // A new real is first written with the flags it gains before its table; that write
    // fails here. The retry must write it again: the table names it, and the data path
    // reads its address and MAC from REALS without looking at its flags.
    let web = parse(&[Vs {
        shape: 0,
        table_size: 1009,
        reals: (1..=2).map(|h| (address(0, h), 80, 1, false)).collect(),
        sorry: None,
    }]);
    let mut r = Reconciler::new(Flaky::default(), 8, 16);
    r.dataplane_mut().failing_reals = 1;
    assert!(r.apply(&web).is_err(), "the first REALS write fails");
    r.apply(&web).unwrap();
    let unwritten = &r.dataplane().named_unwritten;
    assert!(
        unwritten.is_empty(),
        "a table named reals before REALS held them: {unwritten:?}"
    );
    let key = vs_value(r.virtual_servers().next().unwrap()).0;
    let named: HashSet<u32> = r
        .dataplane()
        .dp
        .table(&key)
        .unwrap()
        .into_iter()
        .filter(|&id| id != NO_REAL)
        .collect();
    assert_eq!(named.len(), 2);
    for id in named {
        let info = r.dataplane().dp.reals.get(&id);
        assert!(
            info.is_some_and(|i| i.flags & lb_common::REAL_F_ACTIVE != 0),
            "real {id} is in the table but REALS holds {info:?}"
        );
    }
}
