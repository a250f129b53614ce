//! What one source file says about modules, read with `syn`: the `mod name;` items to
//! follow, the inline modules, and every path that starts at `crate`, `super` or `self`:
//! in `use` trees, in code and types, and in the tokens syn leaves unparsed (macro calls
//! such as `write!(f, "{}", crate::config::fmt_duration(d))`, attribute arguments such as
//! `#[arg(default_value = crate::config::DEFAULT_SOCKET)]`). Items under `#[cfg(test)]`
//! are skipped whole, so test code may import what it likes without drawing an edge.

use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::{
    ext::IdentExt as _,
    punctuated::Punctuated,
    visit::{self, Visit},
    Attribute, Expr, ExprLit, ImplItem, Item, ItemMod, ItemUse, Lit, Macro, Meta, MetaList,
    MetaNameValue, Token, UseTree, VisRestricted,
};

use super::ModPath;

/// A crate-relative path as written, before it is resolved.
#[derive(Debug, PartialEq, Eq)]
pub struct PathRef {
    /// The module whose code holds the path (inline modules included).
    pub from: ModPath,
    /// The segments, starting with `crate`, `super` or `self`; at least two.
    pub segments: Vec<String>,
    pub line: usize,
}

/// A `mod name;` item: its body is another file.
#[derive(Debug, PartialEq, Eq)]
pub struct ModDecl {
    pub module: ModPath,
    /// Where rustc looks for the body, in order: `name.rs` then `name/mod.rs`, or the
    /// file a `#[path]` attribute names.
    pub files: Vec<PathBuf>,
    /// Where the body's own `mod` items look for their files.
    pub dir: PathBuf,
}

/// Everything the layers check takes from one file, test code left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileModules {
    pub mods: Vec<ModDecl>,
    /// Inline modules (`mod name { ... }`), so that a path into one resolves to it.
    pub inline: Vec<ModPath>,
    pub paths: Vec<PathRef>,
}

/// Reads `text`, the file `file` that is the body of `module`, whose `mod` items look
/// for their files in `dir` (see rustc's rules: the file's own directory for a crate
/// root, a `mod.rs` or a `#[path]` file; `name/` beside `name.rs` otherwise).
///
/// Returns: what the file says, or syn's error when it is not Rust.
pub fn read(text: &str, file: &Path, module: ModPath, dir: PathBuf) -> syn::Result<FileModules> {
    let ast = syn::parse_file(text)?;
    let mut reader = Reader {
        path_dir: file.parent().unwrap_or(Path::new("")).to_path_buf(),
        dir,
        scope: module,
        out: FileModules::default(),
    };
    // `#![cfg(test)]` at the top makes the whole file test code.
    if !test_only(&ast.attrs) {
        reader.visit_file(&ast);
    }
    Ok(reader.out)
}

struct Reader {
    /// What a `#[path]` at the current place is relative to: the file's directory at the
    /// top of the file, `dir` inside an inline module.
    path_dir: PathBuf,
    /// Where a `mod name;` at the current place looks for its file.
    dir: PathBuf,
    /// The module being read.
    scope: ModPath,
    out: FileModules,
}

impl Reader {
    /// Keeps `segments` when they are a crate-relative path into some module. A bare
    /// `crate`, `self` or `super` names the module itself or an ancestor, which is never
    /// a sibling edge, so it is left out (as is every `self.field`).
    fn record(&mut self, segments: Vec<String>, at: Span) {
        if segments.len() > 1 && matches!(segments[0].as_str(), "crate" | "super" | "self") {
            self.out.paths.push(PathRef {
                from: self.scope.clone(),
                segments,
                line: at.start().line,
            });
        }
    }

    /// One use tree after `prefix`: `a::b::{c, d::e as f, self, *}`. A glob or `self`
    /// names the prefix itself; an alias does not matter.
    fn use_tree(&mut self, tree: &UseTree, mut prefix: Vec<String>) {
        let leaf = match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                return self.use_tree(&p.tree, prefix);
            }
            UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix.clone());
                }
                return;
            }
            UseTree::Name(n) => &n.ident,
            UseTree::Rename(r) => &r.ident,
            UseTree::Glob(g) => return self.record(prefix, g.star_token.span),
        };
        if leaf != "self" {
            prefix.push(leaf.to_string());
        }
        self.record(prefix, leaf.span());
    }

    /// Paths in tokens syn leaves unparsed: `crate`, `super` or `self` followed by
    /// `::name`s. `$crate` in a macro definition is the macro's own crate, whoever calls
    /// it, and is left out.
    fn token_paths(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.token_paths(g.stream()),
                TokenTree::Ident(first)
                    if i == 0
                        || !matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '$') =>
                {
                    let mut segments = vec![first.to_string()];
                    while let [TokenTree::Punct(a), TokenTree::Punct(b), TokenTree::Ident(next), ..] =
                        &tokens[i + 1..]
                    {
                        if (a.as_char(), b.as_char()) != (':', ':') {
                            break;
                        }
                        segments.push(next.to_string());
                        i += 3;
                    }
                    self.record(segments, first.span());
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Reader {
    fn visit_item(&mut self, item: &'ast Item) {
        if !test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs: &[Attribute] = match item {
            ImplItem::Const(i) => &i.attrs,
            ImplItem::Fn(i) => &i.attrs,
            ImplItem::Type(i) => &i.attrs,
            ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast ItemMod) {
        let name = m.ident.unraw().to_string();
        let mut module = self.scope.clone();
        module.push(name.clone());
        let path = path_attr(&m.attrs);
        let Some((_, items)) = &m.content else {
            let (files, dir) = match path {
                Some(path) => {
                    let file = self.path_dir.join(path);
                    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
                    (vec![file], dir)
                }
                None => (
                    vec![
                        self.dir.join(format!("{name}.rs")),
                        self.dir.join(&name).join("mod.rs"),
                    ],
                    self.dir.join(&name),
                ),
            };
            self.out.mods.push(ModDecl { module, files, dir });
            return;
        };
        self.out.inline.push(module.clone());
        let dir = self.dir.join(path.unwrap_or(name));
        let outer = (
            std::mem::replace(&mut self.path_dir, dir.clone()),
            std::mem::replace(&mut self.dir, dir),
            std::mem::replace(&mut self.scope, module),
        );
        for item in items {
            self.visit_item(item);
        }
        (self.path_dir, self.dir, self.scope) = outer;
    }

    fn visit_item_use(&mut self, u: &'ast ItemUse) {
        if u.leading_colon.is_none() {
            self.use_tree(&u.tree, Vec::new());
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segments = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(segments, p.segments[0].ident.span());
        }
        visit::visit_path(self, p); // generic arguments: `Vec<crate::a::B>`
    }

    /// `pub(in crate::x)` says who may see an item; it imports nothing.
    fn visit_vis_restricted(&mut self, _: &'ast VisRestricted) {}

    fn visit_macro(&mut self, m: &'ast Macro) {
        self.visit_path(&m.path);
        self.token_paths(m.tokens.clone());
    }

    fn visit_meta_list(&mut self, m: &'ast MetaList) {
        self.visit_path(&m.path);
        self.token_paths(m.tokens.clone());
    }
}

/// Returns: the attributes of `item` (none for the kinds syn does not parse).
fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Returns: the file a `#[path = "..."]` attribute names, if there is one.
fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(MetaNameValue {
            path,
            value: Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }),
            ..
        }) if path.is_ident("path") => Some(s.value()),
        _ => None,
    })
}

/// Returns: whether a `#[cfg(...)]` among `attrs` compiles its item only under test.
fn test_only(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args().is_ok_and(|p| needs_test(&p)))
}

/// Evaluates a `cfg` predicate for "only under test": `test` is, `all(..)` is when any
/// part is, `any(..)` when every part is; anything else (`not(test)`, features,
/// targets) is not.
fn needs_test(pred: &Meta) -> bool {
    match pred {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(l) if l.path.is_ident("all") || l.path.is_ident("any") => {
            let Ok(parts) = l.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            else {
                return false;
            };
            if l.path.is_ident("all") {
                parts.iter().any(needs_test)
            } else {
                !parts.is_empty() && parts.iter().all(needs_test)
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_at(file: &str, src: &str) -> FileModules {
        read(src, Path::new(file), vec!["m".into()], PathBuf::from("m")).unwrap()
    }

    /// `from|path line` for each path of `src`, read as module `m` in `m.rs`.
    fn paths(src: &str) -> Vec<String> {
        read_at("m.rs", src)
            .paths
            .into_iter()
            .map(|p| format!("{}|{} {}", p.from.join("::"), p.segments.join("::"), p.line))
            .collect()
    }

    #[test]
    fn use_trees_expand_to_leaves() {
        let src = "use crate::{\n  a::{self, B},\n  c::d as e,\n  f::*,\n};\nuse std::fmt;\nuse super::g;";
        assert_eq!(
            paths(src),
            [
                "m|crate::a 2",
                "m|crate::a::B 2",
                "m|crate::c::d 3",
                "m|crate::f 4",
                "m|super::g 7"
            ]
        );
    }

    #[test]
    fn code_macros_and_attributes_count() {
        let src =
            "fn f() -> Vec<crate::t::T> { crate::a::b::<u8>(); let _ = super::super::c::D; }\n\
                   #[arg(default_value = crate::e::X)]\n\
                   pub(crate) fn g() { write!(f, \"{}\", self::w::v(self.x)); }\n\
                   pub(in crate::h) fn i() {}\n\
                   macro_rules! m { () => { $crate::j::k() } }\n\
                   // crate::comment::X\nconst S: &str = \"crate::string::X\";";
        assert_eq!(
            paths(src),
            [
                "m|crate::t::T 1",
                "m|crate::a::b 1",
                "m|super::super::c::D 1",
                "m|crate::e::X 2",
                "m|self::w::v 3",
            ]
        );
    }

    #[test]
    fn test_code_is_skipped() {
        let src = "#[cfg(test)]\nmod tests { use crate::a::X; fn t() { crate::b::f(); } }\n\
                   #[cfg(test)] mod more;\n\
                   #[cfg(all(test, feature = \"x\"))] use crate::c::Y;\n\
                   #[cfg(not(test))] use crate::d::Z;\n\
                   #[cfg(any(test, unix))] use crate::e::W;\n\
                   impl S { #[cfg(test)] fn t() { crate::f::g(); } }\n\
                   mod real;";
        let got = read_at("m.rs", src);
        let paths: Vec<_> = got.paths.iter().map(|p| p.segments.join("::")).collect();
        assert_eq!(paths, ["crate::d::Z", "crate::e::W"]);
        assert_eq!(got.mods.len(), 1);
        assert_eq!(got.mods[0].module, ["m", "real"]);
        assert_eq!(
            read_at("m.rs", "#![cfg(test)]\nuse crate::a::B;\nmod b;"),
            FileModules::default()
        );
    }

    #[test]
    fn inline_modules_scope_their_paths_and_files() {
        let src = "mod outer {\n mod inner { use super::x::Y; mod deep; }\n fn f() { self::y::z(); }\n}\n\
                   #[path = \"elsewhere/p.rs\"] mod p;\n\
                   #[path = \"q\"] mod q { #[path = \"r.rs\"] mod r; }";
        let got = read_at("src/m.rs", src);
        assert_eq!(
            got.inline,
            [
                vec!["m", "outer"],
                vec!["m", "outer", "inner"],
                vec!["m", "q"]
            ]
        );
        let paths: Vec<_> = got
            .paths
            .iter()
            .map(|p| format!("{}|{} {}", p.from.join("::"), p.segments.join("::"), p.line))
            .collect();
        assert_eq!(
            paths,
            ["m::outer::inner|super::x::Y 2", "m::outer|self::y::z 3"]
        );
        let mods: Vec<_> = got
            .mods
            .iter()
            .map(|d| {
                let files: Vec<_> = d.files.iter().map(|f| f.display().to_string()).collect();
                format!(
                    "{} {} ({})",
                    d.module.join("::"),
                    files.join(" "),
                    d.dir.display()
                )
            })
            .collect();
        assert_eq!(
            mods,
            [
                "m::outer::inner::deep m/outer/inner/deep.rs m/outer/inner/deep/mod.rs (m/outer/inner/deep)",
                "m::p src/elsewhere/p.rs (src/elsewhere)",
                "m::q::r m/q/r.rs (m/q)",
            ]
        );
    }
}
