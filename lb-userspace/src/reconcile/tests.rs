use std::path::Path;

use lb_common::{VsKey, NO_REAL, REAL_F_ACTIVE, REAL_F_NEW, SETTING_CLIENTS_BY_DEST, SETTING_NAT};

use super::*;
use crate::{
    config::{self, AnyInterface, Config},
    dataplane::memory::MemoryDataplane,
};

/// One virtual server with `extra` YAML lines (indented as its fields) and reals.
fn cfg_with(extra: &str, reals: &[(&str, u32)]) -> Config {
    let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 1009\n");
    t.push_str(extra);
    t.push_str("    real_servers:\n");
    for (a, w) in reals {
        t.push_str(&format!("      - {{ address: {a}, weight: {w} }}\n"));
    }
    config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
}

/// Unprobed reals: healthy from the start.
fn cfg(reals: &[(&str, u32)]) -> Config {
    cfg_with("    health_check: { type: none }\n", reals)
}

fn rk(a: &str) -> RealKey {
    RealKey::real("web", a.parse().unwrap(), 80)
}

fn ids_in_table(r: &Reconciler<MemoryDataplane>) -> std::collections::BTreeSet<u32> {
    r.dp.table(&key())
        .unwrap()
        .into_iter()
        .filter(|&i| i != NO_REAL)
        .collect()
}

fn key() -> VsKey {
    VsKey::new("10.0.0.100".parse().unwrap(), 80, 6)
}

#[test]
fn apply_installs_a_table_of_the_configured_reals() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
    let t = r.dp.table(&key()).unwrap();
    assert_eq!(t.len(), 1009);
    let ids: std::collections::HashSet<u32> = t.iter().copied().collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        assert_eq!(r.dp.reals[&id].flags & REAL_F_ACTIVE, REAL_F_ACTIVE);
    }
}

#[test]
fn a_virtual_server_that_takes_fragments_is_found_by_address_and_protocol() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let reals = [("10.0.1.1", 1)];
    r.apply(&cfg_with(
        "    health_check: { type: none }\n    fragments: true\n",
        &reals,
    ))
    .unwrap();
    let taker = VsKey::new("10.0.0.100".parse().unwrap(), 0, 6);
    assert_eq!(r.dp.frag_vs.get(&taker), Some(&80u16.to_be()));
    assert!(r.dp.vs.contains_key(&key()), "its own entry as before");
    r.apply(&cfg(&reals)).unwrap();
    assert!(r.dp.frag_vs.is_empty(), "fragments off: the entry goes");
}

#[test]
fn a_change_goes_to_the_idle_ring_and_flips() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
    let ring0 = r.dp.vs[&key()].ring_id;
    let before = r.dp.table(&key()).unwrap();
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)]))
        .unwrap();
    let ring1 = r.dp.vs[&key()].ring_id;
    assert_ne!(ring0, ring1, "new table must be written to the other ring");
    // The old ring is untouched until the next change.
    let old: Vec<u32> = (0..1009)
        .map(|s| r.dp.rings[&(ring0 * lb_common::RING_STRIDE + s)])
        .collect();
    assert_eq!(old, before);
    // Same config again: nothing written, nothing flipped.
    let writes = r.dp.slot_writes;
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)]))
        .unwrap();
    assert_eq!(r.dp.slot_writes, writes);
    assert_eq!(r.dp.vs[&key()].ring_id, ring1);
    // A third change writes only the slots that differ from that ring's old content.
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
    assert_eq!(r.dp.vs[&key()].ring_id, ring0);
    assert_eq!(
        r.dp.slot_writes, writes,
        "ring0 already held exactly this table"
    );
}

#[test]
fn removed_real_is_inactive_and_kept_ids_are_stable() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
    let k1 = RealKey::real("web", "10.0.1.1".parse().unwrap(), 80);
    let k2 = RealKey::real("web", "10.0.1.2".parse().unwrap(), 80);
    let (id1, id2) = (r.real_id(&k1).unwrap(), r.real_id(&k2).unwrap());
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    assert_eq!(r.real_id(&k1), Some(id1));
    assert_eq!(r.dp.reals[&id2].flags & REAL_F_ACTIVE, 0);
    assert!(r.dp.table(&key()).unwrap().iter().all(|&id| id == id1));
}

#[test]
fn zero_weight_leaves_the_table_but_stays_active() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 0)])).unwrap();
    let id2 = r
        .real_id(&RealKey::real("web", "10.0.1.2".parse().unwrap(), 80))
        .unwrap();
    assert!(!r.dp.table(&key()).unwrap().contains(&id2));
    assert_eq!(
        r.dp.reals[&id2].flags & REAL_F_ACTIVE,
        REAL_F_ACTIVE,
        "drained, not removed"
    );
    r.apply(&cfg(&[("10.0.1.1", 0), ("10.0.1.2", 0)])).unwrap();
    assert!(r.dp.table(&key()).unwrap().iter().all(|&id| id == NO_REAL));
}

#[test]
fn next_hop_updates_reach_the_real() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    let hop = L2Next {
        ifindex: 7,
        mac: [2, 0, 0, 0, 0, 1],
    };
    r.set_next_hop("10.0.1.1".parse().unwrap(), hop).unwrap();
    let id = r
        .real_id(&RealKey::real("web", "10.0.1.1".parse().unwrap(), 80))
        .unwrap();
    assert_eq!((r.dp.reals[&id].ifindex, r.dp.reals[&id].mac), (7, hop.mac));
}

/// `REAL_F_BY_DEST` (decision 0024) is the host's to give and take: the health policy's
/// flags come and go beside it, a real added later at the address gets it, and a
/// removed real's id keeps none of it.
#[test]
fn a_real_keeps_its_route_mark_through_health_changes_and_new_reals_get_it() {
    use lb_common::REAL_F_BY_DEST;
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let yaml = |reals: &str| {
        let t = format!("interfaces: [eth0]\nvirtual_servers:\n  - {{ name: web, address: 10.0.0.100, port: 80, protocol: tcp, method: nat, health_check: {{ type: tcp }}, real_servers: [{reals}] }}\n");
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    r.apply(&yaml("{ address: 10.0.1.1, port: 8080 }")).unwrap();
    let addr: IpAddr = "10.0.1.1".parse().unwrap();
    assert_eq!(r.nat_real_addresses(), vec![addr]);
    let k8080 = RealKey::real("web", addr, 8080);
    // Without REAL_F_SOLE_NAT and REAL_F_PLAIN_NAT, which the configuration decides
    // (tested below).
    let flags = |r: &Reconciler<MemoryDataplane>, k: &RealKey| {
        r.dp.reals[&r.real_id(k).unwrap()].flags
            & !(lb_common::REAL_F_SOLE_NAT | lb_common::REAL_F_PLAIN)
    };
    assert_eq!(flags(&r, &k8080), 0, "not probed yet");
    r.set_by_dest(addr, true).unwrap();
    assert_eq!(flags(&r, &k8080), REAL_F_BY_DEST);
    assert!(r.set_health(&k8080, true).unwrap());
    let all = REAL_F_ACTIVE | REAL_F_NEW | REAL_F_BY_DEST;
    assert_eq!(flags(&r, &k8080), all);
    assert!(r.set_health(&k8080, false).unwrap());
    let only = "health takes its own flags only";
    assert_eq!(flags(&r, &k8080), REAL_F_BY_DEST, "{only}");
    assert!(r.set_health(&k8080, true).unwrap());
    assert_eq!(flags(&r, &k8080), all);
    // A real at the same address, on another port, added after the mark.
    r.apply(&yaml(
        "{ address: 10.0.1.1, port: 8080 }, { address: 10.0.1.1, port: 8081 }",
    ))
    .unwrap();
    let k8081 = RealKey::real("web", addr, 8081);
    assert!(r.set_health(&k8081, true).unwrap());
    assert_eq!(
        flags(&r, &k8081),
        REAL_F_ACTIVE | REAL_F_NEW | REAL_F_BY_DEST
    );
    r.set_by_dest(addr, false).unwrap();
    assert_eq!(flags(&r, &k8080), REAL_F_ACTIVE | REAL_F_NEW);
    assert_eq!(flags(&r, &k8081), REAL_F_ACTIVE | REAL_F_NEW);
    r.set_by_dest(addr, true).unwrap();
    let id = r.real_id(&k8081).unwrap();
    r.apply(&yaml("{ address: 10.0.1.1, port: 8080 }")).unwrap();
    assert_eq!(r.dp.reals[&id].flags, 0, "a freed id carries no flag");
    // A direct routing real at the same address is not marked: only NAT reads it.
    let both = "interfaces: [eth0]\nvirtual_servers:\n  - { name: web, address: 10.0.0.100, port: 80, protocol: tcp, method: nat, health_check: { type: none }, real_servers: [{ address: 10.0.1.1, port: 8080 }] }\n  - { name: dr, address: 10.0.0.101, port: 80, protocol: tcp, health_check: { type: none }, real_servers: [{ address: 10.0.1.1 }] }\n";
    r.apply(&config::parse(Path::new("t.yaml"), both, &AnyInterface).unwrap())
        .unwrap();
    r.set_by_dest(addr, true).unwrap();
    let dr = RealKey::real("dr", addr, 80);
    assert_eq!(flags(&r, &dr), REAL_F_ACTIVE | REAL_F_NEW);
    assert_eq!(flags(&r, &k8080) & REAL_F_BY_DEST, REAL_F_BY_DEST);
}

/// The host's marks (decision 0024) go into the data path beside the configuration's:
/// an apply keeps `SETTING_CLIENTS_BY_DEST`, an address no longer asked about loses
/// `REAL_F_BY_DEST`, and a daemon that stops takes every mark away.
#[test]
fn the_hosts_route_marks_outlive_applies_not_the_daemon() {
    use lb_common::REAL_F_BY_DEST;

    use crate::netlink::RouteShape;
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let nat = "interfaces: [eth0]\nvirtual_servers:\n  - { name: n, address: 10.0.0.1, port: 80, protocol: tcp, method: nat, health_check: { type: none }, real_servers: [{ address: 10.0.1.1, port: 8080 }] }\n";
    let config = config::parse(Path::new("t.yaml"), nat, &AnyInterface).unwrap();
    r.apply(&config).unwrap();
    let addr: IpAddr = "10.0.1.1".parse().unwrap();
    let id = r.real_id(&RealKey::real("n", addr, 8080)).unwrap();
    let shape = |reals: Vec<(IpAddr, bool)>, clients| RouteShape {
        reals,
        clients,
        too_many_routes: false,
    };
    r.set_route_shape(&shape(vec![(addr, true)], true)).unwrap();
    let both = SETTING_NAT | SETTING_CLIENTS_BY_DEST;
    assert_eq!(r.dp.settings, both);
    assert_eq!(r.dp.reals[&id].flags & REAL_F_BY_DEST, REAL_F_BY_DEST);
    r.apply(&config).unwrap();
    assert_eq!(r.dp.settings, both, "an apply keeps the host's bit");
    r.set_route_shape(&shape(Vec::new(), true)).unwrap();
    assert_eq!(r.dp.reals[&id].flags & REAL_F_BY_DEST, 0, "not asked about");
    r.set_route_shape(&shape(vec![(addr, true)], true)).unwrap();
    r.clear_route_shape().unwrap();
    assert_eq!(r.dp.settings, SETTING_NAT);
    assert_eq!(r.dp.reals[&id].flags & REAL_F_BY_DEST, 0);
}

#[test]
fn nat_reply_lookup_is_switched_on_only_while_a_nat_vs_exists() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    assert_eq!(r.dp.settings, 0);
    let nat = "interfaces: [eth0]\nvirtual_servers:\n  - { name: n, address: 10.0.0.1, port: 80, protocol: tcp, method: nat, health_check: { type: none }, real_servers: [{ address: 10.0.1.1, port: 8080 }] }\n";
    r.apply(&config::parse(Path::new("t.yaml"), nat, &AnyInterface).unwrap())
        .unwrap();
    assert_eq!(r.dp.settings, SETTING_NAT);
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    assert_eq!(r.dp.settings, 0);
}

/// NAT_REALS names each NAT real whose address and port serve one NAT virtual server;
/// a real two NAT virtual servers share is left out (its replies use NAT_STATE), and
/// enters once it is no longer shared.
#[test]
fn nat_reals_hold_the_reals_that_serve_one_nat_virtual_server_only() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let vs = |name: &str, vip: &str, reals: &str| {
        format!("  - {{ name: {name}, address: {vip}, port: 80, protocol: tcp, method: nat, health_check: {{ type: tcp }}, real_servers: [{reals}] }}\n")
    };
    let both = format!(
        "interfaces: [eth0]\nvirtual_servers:\n{}{}",
        vs(
            "a",
            "10.0.0.1",
            "{ address: 10.0.1.1, port: 8080 }, { address: 10.0.1.2, port: 8080 }"
        ),
        vs(
            "b",
            "10.0.0.2",
            "{ address: 10.0.1.2, port: 8080 }, { address: 10.0.1.2, port: 9090 }"
        ),
    );
    r.apply(&config::parse(Path::new("t.yaml"), &both, &AnyInterface).unwrap())
        .unwrap();
    let key = |a: [u8; 4], port: u16| VsKey {
        addr: [u32::from_ne_bytes(a), 0, 0, 0],
        port_be: port.to_be(),
        proto: 6,
        family: lb_common::FAMILY_V4,
    };
    let vip_of = |r: &Reconciler<MemoryDataplane>, k: &VsKey| {
        r.dp.nat_reals
            .get(k)
            .map(|s| (s.vip[0].to_ne_bytes(), u16::from_be(s.vport_be)))
    };
    assert_eq!(r.dp.nat_reals.len(), 2, "{:?}", r.dp.nat_reals);
    assert_eq!(
        vip_of(&r, &key([10, 0, 1, 1], 8080)),
        Some(([10, 0, 0, 1], 80))
    );
    assert_eq!(
        vip_of(&r, &key([10, 0, 1, 2], 9090)),
        Some(([10, 0, 0, 2], 80))
    );
    assert_eq!(
        vip_of(&r, &key([10, 0, 1, 2], 8080)),
        None,
        "shared by a and b"
    );

    let only_a = format!(
        "interfaces: [eth0]\nvirtual_servers:\n{}",
        vs(
            "a",
            "10.0.0.1",
            "{ address: 10.0.1.1, port: 8080 }, { address: 10.0.1.2, port: 8080 }"
        ),
    );
    r.apply(&config::parse(Path::new("t.yaml"), &only_a, &AnyInterface).unwrap())
        .unwrap();
    assert_eq!(r.dp.nat_reals.len(), 2, "{:?}", r.dp.nat_reals);
    assert_eq!(
        vip_of(&r, &key([10, 0, 1, 2], 8080)),
        Some(([10, 0, 0, 1], 80))
    );
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    assert!(r.dp.nat_reals.is_empty(), "no NAT virtual server left");
}

/// `REAL_F_SOLE_NAT` marks exactly the reals whose `NAT_REALS` entry names their
/// virtual server, and never outlives that entry: given after it, taken before it goes
/// (the memory data path checks at every write), through a real becoming shared, sole
/// again, and its virtual server's method changing.
#[test]
fn the_sole_nat_flag_follows_the_nat_reals_entry_it_stands_for() {
    use lb_common::REAL_F_SOLE_NAT;
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let vs = |name: &str, vip: &str, method: &str, reals: &str| {
        format!("  - {{ name: {name}, address: {vip}, port: 80, protocol: tcp, method: {method}, health_check: {{ type: none }}, real_servers: [{reals}] }}\n")
    };
    let parse = |vss: &[String]| {
        let t = format!("interfaces: [eth0]\nvirtual_servers:\n{}", vss.concat());
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    let a = vs(
        "a",
        "10.0.0.1",
        "nat",
        "{ address: 10.0.1.1, port: 8080 }, { address: 10.0.1.2, port: 8080 }",
    );
    let b = vs("b", "10.0.0.2", "nat", "{ address: 10.0.1.2, port: 8080 }");
    let sole = |r: &Reconciler<MemoryDataplane>, vs: &str, addr: &str| {
        let id = r
            .real_id(&RealKey::real(vs, addr.parse().unwrap(), 8080))
            .unwrap();
        r.dp.reals[&id].flags & REAL_F_SOLE_NAT != 0
    };
    r.apply(&parse(std::slice::from_ref(&a))).unwrap();
    assert!(sole(&r, "a", "10.0.1.1") && sole(&r, "a", "10.0.1.2"));
    r.apply(&parse(&[a.clone(), b])).unwrap();
    assert!(sole(&r, "a", "10.0.1.1"));
    assert!(
        !sole(&r, "a", "10.0.1.2") && !sole(&r, "b", "10.0.1.2"),
        "shared"
    );
    r.apply(&parse(std::slice::from_ref(&a))).unwrap();
    assert!(sole(&r, "a", "10.0.1.2"), "sole again");
    // The same virtual server on another VIP, then another protocol: its reals'
    // entries change, and the flag must not name the old ones meanwhile.
    let moved = a.replace("10.0.0.1", "10.0.0.9");
    r.apply(&parse(std::slice::from_ref(&moved))).unwrap();
    assert!(sole(&r, "a", "10.0.1.1"));
    let udp = moved.replace("protocol: tcp", "protocol: udp");
    r.apply(&parse(std::slice::from_ref(&udp))).unwrap();
    assert!(sole(&r, "a", "10.0.1.1"));
    assert!(r.dp.sole_misses.is_empty(), "{:?}", r.dp.sole_misses);
    let dr = vs("a", "10.0.0.1", "dr", "{ address: 10.0.1.1, port: 8080 }");
    let dr = dr.replace(", port: 8080", "");
    r.apply(&parse(&[dr])).unwrap();
    let id = r
        .real_id(&RealKey::real("a", "10.0.1.1".parse().unwrap(), 80))
        .unwrap();
    assert_eq!(r.dp.reals[&id].flags & REAL_F_SOLE_NAT, 0, "not NAT");
    assert!(r.dp.sole_misses.is_empty(), "{:?}", r.dp.sole_misses);
}

/// `REAL_F_PLAIN_*` (decisions 0027, 0028) marks the reals of a virtual server by its
/// method, with `REAL_F_PLAIN_PERSIST` where it has persistence (0033), and no other:
/// at no step is an active real flagged otherwise than its virtual server (in
/// `VS_MAP`, by index) warrants (the memory data path checks at every write), through
/// method and persistence changes and removal. A virtual server that moves to another
/// VIP under its name gives its reals new generations, so that flows of the old VIP,
/// which the data path forwards by their real alone, are no longer theirs.
#[test]
fn the_plain_flags_follow_the_method_and_a_moved_virtual_server_retires_its_reals() {
    use lb_common::{
        REAL_F_PLAIN, REAL_F_PLAIN_DR, REAL_F_PLAIN_NAT, REAL_F_PLAIN_PERSIST, REAL_F_PLAIN_TUNNEL,
    };
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let parse = |vip: &str, extra: &str| {
        let t = format!("interfaces: [eth0]\nvirtual_servers:\n  - {{ name: a, address: {vip}, port: 80, protocol: tcp, health_check: {{ type: none }}{extra}, real_servers: [{{ address: 10.0.1.1 }}, {{ address: 10.0.1.2 }}] }}\n");
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    let real = |r: &Reconciler<MemoryDataplane>| {
        let id = r
            .real_id(&RealKey::real("a", "10.0.1.1".parse().unwrap(), 80))
            .unwrap();
        (id, r.dp.reals[&id])
    };
    r.apply(&parse("10.0.0.1", "")).unwrap();
    assert_eq!(real(&r).1.flags & REAL_F_PLAIN, REAL_F_PLAIN_DR);
    r.apply(&parse("10.0.0.1", ", method: nat")).unwrap();
    assert_eq!(real(&r).1.flags & REAL_F_PLAIN, REAL_F_PLAIN_NAT);
    r.apply(&parse(
        "10.0.0.1",
        ", method: tunnel, tunnel_source: 10.0.9.1",
    ))
    .unwrap();
    assert_eq!(real(&r).1.flags & REAL_F_PLAIN, REAL_F_PLAIN_TUNNEL);
    // Another outer source: the flag stays (the data path checks the copy it reads).
    r.apply(&parse(
        "10.0.0.1",
        ", method: tunnel, tunnel_source: 10.0.9.2",
    ))
    .unwrap();
    assert_eq!(real(&r).1.flags & REAL_F_PLAIN, REAL_F_PLAIN_TUNNEL);
    let vs = r.dp.vs.values().next().expect("the virtual server");
    assert_eq!(vs.tunnel_src[0], u32::from_ne_bytes([10, 0, 9, 2]));
    r.apply(&parse(
        "10.0.0.1",
        ", method: tunnel, tunnel_source: 10.0.9.2, persistence: { timeout: 60s }",
    ))
    .unwrap();
    assert_eq!(
        real(&r).1.flags & REAL_F_PLAIN,
        REAL_F_PLAIN_TUNNEL | REAL_F_PLAIN_PERSIST,
        "tunnel with persistence"
    );
    r.apply(&parse("10.0.0.1", "")).unwrap();
    assert_eq!(real(&r).1.flags & REAL_F_PLAIN, REAL_F_PLAIN_DR);
    let persistent = ", persistence: { timeout: 60s }";
    r.apply(&parse("10.0.0.1", persistent)).unwrap();
    assert_eq!(
        real(&r).1.flags & REAL_F_PLAIN,
        REAL_F_PLAIN_DR | REAL_F_PLAIN_PERSIST,
        "persistence"
    );
    r.apply(&parse("10.0.0.1", &format!(", method: nat{persistent}")))
        .unwrap();
    assert_eq!(
        real(&r).1.flags & REAL_F_PLAIN,
        REAL_F_PLAIN_NAT | REAL_F_PLAIN_PERSIST,
        "NAT with persistence"
    );
    r.apply(&parse("10.0.0.1", "")).unwrap();
    let (id, before) = real(&r);
    assert_eq!(before.flags & REAL_F_PLAIN, REAL_F_PLAIN_DR);
    r.apply(&parse("10.0.0.2", "")).unwrap();
    let (now_id, now) = real(&r);
    assert_ne!(
        (now_id, now.generation),
        (id, before.generation),
        "moved: the real is another"
    );
    let old = r.dp.reals[&id];
    assert!(
        id == now_id || old.generation != before.generation && old.flags == 0,
        "the old id is retired: {old:?}"
    );
    assert_eq!(now.flags & REAL_F_PLAIN, REAL_F_PLAIN_DR);
    let empty = "interfaces: [eth0]\nvirtual_servers: []\n";
    r.apply(&config::parse(Path::new("t.yaml"), empty, &AnyInterface).unwrap())
        .unwrap();
    assert_eq!(r.dp.reals[&now_id].flags, 0, "removed");
    assert!(r.dp.plain_misses.is_empty(), "{:?}", r.dp.plain_misses);
}

#[test]
fn a_renamed_virtual_server_or_one_moved_into_a_vacated_key_keeps_its_entry() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    // (name, VIP) pairs, all at port 80/tcp, each with one real of its own.
    let parse = |vss: &[(&str, &str, &str)]| {
        let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
        for (name, vip, real) in vss {
            t.push_str(&format!("  - {{ name: {name}, address: {vip}, port: 80, protocol: tcp, health_check: {{ type: none }}, real_servers: [{{ address: {real} }}] }}\n"));
        }
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    let at = |vip: &str| VsKey::new(vip.parse().unwrap(), 80, 6);
    // The value under `vip` is `name`'s and its table holds `name`'s real.
    let serves = |r: &Reconciler<MemoryDataplane>, vip: &str, name: &str, real: &str| {
        let info = r.dp.vs.get(&at(vip)).copied();
        let id = r
            .real_id(&RealKey::real(name, real.parse().unwrap(), 80))
            .unwrap();
        assert_eq!(r.tables.key(name), Some(at(vip)), "{name} is applied there");
        let table = r.dp.table(&at(vip));
        assert!(
            info.is_some() && table.as_ref().is_some_and(|t| t.iter().all(|&i| i == id)),
            "{vip} serves {name}: {info:?}"
        );
    };
    r.apply(&parse(&[
        ("a", "10.0.0.1", "10.0.1.1"),
        ("c", "10.0.0.2", "10.0.1.2"),
    ]))
    .unwrap();
    serves(&r, "10.0.0.1", "a", "10.0.1.1");
    // Renamed at the same key: the old name's removal must not take the new value.
    r.apply(&parse(&[
        ("b", "10.0.0.1", "10.0.1.1"),
        ("c", "10.0.0.2", "10.0.1.2"),
    ]))
    .unwrap();
    serves(&r, "10.0.0.1", "b", "10.0.1.1");
    // Moved into the key a removed virtual server leaves.
    r.apply(&parse(&[("b", "10.0.0.2", "10.0.1.1")])).unwrap();
    serves(&r, "10.0.0.2", "b", "10.0.1.1");
    assert!(
        !r.dp.vs.contains_key(&at("10.0.0.1")),
        "the key b left is free"
    );
    // And the next apply, with nothing to change, leaves it so.
    r.apply(&parse(&[("b", "10.0.0.2", "10.0.1.1")])).unwrap();
    serves(&r, "10.0.0.2", "b", "10.0.1.1");
    assert_eq!(r.dp.vs.len(), 1);
}

#[test]
fn probed_reals_start_out_of_the_table_and_enter_when_healthy() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg_with("", &[("10.0.1.1", 1), ("10.0.1.2", 1)]))
        .unwrap();
    assert!(ids_in_table(&r).is_empty(), "no real is healthy yet");
    let (id1, id2) = (
        r.real_id(&rk("10.0.1.1")).unwrap(),
        r.real_id(&rk("10.0.1.2")).unwrap(),
    );
    assert_eq!(r.dp.reals[&id1].flags & !lb_common::REAL_F_PLAIN, 0);
    assert!(r.set_health(&rk("10.0.1.1"), true).unwrap());
    assert_eq!(ids_in_table(&r), [id1].into());
    assert_eq!(
        r.dp.reals[&id1].flags & !lb_common::REAL_F_PLAIN,
        REAL_F_ACTIVE | REAL_F_NEW
    );
    r.set_health(&rk("10.0.1.2"), true).unwrap();
    assert_eq!(ids_in_table(&r), [id1, id2].into());
    assert!(!r.set_health(&rk("10.0.1.2"), true).unwrap(), "no change");
}

#[test]
fn a_failed_real_leaves_the_table_and_its_generation_is_retired() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let c = cfg_with("", &[("10.0.1.1", 1), ("10.0.1.2", 1)]);
    r.apply(&c).unwrap();
    r.set_health(&rk("10.0.1.1"), true).unwrap();
    r.set_health(&rk("10.0.1.2"), true).unwrap();
    let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
    let gen = r.dp.reals[&id2].generation;
    r.set_health(&rk("10.0.1.2"), false).unwrap();
    assert!(!ids_in_table(&r).contains(&id2));
    assert_eq!(r.dp.reals[&id2].flags & !lb_common::REAL_F_PLAIN, 0);
    assert_ne!(
        r.dp.reals[&id2].generation, gen,
        "flows pinned to it must not return"
    );
    // A reload keeps the health it learnt.
    r.apply(&c).unwrap();
    assert!(!ids_in_table(&r).contains(&id2));
    r.set_health(&rk("10.0.1.2"), true).unwrap();
    assert!(ids_in_table(&r).contains(&id2));
}

#[test]
fn a_new_real_no_table_takes_is_written_all_the_same() {
    // Written once: with its flags before the table, or (here, probed and not yet up)
    // after it.
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg_with("", &[("10.0.1.1", 1)])).unwrap();
    let id = r.real_id(&rk("10.0.1.1")).unwrap();
    assert!(ids_in_table(&r).is_empty(), "not up yet");
    let info = r.dp.reals[&id];
    assert_eq!(info.flags & !lb_common::REAL_F_PLAIN, 0);
    assert_eq!(info.role, lb_common::REAL_ROLE_REAL);
    assert_eq!(
        lb_common::user::words_addr(info.addr, info.family),
        Some("10.0.1.1".parse().unwrap())
    );
    assert_eq!(u16::from_be(info.port_be), 80);
}

#[test]
fn weight_zero_drains_active_without_new_flows() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)])).unwrap();
    let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
    let gen = r.dp.reals[&id2].generation;
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 0)])).unwrap();
    assert_eq!(
        r.dp.reals[&id2].flags & !lb_common::REAL_F_PLAIN,
        REAL_F_ACTIVE,
        "draining: no REAL_F_NEW"
    );
    assert_eq!(r.dp.reals[&id2].generation, gen, "its flows go on");
}

#[test]
fn the_sorry_server_fills_the_table_only_while_no_real_takes_flows() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let c = cfg_with(
        "    sorry_server: { address: 10.0.9.9 }\n",
        &[("10.0.1.1", 1)],
    );
    r.apply(&c).unwrap();
    let sorry = RealKey::sorry("web", "10.0.9.9".parse().unwrap(), 80);
    let sid = r.real_id(&sorry).unwrap();
    assert_eq!(ids_in_table(&r), [sid].into());
    r.set_health(&rk("10.0.1.1"), true).unwrap();
    let id1 = r.real_id(&rk("10.0.1.1")).unwrap();
    assert_eq!(ids_in_table(&r), [id1].into());
    assert_eq!(
        r.dp.reals[&sid].flags & !lb_common::REAL_F_PLAIN,
        REAL_F_ACTIVE,
        "its own flows finish"
    );
    r.set_health(&rk("10.0.1.1"), false).unwrap();
    assert_eq!(ids_in_table(&r), [sid].into());
    // Without a sorry server: an empty table (new flows dropped and counted).
    r.apply(&cfg_with("", &[("10.0.1.1", 1)])).unwrap();
    assert!(ids_in_table(&r).is_empty());
    assert_eq!(r.real_id(&sorry), None);
}

#[test]
fn overrides_drain_and_reweight_until_the_file_changes_the_weight() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let c = cfg(&[("10.0.1.1", 1), ("10.0.1.2", 1)]);
    r.apply(&c).unwrap();
    let id2 = r.real_id(&rk("10.0.1.2")).unwrap();
    let disable = Override {
        disabled: true,
        ..Override::new(1)
    };
    assert!(r.set_override(&rk("10.0.1.2"), Some(disable)).unwrap());
    assert!(!ids_in_table(&r).contains(&id2));
    assert_eq!(
        r.dp.reals[&id2].flags & !lb_common::REAL_F_PLAIN,
        REAL_F_ACTIVE
    );
    // Same file again: the override stays.
    r.apply(&c).unwrap();
    assert!(!ids_in_table(&r).contains(&id2));
    // The file changes that real's weight: the file wins.
    r.apply(&cfg(&[("10.0.1.1", 1), ("10.0.1.2", 3)])).unwrap();
    assert!(ids_in_table(&r).contains(&id2));
    assert_eq!(r.override_of(&rk("10.0.1.2")), None);
    // A weight override changes the share.
    let w = Override {
        weight: Some(1),
        ..Override::new(3)
    };
    r.set_override(&rk("10.0.1.2"), Some(w)).unwrap();
    let t = r.dp.table(&key()).unwrap();
    let share = t.iter().filter(|&&i| i == id2).count() as f64 / t.len() as f64;
    assert!((share - 0.5).abs() < 0.02, "share {share}");
    assert!(
        !r.set_override(&rk("10.9.9.9"), None).unwrap(),
        "unknown real"
    );
}

#[test]
fn persistence_reaches_the_virtual_server_value() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&cfg(&[("10.0.1.1", 1)])).unwrap();
    assert_eq!(r.dp.vs[&key()].persist_timeout_ns, 0);
    let ring = r.dp.vs[&key()].ring_id;
    r.apply(&cfg_with(
        "    health_check: { type: none }\n    persistence: { timeout: 300s, netmask: 24 }\n",
        &[("10.0.1.1", 1)],
    ))
    .unwrap();
    let v = r.dp.vs[&key()];
    assert_eq!(v.persist_timeout_ns, 300_000_000_000);
    assert_eq!(v.persist_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
    assert_eq!(v.ring_id, ring, "same table: only the value is rewritten");
}

/// Two virtual servers (probed reals, a sorry server, a NAT one), applied and made
/// healthy, with next hops: what an earlier daemon would leave in the maps.
fn earlier_daemon() -> (Reconciler<MemoryDataplane>, Config) {
    let text = "interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    address: 10.0.0.100\n    port: 80\n    protocol: tcp\n    table_size: 1009\n    sorry_server: { address: 10.0.9.9 }\n    real_servers: [{ address: 10.0.1.1 }, { address: 10.0.1.2, weight: 2 }, { address: 10.0.1.3 }]\n  - { name: dns, address: 10.0.0.100, port: 53, protocol: udp, method: nat, table_size: 1009, real_servers: [{ address: 10.0.2.1, port: 5353 }] }\n";
    let c = config::parse(Path::new("t.yaml"), text, &AnyInterface).unwrap();
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    r.apply(&c).unwrap();
    r.set_health(&rk("10.0.1.1"), true).unwrap();
    r.set_health(&rk("10.0.1.2"), true).unwrap();
    // 10.0.1.3 failed after serving: out of the table, its generation retired.
    r.set_health(&rk("10.0.1.3"), true).unwrap();
    r.set_health(&rk("10.0.1.3"), false).unwrap();
    let hop = L2Next {
        ifindex: 3,
        mac: [2, 0, 0, 0, 1, 1],
    };
    r.set_next_hop("10.0.1.1".parse().unwrap(), hop).unwrap();
    (r, c)
}

#[test]
fn an_adopted_data_path_with_the_same_configuration_is_not_rewritten() {
    let (earlier, c) = earlier_daemon();
    let ids: Vec<Option<u32>> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        .iter()
        .map(|a| earlier.real_id(&rk(a)))
        .collect();
    let dp = earlier.into_dataplane();
    let (vs, reals, rings, settings) = (
        dp.vs.clone(),
        dp.reals.clone(),
        dp.rings.clone(),
        dp.settings,
    );
    let (slots, values) = (dp.slot_writes, dp.value_writes);
    let (mut r, found) = Reconciler::adopt(dp, 8, 16, &c).unwrap();
    assert_eq!(found.virtual_servers, ["dns", "web"]);
    assert_eq!(
        found.reals, 5,
        "three reals, the sorry server and dns's real"
    );
    assert!(found.removed.is_empty());
    r.apply(&c).unwrap();
    let dp = r.dataplane();
    assert_eq!(
        (dp.slot_writes, dp.value_writes),
        (slots, values),
        "nothing rewritten: no ring slot, no real, no virtual server"
    );
    assert_eq!((&dp.vs, &dp.reals, &dp.rings), (&vs, &reals, &rings));
    assert_eq!(dp.settings, settings);
    let now: Vec<Option<u32>> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        .iter()
        .map(|a| r.real_id(&rk(a)))
        .collect();
    assert_eq!(now, ids, "every real keeps its id");
    assert!(r.healthy(&rk("10.0.1.1")) && r.healthy(&rk("10.0.1.2")));
    assert!(!r.healthy(&rk("10.0.1.3")), "it was out when adopted");
    // What adoption learnt goes on as before: a change writes the idle ring.
    r.set_health(&rk("10.0.1.3"), true).unwrap();
    assert!(ids_in_table(&r).contains(&ids[2].unwrap()));
    assert_ne!(r.dataplane().vs[&key()].ring_id, vs[&key()].ring_id);
}

#[test]
fn adoption_removes_what_the_configuration_no_longer_has() {
    let (earlier, _) = earlier_daemon();
    let id3 = earlier.real_id(&rk("10.0.1.3")).unwrap();
    let dns_real = earlier
        .real_id(&RealKey::real("dns", "10.0.2.1".parse().unwrap(), 5353))
        .unwrap();
    let dp = earlier.into_dataplane();
    let dns_gen = dp.reals[&dns_real].generation;
    // dns is gone, 10.0.1.3 is gone, a new real 10.0.1.4 comes.
    let c = cfg_with(
        "    sorry_server: { address: 10.0.9.9 }\n",
        &[("10.0.1.1", 1), ("10.0.1.2", 2), ("10.0.1.4", 1)],
    );
    let (mut r, found) = Reconciler::adopt(dp, 8, 16, &c).unwrap();
    assert_eq!(found.removed, ["10.0.0.100:53/udp"]);
    let dp = r.dataplane();
    assert_eq!(dp.vs.len(), 1, "dns's virtual server is gone at once");
    let gone = dp.reals[&dns_real];
    assert_eq!((gone.flags, gone.role), (0, lb_common::REAL_ROLE_FREE));
    assert_ne!(
        gone.generation, dns_gen,
        "flows pinned to it never come back"
    );
    r.apply(&c).unwrap();
    assert_eq!(r.real_id(&rk("10.0.1.3")), None);
    assert_eq!(r.dataplane().reals[&id3].role, lb_common::REAL_ROLE_FREE);
    // The new real is probed and not healthy yet: the adopted two serve.
    let id4 = r.real_id(&rk("10.0.1.4")).unwrap();
    assert!(!ids_in_table(&r).contains(&id4));
    assert_eq!(ids_in_table(&r).len(), 2);
    // The dns real lost REAL_F_PLAIN_DR before its virtual server went (decision 0027).
    assert!(r.dp.plain_misses.is_empty(), "{:?}", r.dp.plain_misses);
}

/// `ADDR_FILTER` (decision 0022) has the bit of every VIP and of every NAT real, is
/// marked written at the first apply, never hides a virtual server that is in
/// `VS_MAP` (a VIP's bit goes in before its virtual server, and out after it), and
/// loses the bits of addresses no longer configured.
#[test]
fn the_address_filter_covers_every_vip_and_nat_real_at_every_step() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let words = |a: &str| lb_common::user::addr_words(a.parse().unwrap()).0;
    let file = |vss: &[(&str, &str, &str, &str)]| {
        let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
        for (name, vip, method, real) in vss {
            let port = if *method == "nat" { 8080 } else { 80 };
            t.push_str(&format!("  - {{ name: {name}, address: '{vip}', port: 80, protocol: tcp, method: {method}, health_check: {{ type: none }}, real_servers: [{{ address: '{real}', port: {port} }}] }}\n"));
        }
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    r.apply(&file(&[
        ("a", "10.0.0.1", "nat", "10.0.1.1"),
        ("b", "2001:db8::2", "dr", "2001:db8:1::2"),
    ]))
    .unwrap();
    assert!(r.dp.addr_filter_written);
    assert!(r.dp.filter_has(&words("10.0.0.1"), false));
    assert!(r.dp.filter_has(&words("2001:db8::2"), false));
    assert!(r.dp.filter_has(&words("10.0.1.1"), true), "a NAT real");
    assert!(
        !r.dp.filter_has(&words("2001:db8:1::2"), true),
        "a DR real sends no NAT replies"
    );
    let set: u32 = r.dp.addr_filter.values().map(|w| w.count_ones()).sum();
    assert_eq!(set, 3, "nothing else is let through");

    // a goes, c comes: at no step is a virtual server in VS_MAP hidden.
    r.apply(&file(&[
        ("b", "2001:db8::2", "dr", "2001:db8:1::2"),
        ("c", "10.0.0.3", "nat", "10.0.1.3"),
    ]))
    .unwrap();
    assert!(r.dp.filter_has(&words("10.0.0.3"), false));
    assert!(r.dp.filter_has(&words("10.0.1.3"), true));
    assert!(!r.dp.filter_has(&words("10.0.0.1"), false), "a is gone");
    assert!(!r.dp.filter_has(&words("10.0.1.1"), true));
    assert!(r.dp.filter_misses.is_empty(), "{:?}", r.dp.filter_misses);
}

/// A daemon that takes over maps an earlier one filled (a restart) does not know the
/// filter they hold: its first apply lets everything through until the exact bits are
/// written, so no virtual server it keeps or adds, and no NAT real still in `REALS`
/// (one the new file drops leaves only at the end), is hidden at any step.
#[test]
fn an_adopting_daemon_hides_nothing_while_it_rewrites_the_filter() {
    let file = |vss: &[(&str, &str)]| {
        let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
        for (i, (vip, real)) in vss.iter().enumerate() {
            t.push_str(&format!("  - {{ name: v{i}, address: {vip}, port: 80, protocol: tcp, method: nat, health_check: {{ type: none }}, real_servers: [{{ address: {real}, port: 8080 }}] }}\n"));
        }
        config::parse(Path::new("t.yaml"), &t, &AnyInterface).unwrap()
    };
    let mut earlier = Reconciler::new(MemoryDataplane::default(), 8, 16);
    earlier
        .apply(&file(&[("10.0.0.1", "10.0.1.1"), ("10.0.0.2", "10.0.1.2")]))
        .unwrap();
    assert!(earlier.dp.filter_misses.is_empty());
    // v0 keeps its VIP and changes its real; v1 goes; v2 comes.
    let c = file(&[("10.0.0.1", "10.0.1.9"), ("10.0.0.3", "10.0.1.3")]);
    let (mut r, _) = Reconciler::adopt(earlier.into_dataplane(), 8, 16, &c).unwrap();
    let words = |a: &str| lb_common::user::addr_words(a.parse().unwrap()).0;
    r.apply(&c).unwrap();
    assert!(r.dp.filter_misses.is_empty(), "{:?}", r.dp.filter_misses);
    for vip in ["10.0.0.1", "10.0.0.3"] {
        assert!(r.dp.filter_has(&words(vip), false), "{vip}");
    }
    for real in ["10.0.1.9", "10.0.1.3"] {
        assert!(r.dp.filter_has(&words(real), true), "{real}");
    }
    assert!(
        !r.dp.filter_has(&words("10.0.1.1"), true),
        "gone at the end"
    );
}

/// `syn_flood_rate` reaches `SYN_GUARD` per window of 25 ticks (decisions 0025, 0032;
/// 100 ms at this kernel's tick rate if it is the usual 250), written when it changes:
/// 0 stays 0 (never), and any other rate allows at least one SYN.
#[test]
fn the_syn_flood_rate_is_written_per_window_when_it_changes() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 8, 16);
    let reals = [("10.0.1.11", 1)];
    r.apply(&cfg(&reals)).unwrap();
    let hz = crate::dataplane::ticks::kernel_hz();
    let per_window = |per_s: u32| (per_s * 25).div_ceil(hz).max(1);
    assert_eq!(
        r.dp.syn_guard,
        per_window(10_000),
        "the default, 10,000 a second"
    );
    let with = |rate: &str| {
        let mut c = cfg(&reals);
        c.syn_flood_rate = rate.parse().unwrap();
        c
    };
    for (rate, per_window) in [("0", 0), ("5", 1), ("25000", per_window(25_000))] {
        r.apply(&with(rate)).unwrap();
        assert_eq!(r.dp.syn_guard, per_window, "syn_flood_rate {rate}");
    }
    r.dp.syn_guard = 7;
    r.apply(&with("25000")).unwrap();
    assert_eq!(r.dp.syn_guard, 7, "an unchanged rate is not written again");
}
