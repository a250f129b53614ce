//! A crate target's module tree, read the way rustc reads it: from the target's root
//! file through each non-test `mod name;` to `name.rs`, `name/mod.rs` or its `#[path]`.
//! Following the declarations rather than listing the directory leaves out files that
//! are not compiled and test modules declared `#[cfg(test)] mod tests;`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};

use super::{
    source::{self, FileModules},
    ModPath,
};

/// One source file of the tree, read.
#[derive(Debug)]
pub struct SourceFile {
    /// The path it was read from.
    pub path: PathBuf,
    /// The module the file is the body of.
    pub module: ModPath,
    pub found: FileModules,
}

/// One import, resolved: the module whose code names another module, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub from: ModPath,
    pub to: ModPath,
    pub file: PathBuf,
    pub line: usize,
}

/// Reads the module tree whose root file is `root` through `read` (`None` when a file
/// does not exist), so that tests can hand in a crate from memory.
///
/// Returns: every file of the tree, each before its children, or an error naming a file
/// that is not Rust or a `mod` whose file is missing.
pub fn load(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Vec<SourceFile>> {
    let text = read(root).ok_or_else(|| anyhow!("cannot read {}", root.display()))?;
    let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut files = Vec::new();
    load_file(root.to_path_buf(), &text, Vec::new(), dir, read, &mut files)?;
    Ok(files)
}

/// Reads one file, then the files of its `mod` items.
fn load_file(
    path: PathBuf,
    text: &str,
    module: ModPath,
    dir: PathBuf,
    read: &dyn Fn(&Path) -> Option<String>,
    files: &mut Vec<SourceFile>,
) -> Result<()> {
    let mut found = source::read(text, &path, module.clone(), dir)
        .map_err(|e| anyhow!("{}:{}: {e}", path.display(), e.span().start().line))?;
    let mods = std::mem::take(&mut found.mods);
    files.push(SourceFile {
        path: path.clone(),
        module,
        found,
    });
    for decl in mods {
        let Some((file, text)) = decl.files.iter().find_map(|f| Some((f, read(f)?))) else {
            let files: Vec<_> = decl.files.iter().map(|f| f.display().to_string()).collect();
            bail!(
                "{} declares `mod {}` but {} does not exist",
                path.display(),
                decl.module.last().expect("a declared module has a name"),
                files.join(" or ")
            );
        };
        // rustc refuses a module that includes itself; so does this, rather than recurse
        // forever.
        if files
            .iter()
            .any(|f| f.path == *file && decl.module.starts_with(&f.module))
        {
            bail!(
                "{} includes itself as `mod {}`",
                file.display(),
                decl.module.join("::")
            );
        }
        load_file(file.clone(), &text, decl.module, decl.dir, read, files)?;
    }
    Ok(())
}

/// Resolves every crate-relative path of every file to the module it names: the longest
/// prefix of the path that is a module (`crate::forward::internal` names `forward` when
/// `internal` is a function in it).
///
/// Returns: the imports, in file order then source order.
pub fn imports(files: &[SourceFile]) -> Vec<Import> {
    let modules: BTreeSet<&[String]> = files
        .iter()
        .flat_map(|f| std::iter::once(&f.module).chain(&f.found.inline))
        .map(Vec::as_slice)
        .collect();
    let mut out = Vec::new();
    for f in files {
        for p in &f.found.paths {
            let Some(absolute) = resolve(&p.from, &p.segments) else {
                continue;
            };
            let to = (0..=absolute.len())
                .rev()
                .map(|n| &absolute[..n])
                .find(|prefix| modules.contains(prefix))
                .unwrap_or_default();
            out.push(Import {
                from: p.from.clone(),
                to: to.to_vec(),
                file: f.path.clone(),
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
fn resolve(from: &[String], segments: &[String]) -> Option<ModPath> {
    let mut segments = segments.iter().peekable();
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

    /// A crate in memory: path -> source.
    fn crate_of(files: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
        files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect()
    }

    fn edges(root: &str, files: &[(&str, &str)]) -> Vec<String> {
        let fs = crate_of(files);
        let loaded = load(Path::new(root), &|p| fs.get(p).cloned()).unwrap();
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
            (
                "src/bin/main.rs",
                "mod a;\nmod b;\n#[path = \"shared/c.rs\"] mod c;\n#[cfg(test)] mod tests;",
            ),
            ("src/bin/a.rs", "mod inner;"),
            ("src/bin/a/inner.rs", ""),
            ("src/bin/b/mod.rs", "mod d;"),
            ("src/bin/b/d.rs", ""),
            ("src/bin/shared/c.rs", "mod e;"),
            ("src/bin/shared/e.rs", ""),
            ("src/bin/tests.rs", "use crate::a::X;"),
            ("src/bin/orphan.rs", "use crate::a::X;"),
        ]);
        let loaded = load(Path::new("src/bin/main.rs"), &|p| fs.get(p).cloned()).unwrap();
        let got: Vec<_> = loaded
            .iter()
            .map(|f| format!("{} {}", f.module.join("::"), f.path.display()))
            .collect();
        assert_eq!(
            got,
            [
                " src/bin/main.rs",
                "a src/bin/a.rs",
                "a::inner src/bin/a/inner.rs",
                "b src/bin/b/mod.rs",
                "b::d src/bin/b/d.rs",
                "c src/bin/shared/c.rs",
                "c::e src/bin/shared/e.rs",
            ]
        );
    }

    #[test]
    fn a_missing_module_file_or_bad_rust_is_an_error() {
        let fs = crate_of(&[("lib.rs", "mod gone;"), ("bad.rs", "\nfn (")]);
        let read = |p: &Path| fs.get(p).cloned();
        let err = load(Path::new("lib.rs"), &read).unwrap_err().to_string();
        assert_eq!(
            err,
            "lib.rs declares `mod gone` but gone.rs or gone/mod.rs does not exist"
        );
        let err = load(Path::new("bad.rs"), &read).unwrap_err().to_string();
        assert!(err.starts_with("bad.rs:2: "), "{err}");
        let fs = crate_of(&[("lib.rs", "#[path = \"lib.rs\"] mod again;")]);
        let err = load(Path::new("lib.rs"), &|p| fs.get(p).cloned()).unwrap_err();
        assert_eq!(err.to_string(), "lib.rs includes itself as `mod again`");
    }

    #[test]
    fn paths_resolve_to_the_deepest_module() {
        let got = edges(
            "lib.rs",
            &[
                ("lib.rs", "mod a;\nmod b;"),
                ("a/mod.rs", "mod x;\nmod y;\nuse crate::b::Thing;"),
                (
                    "a/x.rs",
                    "use super::y::f;\nfn g() { super::super::b::h(); self::z(); }",
                ),
                (
                    "a/y.rs",
                    "use super::Item;\nmod i { fn f() { super::super::x::g(); } }",
                ),
                (
                    "b.rs",
                    "fn k() { crate::a::x::deep::call(); crate::a::y::i::f(); }",
                ),
            ],
        );
        assert_eq!(
            got,
            [
                "a->b a/mod.rs:3",
                "a::x->a::y a/x.rs:1",
                "a::x->b a/x.rs:2",
                "a::x->a::x a/x.rs:2",
                "a::y->a a/y.rs:1",
                "a::y::i->a::x a/y.rs:2",
                "b->a::x b.rs:1",
                "b->a::y::i b.rs:1",
            ]
        );
    }
}
