//! Health transitions applied together (`set_health_many`): each virtual server they
//! touch gets one table, and the data path ends as applying them one by one would leave
//! it (the same tables, the same `REALS` flags and generations).

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use lb_common::{VsInfo, VsKey};

use super::*;
use crate::{
    config::{self, AnyInterface, Config},
    dataplane::memory::MemoryDataplane,
};

const VSS: usize = 4;
const REALS: usize = 6;

/// `vss` virtual servers `vs0`, `vs1`, ... of `REALS` probed reals each (10.<v>.0.<r>);
/// `vs1` has a sorry server, and the last real of `vs2` weight 0.
fn probed(vss: usize) -> Config {
    let mut t = String::from("interfaces: [eth0]\nvirtual_servers:\n");
    for v in 0..vss {
        t.push_str(&format!(
            "  - name: vs{v}\n    address: 10.200.0.{}\n    port: 80\n    protocol: tcp\n    table_size: 1009\n",
            v + 1
        ));
        if v == 1 {
            t.push_str("    sorry_server: { address: 10.9.9.9 }\n");
        }
        t.push_str("    real_servers:\n");
        for r in 0..REALS {
            let w = if (v, r) == (2, REALS - 1) { 0 } else { 1 };
            t.push_str(&format!(
                "      - {{ address: 10.{v}.0.{}, weight: {w} }}\n",
                r + 1
            ));
        }
    }
    config::parse(Path::new("probed.yaml"), &t, &AnyInterface).unwrap()
}

fn real(v: usize, r: usize) -> RealKey {
    RealKey::real(
        &format!("vs{v}"),
        format!("10.{v}.0.{}", r + 1).parse().unwrap(),
        80,
    )
}

fn vs_key(v: usize) -> VsKey {
    VsKey::new(format!("10.200.0.{}", v + 1).parse().unwrap(), 80, 6)
}

/// A reconciler that applied `vss` virtual servers of [`probed`], its writes forgotten.
fn started(vss: usize) -> Reconciler<MemoryDataplane> {
    let mut r = Reconciler::new(MemoryDataplane::default(), 128, 256);
    r.apply(&probed(vss)).unwrap();
    let dp = r.dataplane_mut();
    dp.vs_writes.clear();
    dp.ring_writes = 0;
    r
}

/// Asserts that `a` and `b` hold the same data path: each of the first `vss` virtual
/// servers reads the same table and has the same parameters, every real the same
/// value.
fn assert_same(
    a: &Reconciler<MemoryDataplane>,
    b: &Reconciler<MemoryDataplane>,
    vss: usize,
    when: &str,
) {
    let (a, b) = (a.dataplane(), b.dataplane());
    assert_eq!(a.reals, b.reals, "{when}: REALS");
    for v in 0..vss {
        assert_eq!(
            a.table(&vs_key(v)),
            b.table(&vs_key(v)),
            "{when}: vs{v}'s table"
        );
        let params = |dp: &MemoryDataplane| VsInfo {
            ring_id: 0,
            ..dp.vs[&vs_key(v)]
        };
        assert_eq!(params(a), params(b), "{when}: vs{v}'s VS_MAP value");
    }
}

#[test]
fn a_batch_of_transitions_writes_one_table_per_virtual_server() {
    // Every real comes up, the virtual servers' reals interleaved (as probes report).
    let ups: Vec<(RealKey, bool)> = (0..REALS)
        .flat_map(|r| (0..VSS).map(move |v| (real(v, r), true)))
        .collect();
    let mut batch = started(VSS);
    assert_eq!(batched(&mut batch, &ups), VSS * REALS);
    let dp = batch.dataplane();
    assert_eq!(
        dp.vs_writes.len(),
        VSS,
        "one VS_MAP value per virtual server"
    );
    assert_eq!(dp.ring_writes, VSS, "one ring write per virtual server");

    let mut one = started(VSS);
    for (key, healthy) in &ups {
        assert!(one.set_health(key, *healthy).unwrap());
    }
    // The weight-0 real changes nothing in vs2's table.
    let tables = VSS * REALS - 1;
    assert_eq!(one.dataplane().vs_writes.len(), tables, "one by one");
    assert_same(&batch, &one, VSS, "every real up");

    // The same again changes nothing, and writes nothing.
    assert_eq!(batched(&mut batch, &ups), 0);
    assert_eq!(batch.dataplane().vs_writes.len(), VSS);
}

#[test]
fn a_batch_ends_as_applying_its_transitions_one_by_one() {
    let all = |healthy: bool| -> Vec<(RealKey, bool)> {
        (0..VSS)
            .flat_map(|v| (0..REALS).map(move |r| (real(v, r), healthy)))
            .collect()
    };
    let rounds: Vec<Vec<(RealKey, bool)>> = vec![
        all(true),
        // vs1 loses every real (its sorry server takes the table), vs0 one.
        (0..REALS)
            .map(|r| (real(1, r), false))
            .chain([(real(0, 2), false)])
            .collect(),
        // A real down and up again in one batch: its generation is still retired.
        vec![(real(0, 3), false), (real(3, 1), false), (real(0, 3), true)],
        // vs1's first real back (the sorry server leaves), the weight-0 real of vs2
        // down, a real already up reported up (no change).
        vec![
            (real(1, 0), true),
            (real(2, REALS - 1), false),
            (real(3, 0), true),
        ],
        // A rack fails: every real.
        all(false),
        // And comes back, with one real flapping on the way.
        all(true)
            .into_iter()
            .chain([(real(2, 1), false), (real(2, 1), true), (real(2, 1), false)])
            .collect(),
    ];
    let (mut batch, mut one) = (started(VSS), started(VSS));
    for (i, changes) in rounds.iter().enumerate() {
        let generations = batch.dataplane().reals.clone();
        let applied = batched(&mut batch, changes);
        let mut applied_one = 0;
        for (key, healthy) in changes {
            applied_one += usize::from(one.set_health(key, *healthy).unwrap());
        }
        assert_eq!(applied, applied_one, "round {i}: changes that took effect");
        assert_same(&batch, &one, VSS, &format!("round {i}"));
        if i == 2 {
            let id = batch.real_id(&real(0, 3)).unwrap();
            let now = &batch.dataplane().reals[&id];
            assert_ne!(
                now.generation, generations[&id].generation,
                "down and up in one batch: flows pinned to it are re-steered"
            );
            assert_eq!(now.flags, generations[&id].flags, "and it is back");
        }
    }
}

#[test]
fn a_virtual_server_that_lost_a_real_is_written_first() {
    let mut r = started(VSS);
    batched(&mut r, &[(real(0, 0), true), (real(1, 0), true)]);
    r.dataplane_mut().vs_writes.clear();
    // vs0 gains reals first in the batch, vs1 loses its only one after.
    let changes = [
        (real(0, 1), true),
        (real(0, 2), true),
        (real(1, 0), false),
        (real(0, 3), true),
    ];
    batched(&mut r, &changes);
    assert_eq!(r.dataplane().vs_writes, [vs_key(1), vs_key(0)]);
    let in_table: Vec<bool> = r
        .real_views("vs1")
        .iter()
        .filter(|v| v.in_table)
        .map(|v| v.key.sorry)
        .collect();
    assert_eq!(in_table, [true], "vs1: the sorry server alone");
}

/// More virtual servers than tables are held built at a time (two in the channel, two
/// per building thread, one at hand in each): each still gets one table, the one
/// applying the transitions one by one gives it; and while the tables are built, the
/// runtime's other tasks (the daemon's probes) run.
#[test]
fn many_virtual_servers_get_one_table_each_while_other_tasks_run() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let vss = 3 * cores + 8;
    let ups: Vec<(RealKey, bool)> = (0..REALS)
        .flat_map(|r| (0..vss).map(move |v| (real(v, r), true)))
        .collect();
    let mut batch = started(vss);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ran = rt.block_on(async {
        let (ran, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let other = tokio::spawn({
            let (ran, stop) = (ran.clone(), stop.clone());
            async move {
                while !stop.load(Relaxed) {
                    ran.fetch_add(1, Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        assert_eq!(batch.set_health_many(&ups).await.unwrap(), vss * REALS);
        stop.store(true, Relaxed);
        other.await.unwrap();
        ran.load(Relaxed)
    });
    assert!(ran > 0, "no other task ran while {vss} tables were built");
    assert_eq!(
        batch.dataplane().ring_writes,
        vss,
        "one ring write per virtual server"
    );
    // A rack fails: the first real of every virtual server.
    let downs: Vec<(RealKey, bool)> = (0..vss).map(|v| (real(v, 0), false)).collect();
    assert_eq!(batched(&mut batch, &downs), vss);
    let mut one = started(vss);
    for (key, healthy) in ups.iter().chain(&downs) {
        one.set_health(key, *healthy).unwrap();
    }
    assert_same(
        &batch,
        &one,
        vss,
        "every real up, then the first of each down",
    );
}

/// The builders stop when the tables' taker does (an install failed): the call
/// returns after the first table, the others' builds abandoned.
#[test]
fn table_builds_stop_with_their_taker() {
    let backends: Vec<crate::maglev::Backend> = (0..10)
        .map(|id| crate::maglev::Backend {
            id,
            identity: vec![id as u8],
            weight: 1,
        })
        .collect();
    let jobs: Vec<super::order::TableJob> =
        (0..64).map(|_| Some((backends.clone(), 65537))).collect();
    let mut taken = Vec::new();
    super::order::build_each(&jobs, |i, table| {
        taken.push((i, table.map(|t| t.len())));
        false
    });
    assert_eq!(taken, [(0, Some(65537))]);
}

/// Returns: what `set_health_many` of `changes` returns, run on a runtime of one
/// thread, as the daemon's.
fn batched(r: &mut Reconciler<MemoryDataplane>, changes: &[(RealKey, bool)]) -> usize {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(r.set_health_many(changes))
        .unwrap()
}
