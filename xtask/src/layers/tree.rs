//! A crate's module tree, read the way rustc reads it: from the crate roots (`lib.rs`,
//! `main.rs`) through each non-test `mod name;` to `name.rs` or `name/mod.rs`. Following
//! the declarations rather than listing the directory leaves out files that are not
//! compiled and test modules declared `#[cfg(test)] mod tests;`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use super::{
    lex::tokenize,
    scan::{scan, FileScan, PathRef},
};

/// A module path inside the crate: `[]` is the crate root, `["config", "raw"]` is
/// `crate::config::raw`.
pub type ModPath = Vec<String>;

/// One source file of the crate, scanned.
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the crate's `src/`, for messages.
    pub rel: PathBuf,
    /// The module the file is the body of.
    pub module: ModPath,
    pub scan: FileScan,
}

/// One import, resolved: the module whose code names another module, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub from: ModPath,
    pub to: ModPath,
    /// Path relative to the crate's `src/`.
    pub file: PathBuf,
    pub line: u32,
}

/// Reads a crate's files through `read` (given a path relative to `src/`; `None` when
/// the file does not exist), so that tests can hand in a crate from memory.
///
/// Returns: every file reachable from the roots, roots first, or an error naming a `mod`
/// whose file is missing (`#[path]` attributes are not supported).
pub fn load(read: &dyn Fn(&Path) -> Option<String>) -> Result<Vec<SourceFile>> {
    let mut queue: Vec<(PathBuf, ModPath, PathBuf)> = ["lib.rs", "main.rs"]
        .into_iter()
        .map(|root| (PathBuf::from(root), Vec::new(), PathBuf::new()))
        .collect();
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = 0;
    while let Some((rel, module, child_dir)) = queue.get(next).cloned() {
        next += 1;
        if !seen.insert(rel.clone()) {
            continue;
        }
        let Some(text) = read(&rel) else {
            continue; // only a missing root gets here; a missing child is caught below
        };
        let scan = scan(&tokenize(&text));
        for decl in &scan.mods {
            let dir = decl.inline.iter().fold(child_dir.clone(), |d, m| d.join(m));
            let mut path = module.clone();
            path.extend(decl.inline.iter().cloned());
            path.push(decl.name.clone());
            let flat = dir.join(format!("{}.rs", decl.name));
            let nested = dir.join(&decl.name).join("mod.rs");
            let file = if read(&flat).is_some() {
                flat
            } else if read(&nested).is_some() {
                nested
            } else {
                bail!(
                    "{} declares `mod {}` but neither {} nor {} exists",
                    rel.display(),
                    decl.name,
                    flat.display(),
                    nested.display()
                );
            };
            queue.push((file, path, dir.join(&decl.name)));
        }
        files.push(SourceFile { rel, module, scan });
    }
    if files.is_empty() {
        bail!("no crate root (lib.rs or main.rs)");
    }
    Ok(files)
}

/// Resolves every crate-relative path of every file to the module it names: the longest
/// prefix of the path that is a module (`crate::forward::internal` names `forward` when
/// `internal` is a function in it).
///
/// Returns: the imports, in file order then line order.
pub fn imports(files: &[SourceFile]) -> Vec<Import> {
    let mut modules: BTreeSet<ModPath> = BTreeSet::new();
    for f in files {
        modules.insert(f.module.clone());
        for inline in &f.scan.inline_mods {
            modules.insert([f.module.clone(), inline.clone()].concat());
        }
    }
    let mut out = Vec::new();
    for f in files {
        for p in &f.scan.paths {
            let from = [f.module.clone(), p.inline.clone()].concat();
            let Some(absolute) = resolve(&from, p) else {
                continue;
            };
            let to = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| modules.contains(prefix))
                .unwrap_or_default();
            out.push(Import {
                from,
                to,
                file: f.rel.clone(),
                line: p.line,
            });
        }
    }
    out
}

/// Turns `crate::a::b`, `super::c` or `self::d` as written in module `from` into an
/// absolute path.
///
/// Returns: the absolute segments, or `None` for a `super` above the crate root (which
/// rustc would reject anyway).
fn resolve(from: &[String], p: &PathRef) -> Option<ModPath> {
    let mut segments = p.segments.iter().peekable();
    let mut base: ModPath = match segments.next()?.as_str() {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => {
            let mut b = from.to_vec();
            b.pop()?;
            while segments.next_if(|s| *s == "super").is_some() {
                b.pop()?;
            }
            b
        }
        _ => return None,
    };
    base.extend(segments.cloned());
    Some(base)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A crate in memory: relative path -> source.
    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
        files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect()
    }

    fn edges(files: &[(&str, &str)]) -> Vec<String> {
        let fs = crate_of(files);
        let loaded = load(&|p| fs.get(p).cloned()).unwrap();
        imports(&loaded)
            .into_iter()
            .map(|i| {
                format!(
                    "{}->{} {}:{}",
                    i.from.join("::"),
                    i.to.join("::"),
                    i.file.display(),
                    i.line
                )
            })
            .collect()
    }

    #[test]
    fn follows_mod_declarations_not_the_directory() {
        let fs = crate_of(&[
            ("main.rs", "mod a;\nmod b;\n#[cfg(test)] mod tests;"),
            ("a.rs", "mod inner;"),
            ("a/inner.rs", ""),
            ("b/mod.rs", ""),
            ("tests.rs", "use crate::a::X;"),
            ("orphan.rs", "use crate::a::X;"),
        ]);
        let loaded = load(&|p| fs.get(p).cloned()).unwrap();
        let rels: Vec<_> = loaded.iter().map(|f| f.rel.display().to_string()).collect();
        assert_eq!(rels, ["main.rs", "a.rs", "b/mod.rs", "a/inner.rs"]);
        assert_eq!(loaded[3].module, ["a", "inner"]);
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let fs = crate_of(&[("lib.rs", "mod gone;")]);
        let err = load(&|p| fs.get(p).cloned()).unwrap_err().to_string();
        assert!(
            err.contains("mod gone") && err.contains("gone/mod.rs"),
            "{err}"
        );
    }

    #[test]
    fn paths_resolve_to_the_deepest_module() {
        let got = edges(&[
            ("lib.rs", "mod a;\nmod b;"),
            ("a/mod.rs", "mod x;\nmod y;\nuse crate::b::Thing;"),
            (
                "a/x.rs",
                "use super::y::f;\nfn g() { super::super::b::h(); self::z(); }",
            ),
            ("a/y.rs", "use super::Item;"),
            ("b.rs", "fn k() { crate::a::x::deep::call(); }"),
        ]);
        assert_eq!(
            got,
            [
                "a->b a/mod.rs:3",
                "b->a::x b.rs:1",
                "a::x->a::y a/x.rs:1",
                "a::x->b a/x.rs:2",
                "a::x->a::x a/x.rs:2",
                "a::y->a a/y.rs:1",
            ]
        );
    }
}
