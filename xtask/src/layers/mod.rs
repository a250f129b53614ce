//! `cargo xtask layers`: imports between sibling modules must run one way. A cycle
//! (`balance` imports `forward`, `forward` imports `balance`) means a type lives in the
//! wrong room: the house style wants shared types below every module that uses them.
//!
//! The source is read with `syn` (see `source`), so it costs milliseconds and needs no
//! toolchain beyond the one building xtask.

mod graph;
mod source;
mod targets;
mod tree;

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use self::graph::Edges;

/// A module path inside the crate: `[]` is the crate root, `["config", "raw"]` is
/// `crate::config::raw`.
pub type ModPath = Vec<String>;

/// Checks every library and binary target of the workspace at `root`, each as its own
/// module tree, printing one line per tree and every cycle found. Every member is
/// checked, not a list of them: the rule is the workspace's, and a new crate or binary is
/// covered the day it appears.
///
/// Returns: an error when any sibling graph has a cycle or a tree cannot be read.
pub fn check(root: &Path) -> Result<()> {
    let read = |rel: &Path| std::fs::read_to_string(root.join(rel)).ok();
    let mut found = 0;
    for target in targets::list(root)? {
        let files = tree::load(&target.root, &read)
            .with_context(|| format!("reading the modules of {}", target.root.display()))?;
        let scopes = graph::scopes(&tree::imports(&files));
        let what = format!("{} {}", target.package, target.what);
        let mut cycles = 0;
        for (parent, edges) in &scopes {
            for cycle in graph::cycles(edges) {
                eprintln!("{}", describe(&what, parent, &cycle, edges));
                cycles += 1;
            }
        }
        let edge_count: usize = scopes.values().map(|e| e.len()).sum();
        eprintln!(
            "xtask: layers: {what} ({}): {} files, {edge_count} imports between sibling modules, {}",
            target.root.display(),
            files.len(),
            match cycles {
                0 => "no cycle".to_string(),
                n => format!("{n} cycle(s)"),
            }
        );
        found += cycles;
    }
    if found > 0 {
        bail!(
            "{found} import cycle(s) between sibling modules: a type used by both sides \
             lives in the wrong module; move it below both (STYLE.md, \"Where code sits\")"
        );
    }
    Ok(())
}

/// Writes one cycle among the children of `parent` in the tree `what` for a person to
/// fix: the loop, then each edge with the file and line that draws it.
///
/// Returns: the text, several lines, no trailing newline.
fn describe(what: &str, parent: &[String], cycle: &[String], edges: &Edges) -> String {
    let place = if parent.is_empty() {
        format!("the top-level modules of {what}")
    } else {
        format!("the modules in `{}` of {what}", parent.join("::"))
    };
    let mut loop_ = cycle.to_vec();
    loop_.push(cycle[0].clone());
    let mut text = format!("layers: import cycle among {place}: {}", loop_.join(" -> "));
    for pair in loop_.windows(2) {
        let (file, line) = &edges[&(pair[0].clone(), pair[1].clone())];
        text.push_str(&format!(
            "\n    {} -> {}  at {}:{line}",
            pair[0],
            pair[1],
            file.display()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use super::*;

    /// The whole pipeline on a crate in memory.
    fn report(files: &[(&str, &str)]) -> Vec<String> {
        let fs: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        let loaded = tree::load(Path::new(files[0].0), &|p| fs.get(p).cloned()).unwrap();
        let scopes = graph::scopes(&tree::imports(&loaded));
        scopes
            .iter()
            .flat_map(|(parent, edges)| {
                graph::cycles(edges)
                    .into_iter()
                    .map(|c| describe("k", parent, &c, edges))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_verdict_in_the_wrong_room_is_reported_with_sites() {
        let got = report(&[
            ("k/src/main.rs", "mod balance;\nmod forward;"),
            (
                "k/src/balance.rs",
                "use crate::forward;\npub struct Verdict;",
            ),
            ("k/src/forward/mod.rs", "mod dr;"),
            ("k/src/forward/dr.rs", "\nuse crate::balance::Verdict;"),
        ]);
        assert_eq!(
            got,
            ["layers: import cycle among the top-level modules of k: balance -> forward -> balance\n    \
              balance -> forward  at k/src/balance.rs:1\n    \
              forward -> balance  at k/src/forward/dr.rs:2"]
        );
    }

    #[test]
    fn cycles_inside_a_directory_and_test_code_ignored() {
        let got = report(&[
            ("k/src/lib.rs", "pub mod config;"),
            (
                "k/src/config/mod.rs",
                "mod raw;\nmod validate;\n#[cfg(test)]\nmod tests;",
            ),
            ("k/src/config/raw.rs", "use super::validate::check;"),
            (
                "k/src/config/validate.rs",
                "use super::{raw::Raw, Model};\n",
            ),
            ("k/src/config/tests.rs", "use super::raw::X;"),
        ]);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(
            "layers: import cycle among the modules in `config` of k: raw -> validate -> raw"
        ));
    }

    #[test]
    fn one_way_imports_pass() {
        let got = report(&[
            ("k/src/main.rs", "mod verdict;\nmod balance;\nmod forward;"),
            ("k/src/verdict.rs", ""),
            (
                "k/src/balance.rs",
                "use crate::{forward, verdict::Verdict};",
            ),
            (
                "k/src/forward.rs",
                "use crate::verdict::Verdict;\n#[cfg(test)]\nmod tests { use crate::balance::X; }",
            ),
        ]);
        assert!(got.is_empty(), "{got:?}");
    }
}
