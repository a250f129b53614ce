//! Sibling graphs and their cycles. Imports are judged between siblings only: the
//! top-level modules of a crate, and the modules inside each module directory. An import
//! from deep inside `forward/nat.rs` of `crate::balance::Verdict` is an edge
//! `forward -> balance` among the crate's top-level modules; one from `forward/nat.rs`
//! of `crate::forward::internal` (its own parent) is no edge at all, as a child may
//! always use its parent and a parent its children.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::PathBuf,
};

use super::{tree::Import, ModPath};

/// Where an edge was first seen: the file (relative to the crate's `src/`) and line.
pub type Site = (PathBuf, usize);

/// Edges among the children of one module: `(from, to)` -> the first site that draws
/// the edge (first by file name, then line, so the report is stable).
pub type Edges = BTreeMap<(String, String), Site>;

/// The sibling graphs of a crate, keyed by the parent module (`[]` for the top level).
pub type Scopes = BTreeMap<ModPath, Edges>;

/// Finds which siblings an import connects: the parent they share and the two children
/// of it that contain the importing and the imported module.
///
/// Returns: `(parent, from_child, to_child)`, or `None` when one module contains the
/// other (a module and its own descendants never form a sibling edge).
pub fn sibling_edge(from: &[String], to: &[String]) -> Option<(ModPath, String, String)> {
    let shared = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let (a, b) = (from.get(shared)?, to.get(shared)?);
    Some((from[..shared].to_vec(), a.clone(), b.clone()))
}

/// Groups imports into sibling graphs.
///
/// Returns: for each parent module with at least one sibling edge, its edges.
pub fn scopes(imports: &[Import]) -> Scopes {
    let mut out = Scopes::new();
    for i in imports {
        let Some((parent, a, b)) = sibling_edge(&i.from, &i.to) else {
            continue;
        };
        let site = (i.file.clone(), i.line);
        out.entry(parent)
            .or_default()
            .entry((a, b))
            .and_modify(|s| *s = s.clone().min(site.clone()))
            .or_insert(site);
    }
    out
}

/// Finds cycles in one sibling graph: for each node (in name order) that lies on a
/// cycle and is not on one already reported, the shortest cycle through it. Every node
/// caught in a cycle thus shows up in at least one, and a cycle is reported once,
/// without listing the exponentially many elementary cycles a tangle can hold.
///
/// Returns: cycles as node lists `[a, b, c]`, meaning `a -> b -> c -> a`.
pub fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    let mut covered = BTreeSet::new();
    let mut out = Vec::new();
    for &node in next.keys() {
        if covered.contains(node) {
            continue;
        }
        if let Some(cycle) = shortest_cycle(&next, node) {
            covered.extend(cycle.iter().copied());
            out.push(cycle.into_iter().map(String::from).collect());
        }
    }
    out
}

/// Breadth-first search from `start` back to itself (successors visited in name order,
/// so the answer is stable).
///
/// Returns: the nodes of a shortest cycle through `start`, `start` first, or `None`.
fn shortest_cycle<'a>(
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    start: &'a str,
) -> Option<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in next.get(n).into_iter().flatten() {
            if m == start {
                let mut cycle = vec![n];
                while let Some(&p) = parent.get(cycle[cycle.len() - 1]) {
                    cycle.push(p);
                }
                cycle.reverse();
                return Some(cycle);
            }
            if m != start && !parent.contains_key(m) {
                parent.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(pairs: &[(&str, &str)]) -> Edges {
        pairs
            .iter()
            .enumerate()
            .map(|(i, (a, b))| {
                (
                    (a.to_string(), b.to_string()),
                    (PathBuf::from("f.rs"), i + 1),
                )
            })
            .collect()
    }

    fn names(cycles: Vec<Vec<String>>) -> Vec<String> {
        cycles.into_iter().map(|c| c.join(" -> ")).collect()
    }

    #[test]
    fn no_cycle_in_a_dag() {
        let g = graph(&[("a", "b"), ("b", "c"), ("a", "c"), ("d", "a")]);
        assert!(cycles(&g).is_empty());
        assert!(cycles(&Edges::new()).is_empty());
    }

    #[test]
    fn two_node_cycle() {
        assert_eq!(
            names(cycles(&graph(&[("a", "b"), ("b", "a"), ("b", "c")]))),
            ["a -> b"]
        );
    }

    #[test]
    fn longer_cycle_is_found_through_its_first_node() {
        let g = graph(&[("b", "c"), ("c", "d"), ("d", "b"), ("a", "b")]);
        assert_eq!(names(cycles(&g)), ["b -> c -> d"]);
    }

    #[test]
    fn shortest_cycle_wins_and_every_tangled_node_shows() {
        // The shape of lb-ebpf's Verdict problem: a hub everyone imports back.
        let g = graph(&[
            ("hub", "fwd"),
            ("hub", "parse"),
            ("fwd", "hub"),
            ("fwd", "fib"),
            ("fib", "hub"),
            ("parse", "hub"),
            ("parse", "csum"),
        ]);
        assert_eq!(names(cycles(&g)), ["fib -> hub -> fwd", "parse -> hub"]);
    }

    #[test]
    fn self_loop_is_a_cycle() {
        assert_eq!(names(cycles(&graph(&[("a", "a")]))), ["a"]);
    }

    #[test]
    fn siblings_are_found_at_the_shared_parent() {
        let v = |s: &str| {
            s.split("::")
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sibling_edge(&v("forward::nat"), &v("balance")),
            Some((vec![], "forward".into(), "balance".into()))
        );
        assert_eq!(
            sibling_edge(&v("config::validate"), &v("config::raw")),
            Some((v("config"), "validate".into(), "raw".into()))
        );
        assert_eq!(sibling_edge(&v("forward::nat"), &v("forward")), None);
        assert_eq!(sibling_edge(&v("forward"), &v("forward::nat")), None);
        assert_eq!(sibling_edge(&v("a"), &v("a")), None);
        assert_eq!(sibling_edge(&v(""), &v("a")), None);
    }

    #[test]
    fn scopes_keep_the_first_site() {
        let imp = |from: &[&str], to: &[&str], file: &str, line| Import {
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            file: PathBuf::from(file),
            line,
        };
        let s = scopes(&[
            imp(&["b"], &["a"], "b.rs", 9),
            imp(&["b", "x"], &["a"], "b/x.rs", 2),
            imp(&["b"], &["a"], "b.rs", 3),
            imp(&["b", "x"], &["a"], "b/x.rs", 7),
            imp(&["c", "p"], &["c", "q"], "c/p.rs", 1),
        ]);
        // Paths order by component: `b/x.rs` (component `b`) sorts before `b.rs`.
        assert_eq!(
            s[&vec![]][&("b".into(), "a".into())],
            (PathBuf::from("b/x.rs"), 2)
        );
        assert_eq!(s[&vec!["c".to_string()]].len(), 1);
    }
}
