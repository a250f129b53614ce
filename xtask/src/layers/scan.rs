//! What one source file says about modules: the `mod` items it declares and every path
//! that names another module of the crate (`use crate::x::...`, `super::y` in code,
//! `crate::z::f()` in an expression or an attribute). Test-only items
//! (`#[cfg(test)] mod tests`, `#[cfg(test)] use ...`) are skipped whole, so test code
//! may import what it likes without drawing an edge.

use super::lex::{Tok, Token};

/// A crate-relative path as written, before it is resolved against the file's module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRef {
    /// The inline modules (`mod x { ... }`) the path sits in, outermost first; empty at
    /// the top of the file.
    pub inline: Vec<String>,
    /// The segments, starting with `crate`, `super` or `self`.
    pub segments: Vec<String>,
    pub line: u32,
}

/// A `mod name;` item (its body is another file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModDecl {
    /// The inline modules the declaration sits in (usually none).
    pub inline: Vec<String>,
    pub name: String,
}

/// Everything the layers check takes from one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileScan {
    /// Non-test `mod name;` items: the files to read next.
    pub mods: Vec<ModDecl>,
    /// Non-test inline modules (`mod name { ... }`), as paths relative to the file's
    /// module, so that a path into them resolves to them.
    pub inline_mods: Vec<Vec<String>>,
    /// Every crate-relative path outside test code.
    pub paths: Vec<PathRef>,
}

/// Scans a tokenized file.
///
/// Returns: the file's module items and crate-relative paths, test code excluded.
pub fn scan(tokens: &[Token]) -> FileScan {
    let mut scanner = Scanner {
        toks: tokens,
        pos: 0,
        depth: 0,
        inline: Vec::new(),
        out: FileScan::default(),
    };
    scanner.run();
    scanner.out
}

/// Cursor over the tokens, tracking brace depth so that inline modules are left at the
/// right `}`.
struct Scanner<'a> {
    toks: &'a [Token],
    pos: usize,
    depth: usize,
    /// Open inline modules: name and the brace depth inside them.
    inline: Vec<(String, usize)>,
    out: FileScan,
}

impl Scanner<'_> {
    /// Returns: the token `ahead` places past the cursor, if any.
    fn tok(&self, ahead: usize) -> Option<&Tok> {
        self.toks.get(self.pos + ahead).map(|t| &t.tok)
    }

    /// Returns: whether the token `ahead` places past the cursor is identifier `word`.
    fn is_ident(&self, ahead: usize, word: &str) -> bool {
        matches!(self.tok(ahead), Some(Tok::Ident(w)) if w == word)
    }

    /// Returns: whether the token `ahead` places past the cursor is `c`.
    fn is_punct(&self, ahead: usize, c: char) -> bool {
        self.tok(ahead) == Some(&Tok::Punct(c))
    }

    /// Returns: the names of the inline modules the cursor is in.
    fn inline_path(&self) -> Vec<String> {
        self.inline.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The main loop: one construct at a time.
    fn run(&mut self) {
        while let Some(tok) = self.tok(0).cloned() {
            match tok {
                Tok::Punct('#') if self.is_punct(1, '!') && self.is_punct(2, '[') => {
                    // `#![cfg(test)]` at the top makes the whole file test code.
                    if self.attribute_is_test(2) && self.depth == 0 && self.inline.is_empty() {
                        self.out = FileScan::default();
                        return;
                    }
                    self.pos += 1;
                }
                Tok::Punct('#') if self.is_punct(1, '[') && self.attribute_is_test(1) => {
                    self.skip_item();
                }
                Tok::Punct('{') => {
                    self.depth += 1;
                    self.pos += 1;
                }
                Tok::Punct('}') => {
                    if self.inline.last().is_some_and(|(_, d)| *d == self.depth) {
                        self.inline.pop();
                    }
                    self.depth = self.depth.saturating_sub(1);
                    self.pos += 1;
                }
                Tok::Ident(w) if w == "use" => self.use_item(),
                Tok::Ident(w) if w == "mod" => self.mod_item(),
                Tok::Ident(w) if w == "pub" && self.is_punct(1, '(') => {
                    // `pub(crate)`, `pub(in crate::x)`: visibility, not an import.
                    self.pos += 1;
                    self.skip_group();
                }
                Tok::Ident(w) if is_path_start(&w) && self.tok(1) == Some(&Tok::PathSep) => {
                    self.code_path()
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Reads `cfg(...)` inside the attribute whose `[` is `open` tokens ahead.
    ///
    /// Returns: whether the attribute makes its item exist only under test.
    fn attribute_is_test(&self, open: usize) -> bool {
        let start = self.pos + open + 1;
        if !matches!(self.toks.get(start).map(|t| &t.tok), Some(Tok::Ident(w)) if w == "cfg") {
            return false;
        }
        let Some(close) = matching(self.toks, start + 1) else {
            return false;
        };
        cfg_requires_test(&self.toks[start + 2..close])
    }

    /// Skips the item under the cursor: its attributes, then everything up to its `;`
    /// or to the `}` that closes its body.
    fn skip_item(&mut self) {
        while self.is_punct(0, '#') {
            self.pos += 1;
            if self.is_punct(0, '!') {
                self.pos += 1;
            }
            self.skip_group();
        }
        while let Some(tok) = self.tok(0) {
            match tok {
                Tok::Punct(';') => {
                    self.pos += 1;
                    return;
                }
                Tok::Punct('{') => {
                    self.skip_group();
                    return;
                }
                Tok::Punct('(' | '[') => self.skip_group(),
                _ => self.pos += 1,
            }
        }
    }

    /// Skips a bracketed group, cursor on its opening bracket (or anywhere else, in
    /// which case one token is skipped).
    fn skip_group(&mut self) {
        self.pos = matching(self.toks, self.pos).map_or(self.pos + 1, |close| close + 1);
    }

    /// `mod name;` is recorded for the loader; `mod name {` opens an inline module.
    fn mod_item(&mut self) {
        let Some(Tok::Ident(name)) = self.tok(1).cloned() else {
            self.pos += 1;
            return;
        };
        if self.is_punct(2, ';') {
            self.out.mods.push(ModDecl {
                inline: self.inline_path(),
                name,
            });
            self.pos += 3;
        } else if self.is_punct(2, '{') {
            self.depth += 1;
            self.inline.push((name, self.depth));
            self.out.inline_mods.push(self.inline_path());
            self.pos += 3;
        } else {
            self.pos += 1;
        }
    }

    /// `use` tree: every leaf path that starts at `crate`, `super` or `self`.
    fn use_item(&mut self) {
        self.pos += 1;
        if self.tok(0) == Some(&Tok::PathSep) {
            self.pos += 1;
        }
        let mut leaves = Vec::new();
        self.use_tree(Vec::new(), &mut leaves);
        for (segments, line) in leaves {
            if segments.first().is_some_and(|s| is_path_start(s)) {
                self.out.paths.push(PathRef {
                    inline: self.inline_path(),
                    segments,
                    line,
                });
            }
        }
    }

    /// One use tree after `prefix`: `a::b::{c, d::e as f, self, *}`. A glob or `self`
    /// names the prefix itself; an alias does not matter.
    fn use_tree(&mut self, mut prefix: Vec<String>, leaves: &mut Vec<(Vec<String>, u32)>) {
        while let Some(token) = self.toks.get(self.pos).cloned() {
            match token.tok {
                Tok::Ident(name) if self.tok(1) == Some(&Tok::PathSep) => {
                    prefix.push(name);
                    self.pos += 2;
                }
                Tok::Ident(name) => {
                    if name != "self" {
                        prefix.push(name);
                    }
                    leaves.push((prefix, token.line));
                    self.pos += 1;
                    if self.is_ident(0, "as") {
                        self.pos += 2;
                    }
                    return;
                }
                Tok::Punct('*') => {
                    leaves.push((prefix, token.line));
                    self.pos += 1;
                    return;
                }
                Tok::Punct('{') => {
                    self.pos += 1;
                    while !self.is_punct(0, '}') && self.tok(0).is_some() {
                        let before = self.pos;
                        if !self.is_punct(0, ',') {
                            self.use_tree(prefix.clone(), leaves);
                        }
                        if self.pos == before {
                            // A comma, or a token no use tree has: step over it.
                            self.pos += 1;
                        }
                    }
                    self.pos += 1;
                    return;
                }
                _ => return,
            }
        }
    }

    /// A path in code: `crate::a::b`, `super::super::c`, `self::d`, up to the first
    /// segment that is not an identifier (`::<T>` or the end). `$crate` belongs to a
    /// macro of another crate and is skipped.
    fn code_path(&mut self) {
        let line = self.toks[self.pos].line;
        let in_macro = self.pos > 0 && self.toks[self.pos - 1].tok == Tok::Punct('$');
        let mut segments = Vec::new();
        while let Some(Tok::Ident(name)) = self.tok(0).cloned() {
            segments.push(name);
            self.pos += 1;
            if self.tok(0) == Some(&Tok::PathSep) && matches!(self.tok(1), Some(Tok::Ident(_))) {
                self.pos += 1;
            } else {
                break;
            }
        }
        if !in_macro {
            self.out.paths.push(PathRef {
                inline: self.inline_path(),
                segments,
                line,
            });
        }
    }
}

/// Returns: whether a path starting with `word` is relative to this crate.
fn is_path_start(word: &str) -> bool {
    matches!(word, "crate" | "super" | "self")
}

/// Finds the bracket that closes the one at `open`.
///
/// Returns: its index, or `None` when `open` is not an opening bracket or the group is
/// never closed.
fn matching(toks: &[Token], open: usize) -> Option<usize> {
    if !matches!(toks.get(open)?.tok, Tok::Punct('(' | '[' | '{')) {
        return None;
    }
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Evaluates a `cfg` predicate for "only under test": `test` is, `all(..)` is when any
/// part is, `any(..)` when every part is; anything else (`not(test)`, features,
/// targets) is not.
///
/// Returns: whether code under this predicate is compiled only for tests.
fn cfg_requires_test(pred: &[Token]) -> bool {
    match pred.first().map(|t| &t.tok) {
        Some(Tok::Ident(w)) if w == "test" => pred.len() == 1,
        Some(Tok::Ident(w)) if w == "all" || w == "any" => {
            let Some(close) = matching(pred, 1) else {
                return false;
            };
            let parts = split_args(&pred[2..close]);
            if w == "all" {
                parts.iter().any(|p| cfg_requires_test(p))
            } else {
                !parts.is_empty() && parts.iter().all(|p| cfg_requires_test(p))
            }
        }
        _ => false,
    }
}

/// Splits the inside of `all(...)` at its top-level commas.
///
/// Returns: the argument token slices, empty ones dropped.
fn split_args(toks: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth = depth.saturating_sub(1),
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::{super::lex::tokenize, *};

    fn paths(src: &str) -> Vec<(String, u32)> {
        scan(&tokenize(src))
            .paths
            .into_iter()
            .map(|p| {
                let mut s = p.inline.join("/");
                if !s.is_empty() {
                    s.push('|');
                }
                (s + &p.segments.join("::"), p.line)
            })
            .collect()
    }

    fn strs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(s, l)| (s.to_string(), *l)).collect()
    }

    #[test]
    fn use_trees_expand_to_leaves() {
        let src = "use crate::{\n  a::{self, B},\n  c::d as e,\n  f::*,\n};\nuse std::fmt;\nuse super::g;";
        assert_eq!(
            paths(src),
            strs(&[
                ("crate::a", 2),
                ("crate::a::B", 2),
                ("crate::c::d", 3),
                ("crate::f", 4),
                ("super::g", 7),
            ])
        );
    }

    #[test]
    fn code_paths_and_attributes_count() {
        let src = "fn f() { crate::a::b::<u8>(); let _ = super::super::c::D; }\n\
                   #[arg(default_value = crate::e::X)]\n\
                   pub(crate) fn g() {} pub(in crate::h) fn i() {}\n\
                   macro_rules! m { () => { $crate::j::k() } }";
        assert_eq!(
            paths(src),
            strs(&[
                ("crate::a::b", 1),
                ("super::super::c::D", 1),
                ("crate::e::X", 2)
            ])
        );
    }

    #[test]
    fn test_code_is_skipped() {
        let src = "#[cfg(test)]\nmod tests { use crate::a::X; fn t() { crate::b::f(); } }\n\
                   #[cfg(test)] mod more;\n\
                   #[cfg(all(test, feature = \"x\"))] use crate::c::Y;\n\
                   #[cfg(not(test))] use crate::d::Z;\n\
                   #[cfg(any(test, unix))] use crate::e::W;\n\
                   mod real;";
        let s = scan(&tokenize(src));
        assert_eq!(
            s.paths
                .iter()
                .map(|p| p.segments.join("::"))
                .collect::<Vec<_>>(),
            ["crate::d::Z", "crate::e::W"]
        );
        assert_eq!(
            s.mods,
            [ModDecl {
                inline: vec![],
                name: "real".into()
            }]
        );
    }

    #[test]
    fn inline_modules_scope_their_paths() {
        let src =
            "mod outer {\n mod inner { use super::x; }\n fn f() { self::y(); }\n}\nuse crate::z;";
        let s = scan(&tokenize(src));
        assert_eq!(
            s.inline_mods,
            [
                vec!["outer".to_string()],
                vec!["outer".into(), "inner".into()]
            ]
        );
        assert_eq!(
            paths(src),
            strs(&[
                ("outer/inner|super::x", 2),
                ("outer|self::y", 3),
                ("crate::z", 5)
            ])
        );
    }

    #[test]
    fn a_test_only_file_says_nothing() {
        let s = scan(&tokenize("#![cfg(test)]\nuse crate::a;\nmod b;"));
        assert_eq!(s, FileScan::default());
    }
}
