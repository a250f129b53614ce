//! `cargo xtask layers`: imports between sibling modules must run one way. A cycle
//! (`balance` imports `forward`, `forward` imports `balance`) means a type lives in the
//! wrong room: the house style wants shared types below every module that uses them.
//!
//! Pure Rust over the source text (see `lex`), so it costs milliseconds and needs no
//! toolchain beyond the one building xtask.

mod graph;
mod lex;
mod scan;
mod tree;

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use self::{graph::Edges, tree::ModPath};

/// The crates whose module graphs must be free of cycles.
const CRATES: &[&str] = &["lb-ebpf", "lb-userspace"];

/// Checks every crate of `CRATES` under the workspace `root`, printing one line per
/// crate and every cycle found.
///
/// Returns: an error when any sibling graph has a cycle or a crate cannot be read.
pub fn check(root: &Path) -> Result<()> {
    let mut found = 0;
    for name in CRATES {
        let src = root.join(name).join("src");
        let files = tree::load(&|rel| std::fs::read_to_string(src.join(rel)).ok())
            .with_context(|| format!("reading the modules of {}", src.display()))?;
        let scopes = graph::scopes(&tree::imports(&files));
        let mut cycles = 0;
        for (parent, edges) in &scopes {
            for cycle in graph::cycles(edges) {
                eprintln!("{}", describe(name, parent, &cycle, edges));
                cycles += 1;
            }
        }
        let edge_count: usize = scopes.values().map(|e| e.len()).sum();
        eprintln!(
            "xtask: layers: {name}: {} files, {edge_count} imports between sibling modules, {}",
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

/// Writes one cycle for a person to fix: the loop, then each edge with the file and line
/// that draws it.
///
/// Returns: the text, several lines, no trailing newline.
fn describe(krate: &str, parent: &ModPath, cycle: &[String], edges: &Edges) -> String {
    let place = if parent.is_empty() {
        format!("the top-level modules of {krate}")
    } else {
        format!("the modules in {krate}/src/{}/", parent.join("/"))
    };
    let mut loop_ = cycle.to_vec();
    loop_.push(cycle[0].clone());
    let mut text = format!("layers: import cycle among {place}: {}", loop_.join(" -> "));
    for pair in loop_.windows(2) {
        let (file, line) = &edges[&(pair[0].clone(), pair[1].clone())];
        text.push_str(&format!(
            "\n    {} -> {}  at {krate}/src/{}:{line}",
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
        let loaded = tree::load(&|p| fs.get(p).cloned()).unwrap();
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
            ("main.rs", "mod balance;\nmod forward;"),
            ("balance.rs", "use crate::forward;\npub struct Verdict;"),
            ("forward/mod.rs", "mod dr;"),
            ("forward/dr.rs", "\nuse crate::balance::Verdict;"),
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
            ("lib.rs", "pub mod config;"),
            (
                "config/mod.rs",
                "mod raw;\nmod validate;\n#[cfg(test)]\nmod tests;",
            ),
            ("config/raw.rs", "use super::validate::check;"),
            ("config/validate.rs", "use super::{raw::Raw, Model};\n"),
            ("config/tests.rs", "use super::raw::X;"),
        ]);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(
            "layers: import cycle among the modules in k/src/config/: raw -> validate -> raw"
        ));
    }

    #[test]
    fn one_way_imports_pass() {
        let got = report(&[
            ("main.rs", "mod verdict;\nmod balance;\nmod forward;"),
            ("verdict.rs", ""),
            ("balance.rs", "use crate::{forward, verdict::Verdict};"),
            (
                "forward.rs",
                "use crate::verdict::Verdict;\n#[cfg(test)]\nmod tests { use crate::balance::X; }",
            ),
        ]);
        assert!(got.is_empty(), "{got:?}");
    }
}
