//! The reconciler at scale (issue 15): a reload that changes one real rewrites only its
//! virtual server's ring, value and reals; one ring per virtual server plus spares is
//! enough to switch every table atomically (decision 0013).

use std::{collections::BTreeSet, path::Path};

use lb_common::{VsKey, RING_STRIDE};

use super::*;
use crate::{
    config::{self, AnyInterface, Config},
    dataplane::memory::MemoryDataplane,
};

/// `vss` virtual servers `vs0`, `vs1`, ... of `reals` unprobed reals each (10.<v>.0.<r>),
/// `weight(v, r)` giving each real's weight.
fn many(vss: usize, reals: usize, weight: impl Fn(usize, usize) -> u32) -> Config {
    let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
    for v in 0..vss {
        t.push_str(&format!(
            "  - name: vs{v}\n    address: 10.200.0.{}\n    port: 80\n    protocol: tcp\n    table_size: 1009\n    health_check: {{ type: none }}\n    real_servers:\n",
            v + 1
        ));
        for r in 0..reals {
            t.push_str(&format!(
                "      - {{ address: 10.{v}.0.{}, weight: {} }}\n",
                r + 1,
                weight(v, r)
            ));
        }
    }
    config::parse(Path::new("many.yaml"), &t, &AnyInterface).unwrap()
}

fn vs_key(v: usize) -> VsKey {
    VsKey::new(format!("10.200.0.{}", v + 1).parse().unwrap(), 80, 6)
}

/// Returns: the rings the slots that differ between `a` and `b` belong to.
fn rings_differing(a: &MemoryDataplane, b: &MemoryDataplane) -> BTreeSet<u32> {
    let keys: BTreeSet<u32> = a.rings.keys().chain(b.rings.keys()).copied().collect();
    keys.into_iter()
        .filter(|k| a.rings.get(k) != b.rings.get(k))
        .map(|k| k / RING_STRIDE)
        .collect()
}

#[test]
fn one_real_changed_among_many_rewrites_only_its_virtual_server() {
    const VSS: usize = 40;
    let mut r = Reconciler::new(MemoryDataplane::default(), 64, 64);
    r.apply(&many(VSS, 20, |_, _| 1)).unwrap();
    let before = std::mem::take(r.dataplane_mut());
    *r.dataplane_mut() = MemoryDataplane {
        reals: before.reals.clone(),
        rings: before.rings.clone(),
        vs: before.vs.clone(),
        settings: before.settings,
        frag_vs: before.frag_vs.clone(),
        ..MemoryDataplane::default()
    };

    // The same file again: nothing is written.
    r.apply(&many(VSS, 20, |_, _| 1)).unwrap();
    let dp = r.dataplane();
    assert_eq!(
        (dp.slot_writes, dp.value_writes),
        (0, 0),
        "an unchanged reload writes nothing"
    );

    // One real of vs17 gets weight 3.
    r.apply(&many(VSS, 20, |v, r| if (v, r) == (17, 4) { 3 } else { 1 }))
        .unwrap();
    let dp = r.dataplane();
    let changed_vs: Vec<usize> = (0..VSS)
        .filter(|&v| dp.vs.get(&vs_key(v)) != before.vs.get(&vs_key(v)))
        .collect();
    assert_eq!(changed_vs, [17], "only vs17's VS_MAP value is replaced");
    let ring = dp.vs[&vs_key(17)].ring_id;
    assert_eq!(
        rings_differing(&before, dp),
        BTreeSet::from([ring]),
        "only the ring vs17 now reads was written"
    );
    // Its first new table goes into a spare never written: all of it, once.
    assert!(
        dp.slot_writes <= 1009,
        "one table at most: {}",
        dp.slot_writes
    );
    let vs17: BTreeSet<u32> = r.reals.of_vs("vs17").map(|(_, id)| id).collect();
    let reals_written: BTreeSet<u32> = dp
        .reals
        .iter()
        .filter(|(id, info)| before.reals.get(id) != Some(info))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        reals_written.is_subset(&vs17),
        "REALS written beyond vs17: {reals_written:?}"
    );
    assert_eq!(
        dp.value_writes,
        1 + reals_written.len(),
        "one VS_MAP value, vs17's reals"
    );
}

#[test]
fn a_real_added_and_one_removed_touch_only_their_virtual_server() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 64, 64);
    r.apply(&many(10, 5, |_, _| 1)).unwrap();
    let mut text = String::from("interfaces: [eth0]\nvirtual_servers:\n");
    let before = r.dataplane().vs.clone();
    for v in 0..10 {
        text.push_str(&format!(
            "  - name: vs{v}\n    address: 10.200.0.{}\n    port: 80\n    protocol: tcp\n    table_size: 1009\n    health_check: {{ type: none }}\n    real_servers:\n",
            v + 1
        ));
        // vs3 loses its first real and gains 10.3.0.99.
        let reals: Vec<String> = (0..5)
            .filter(|&r| v != 3 || r != 0)
            .map(|r| format!("10.{v}.0.{}", r + 1))
            .chain((v == 3).then(|| "10.3.0.99".to_string()))
            .collect();
        for a in reals {
            text.push_str(&format!("      - {{ address: {a} }}\n"));
        }
    }
    let c = config::parse(Path::new("many.yaml"), &text, &AnyInterface).unwrap();
    r.apply(&c).unwrap();
    let dp = r.dataplane();
    let changed: Vec<usize> = (0..10)
        .filter(|&v| dp.vs.get(&vs_key(v)) != before.get(&vs_key(v)))
        .collect();
    assert_eq!(changed, [3]);
    assert!(r
        .real_id(&RealKey::real("vs3", "10.3.0.1".parse().unwrap(), 80))
        .is_none());
    assert!(r
        .real_id(&RealKey::real("vs3", "10.3.0.99".parse().unwrap(), 80))
        .is_some());
    assert_eq!(
        r.reals.of_vs("vs2").count(),
        5,
        "other virtual servers keep their reals"
    );
}

#[test]
fn one_ring_per_virtual_server_and_one_spare_are_enough() {
    let mut r = Reconciler::new(MemoryDataplane::default(), 64, 4);
    r.apply(&many(3, 4, |_, _| 1)).unwrap();
    // Every table changes, in turn, many times: each virtual server always reads a
    // ring of its own, never one another reads.
    for round in 0..6u32 {
        for v in 0..3 {
            let w = |vv: usize, rr: usize| if vv <= v && rr == 0 { 2 + round } else { 1 };
            r.apply(&many(3, 4, w)).unwrap();
            let rings: BTreeSet<u32> = (0..3)
                .map(|v| r.dataplane().vs[&vs_key(v)].ring_id)
                .collect();
            assert_eq!(
                rings.len(),
                3,
                "round {round}, vs{v}: rings shared: {rings:?}"
            );
            for v in 0..3 {
                let name = format!("vs{v}");
                let live = r.live_table(&name).unwrap().to_vec();
                assert_eq!(
                    r.dataplane().table(&vs_key(v)).unwrap(),
                    live,
                    "{name} reads its table"
                );
            }
        }
    }
    // A fourth virtual server would leave no spare to write a table into.
    let e = r.apply(&many(4, 4, |_, _| 1)).unwrap_err();
    assert!(matches!(e, ReconcileError::Rings { max: 3 }), "{e}");
    assert!(e.to_string().contains("restart"), "{e}");
}

#[test]
fn a_ring_another_virtual_server_left_is_taken_only_after_older_spares() {
    // Two virtual servers, two spares (rings 2 and 3, never read).
    let mut r = Reconciler::new(MemoryDataplane::default(), 64, 4);
    r.apply(&many(2, 3, |_, _| 1)).unwrap();
    let ring = |r: &Reconciler<MemoryDataplane>, v| r.dataplane().vs[&vs_key(v)].ring_id;
    let (a0, b0) = (ring(&r, 0), ring(&r, 1));
    let first_heavier = |v0: u32, v1: u32| {
        move |v: usize, r: usize| match (v, r) {
            (0, 0) => v0,
            (1, 0) => v1,
            _ => 1,
        }
    };
    // vs0 changes: it leaves a0.
    r.apply(&many(2, 3, first_heavier(2, 1))).unwrap();
    let a1 = ring(&r, 0);
    assert!(![a0, b0].contains(&a1));
    // vs1 changes: a never-read spare is older than a0, so a0 rests.
    r.apply(&many(2, 3, first_heavier(2, 2))).unwrap();
    let b1 = ring(&r, 1);
    assert!(
        ![a0, a1, b0].contains(&b1),
        "vs1 took {b1}: a0 {a0} a1 {a1} b0 {b0}"
    );
    // vs0 changes again: it takes back a0, its own, writing only changed slots.
    let writes = r.dataplane().slot_writes;
    r.apply(&many(2, 3, first_heavier(1, 2))).unwrap();
    assert_eq!(ring(&r, 0), a0);
    assert_eq!(
        r.dataplane().slot_writes,
        writes,
        "a0 already held exactly this table"
    );
}
