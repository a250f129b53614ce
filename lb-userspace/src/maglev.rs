//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! Each backend walks its own permutation of the table (`offset + j * skip mod M`, M
//! prime) and claims the next free slot when its turn comes. Weights decide how often a
//! backend's turn comes: every round each backend earns its weight in credit and claims
//! a slot per `w_max` of credit, so the shares are exactly proportional to the weights,
//! small weights included (1:2 gives 1:2).
//!
//! The contract active-active scale-out behind ECMP relies on (a connection that ECMP
//! moves to another node keeps its real): read as identities slot by slot, the table
//! depends only on the size and the set of (identity, weight) pairs of the backends
//! with weight above 0. Not on their order (they are sorted by identity before anything
//! else), nor on their ids: ids are only what a slot holds, and they differ between
//! nodes (the reconciler hands them out in the order reals first appear, across
//! reloads). Identities must be distinct, which config validation ensures (a real listed
//! twice in a virtual server is refused, and the sorry server's identity has its own
//! prefix). Nothing else goes in: the hash has fixed seeds and the table is built anew
//! each time, never from the one before, so history (reloads, restarts) cannot show.
//! The known-answer test pins the hash and the algorithm: changing either changes every
//! deployed table, and nodes running different versions disagree until all are upgraded.

use lb_common::NO_REAL;

/// One backend as Maglev sees it.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Value written into the slots this backend owns (the real id).
    pub id: u32,
    /// Stable identity: the permutation derives from it (the real's address and port).
    pub identity: Vec<u8>,
    /// Relative share; 0 owns no slot.
    pub weight: u32,
}

/// 64-bit FNV-1a over `seed` then `bytes`, finished with the splitmix64 mixer so that
/// low bits are well distributed (FNV alone is weak there for short keys).
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a Maglev table of `size` slots (`size` prime) from `backends` in any order,
/// their identities distinct (see the module doc).
/// Returns: `size` real ids; every slot is `NO_REAL` when no backend has weight.
pub fn build(backends: &[Backend], size: u32) -> Vec<u32> {
    let m = size as usize;
    let mut table = vec![NO_REAL; m];
    let mut live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() || m == 0 {
        return table;
    }
    // The id only breaks ties between equal identities, which the caller never passes:
    // the table would then depend on ids, which differ between nodes.
    live.sort_by(|a, b| a.identity.cmp(&b.identity).then(a.id.cmp(&b.id)));
    debug_assert!(
        live.windows(2).all(|w| w[0].identity != w[1].identity),
        "Maglev backends with the same identity"
    );
    let m64 = m as u64;
    // Each backend's walk `offset + j * skip mod m`, kept as its next position and
    // advanced by one addition: the same slots in the same order as computing each
    // position anew, without two 64-bit divisions per step (most of the time).
    let mut walks: Vec<Walk> = live
        .iter()
        .map(|b| {
            let offset = hash64(0x6d61_676c_6576_0001, &b.identity) % m64;
            let skip = if m > 1 {
                hash64(0x6d61_676c_6576_0002, &b.identity) % (m64 - 1) + 1
            } else {
                1
            };
            Walk {
                at: offset as usize,
                skip: skip as usize,
                credit: 0,
            }
        })
        .collect();
    // Which slots are taken, one bit each: the walks test this (8 KiB at 65,537
    // slots, in the first-level cache) rather than the table (256 KiB).
    let mut taken = vec![0u64; m.div_ceil(64)];
    let w_max = live.iter().map(|b| b.weight).max().unwrap_or(1);
    if live.iter().all(|b| b.weight == w_max) {
        // Equal weights (the usual case): every backend's turn comes every round, so
        // the credit need not be kept. The same claims in the same order, about a
        // fifth faster (65,537 slots, 100 reals: 1.6-1.9 ms against 1.9-2.7): this
        // loop is most of a cold start of many virtual servers.
        let ids: Vec<u32> = live.iter().map(|b| b.id).collect();
        let mut at: Vec<usize> = walks.iter().map(|w| w.at).collect();
        let skips: Vec<usize> = walks.iter().map(|w| w.skip).collect();
        let mut filled = 0usize;
        loop {
            for ((a, &skip), &id) in at.iter_mut().zip(&skips).zip(&ids) {
                let mut p = *a;
                while taken[p / 64] & (1 << (p % 64)) != 0 {
                    p += skip;
                    if p >= m {
                        p -= m;
                    }
                }
                taken[p / 64] |= 1 << (p % 64);
                table[p] = id;
                p += skip;
                *a = if p >= m { p - m } else { p };
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
    let w_max = u64::from(w_max);
    let mut filled = 0usize;
    loop {
        for (w, b) in walks.iter_mut().zip(&live) {
            w.credit += u64::from(b.weight);
            if w.credit < w_max {
                continue;
            }
            w.credit -= w_max;
            while taken[w.at / 64] & (1 << (w.at % 64)) != 0 {
                w.step(m);
            }
            taken[w.at / 64] |= 1 << (w.at % 64);
            table[w.at] = b.id;
            w.step(m);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// Where one backend is in its permutation of the table, and its weight's credit.
struct Walk {
    /// The next slot it tries.
    at: usize,
    /// Its step, `1..m`.
    skip: usize,
    credit: u64,
}

impl Walk {
    /// Moves to the next slot of the permutation (`at + skip mod m`, both below `m`).
    fn step(&mut self, m: usize) {
        self.at += self.skip;
        if self.at >= m {
            self.at -= m;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                id: i as u32,
                identity: format!("10.0.{}.{}:80", i / 250, i % 250 + 1).into_bytes(),
                weight: w,
            })
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    fn moved(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        for n in [1usize, 2, 3, 7, 10, 100] {
            let t = build(&backends(&vec![1; n]), 65537);
            let c = counts(&t);
            assert_eq!(c.len(), n);
            let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
        }
    }

    #[test]
    fn weights_1_2_3_get_their_share_within_one_point() {
        let t = build(&backends(&[1, 2, 3]), 65537);
        let c = counts(&t);
        for (id, want) in [(0u32, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)] {
            let got = c[&id] as f64 / t.len() as f64;
            assert!(
                (got - want).abs() < 0.01,
                "real {id}: share {got:.4}, want {want:.4}"
            );
        }
    }

    #[test]
    fn small_weights_are_honoured() {
        let t = build(&backends(&[1, 2]), 65537);
        let c = counts(&t);
        let ratio = c[&1] as f64 / c[&0] as f64;
        assert!((ratio - 2.0).abs() < 0.01, "1:2 gave ratio {ratio:.4}");
        // Weights 1:1:2 (the end-to-end test's): the third gets half.
        let t = build(&backends(&[1, 1, 2]), 65537);
        let share = counts(&t)[&2] as f64 / t.len() as f64;
        assert!((share - 0.5).abs() < 0.01, "share {share:.4}");
    }

    #[test]
    fn removing_one_of_ten_moves_at_most_fifteen_percent() {
        let all = backends(&[1; 10]);
        let before = build(&all, 65537);
        for gone in 0..10 {
            let rest: Vec<Backend> = all.iter().filter(|b| b.id != gone).cloned().collect();
            let after = build(&rest, 65537);
            let m = moved(&before, &after);
            assert!(m <= 0.15, "removing {gone} moved {:.2}%", m * 100.0);
            assert!(
                m >= 0.099,
                "at least the removed real's slots move: {:.2}%",
                m * 100.0
            );
        }
    }

    #[test]
    fn removing_one_of_a_hundred_moves_at_most_three_percent() {
        let all = backends(&[1; 100]);
        let before = build(&all, 65537);
        for gone in [0u32, 37, 99] {
            let rest: Vec<Backend> = all.iter().filter(|b| b.id != gone).cloned().collect();
            let m = moved(&before, &build(&rest, 65537));
            assert!(m <= 0.03, "removing {gone} moved {:.2}%", m * 100.0);
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut b = backends(&[1, 2, 3, 1, 5]);
        let t1 = build(&b, 65537);
        b.reverse();
        assert_eq!(t1, build(&b, 65537));
    }

    #[test]
    fn ids_do_not_matter_only_identities_do() {
        // Two nodes that gave the same reals other ids (another file order, another
        // history) hold the same real in every slot.
        let a = backends(&[1, 2, 3, 1, 5, 0, 2]);
        let b: Vec<Backend> = a
            .iter()
            .map(|x| Backend {
                id: 100 - x.id,
                ..x.clone()
            })
            .rev()
            .collect();
        let identity = |bs: &[Backend], t: Vec<u32>| -> Vec<Vec<u8>> {
            t.iter()
                .map(|&id| bs.iter().find(|x| x.id == id).unwrap().identity.clone())
                .collect()
        };
        let (ta, tb) = (build(&a, 1009), build(&b, 1009));
        assert_ne!(ta, tb, "the ids differ, so the raw tables do");
        assert_eq!(identity(&a, ta), identity(&b, tb));
    }

    #[test]
    fn same_input_gives_same_table_known_answer() {
        // Pins the hash and the algorithm: a change here changes every deployed table and
        // breaks identical tables across an active-active fleet during an upgrade.
        let t = build(&backends(&[1, 1, 1]), 13);
        assert_eq!(t, [1, 0, 2, 0, 0, 2, 2, 2, 1, 0, 1, 1, 0]);
    }

    /// The table as the algorithm states it, each position computed anew
    /// (`offset + j * skip mod m`): what `build` walks incrementally.
    fn reference(backends: &[Backend], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let mut table = vec![NO_REAL; size as usize];
        let mut live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
        live.sort_by(|a, b| a.identity.cmp(&b.identity));
        let perm: Vec<(u64, u64)> = live
            .iter()
            .map(|b| {
                let offset = hash64(0x6d61_676c_6576_0001, &b.identity) % m;
                let skip = hash64(0x6d61_676c_6576_0002, &b.identity) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let w_max = u64::from(live.iter().map(|b| b.weight).max().unwrap());
        let (mut next, mut credit) = (vec![0u64; live.len()], vec![0u64; live.len()]);
        let mut filled = 0;
        loop {
            for (i, b) in live.iter().enumerate() {
                credit[i] += u64::from(b.weight);
                if credit[i] < w_max {
                    continue;
                }
                credit[i] -= w_max;
                let slot = |j: u64| ((perm[i].0 + j * perm[i].1) % m) as usize;
                while table[slot(next[i])] != NO_REAL {
                    next[i] += 1;
                }
                table[slot(next[i])] = b.id;
                next[i] += 1;
                filled += 1;
                if filled == table.len() {
                    return table;
                }
            }
        }
    }

    #[test]
    fn incremental_walk_gives_the_tables_of_the_stated_algorithm() {
        for (weights, size) in [
            (vec![1; 100], 65537),
            (vec![1, 2, 3, 1, 5, 0, 2], 1009),
            ((1..=40).collect::<Vec<u32>>(), 4093),
            (vec![7], 7),
        ] {
            let b = backends(&weights);
            assert_eq!(
                build(&b, size),
                reference(&b, size),
                "{} reals, {size} slots",
                b.len()
            );
        }
    }

    #[test]
    fn zero_weight_owns_nothing_and_all_zero_is_empty() {
        let t = build(&backends(&[1, 0, 1]), 65537);
        assert!(!t.contains(&1));
        assert!(build(&backends(&[0, 0]), 101)
            .iter()
            .all(|&id| id == NO_REAL));
        assert!(build(&[], 101).iter().all(|&id| id == NO_REAL));
    }
}
