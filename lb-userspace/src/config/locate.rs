//! Where each node of a YAML document stands: a map from a path such as
//! `virtual_servers[0].real_servers[1].weight` to its line and column, so that errors
//! found after deserialisation can still name the line.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::{Marker, TScalarStyle},
};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

enum Frame {
    /// In a mapping: the path of the mapping, the key awaited next or the key whose
    /// value is awaited.
    Map { path: String, key: Option<String> },
    /// In a sequence: the path of the sequence and the index of the next item.
    Seq { path: String, next: usize },
}

/// Deepest nesting of mappings and lists a file may have. The schema needs 6
/// (`virtual_servers[0].real_servers[0].health_check.expect_status[0]`); serde_yaml's
/// own limit is 128, but libyaml takes time quadratic in the depth of flow collections
/// to get there (seconds for `[[[...]]]` 20,000 deep), so the loader stops before.
pub const MAX_DEPTH: usize = 32;

/// Most nodes that aliases may add to a file, all expanded. Sharing a probe block
/// among all 1,024 virtual servers adds about ten thousand; a "billion laughs" (anchors of
/// lists of aliases of the anchor before) adds exponentially many, which serde_yaml
/// would expand until its own limit, taking seconds, before saying anything.
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// Positions by path. Built once per file; lookups fall back to the nearest parent.
#[derive(Default)]
pub struct Locator {
    positions: HashMap<String, Pos>,
    stack: Vec<Frame>,
    /// Where a collection first opens deeper than [`MAX_DEPTH`].
    too_deep: Option<Pos>,
    /// Nodes so far with every alias expanded, and the open collections' anchors and
    /// counts at their start (to size them at their end).
    nodes: u64,
    open: Vec<(usize, u64)>,
    /// Nodes the aliases added, expanded.
    by_aliases: u64,
    /// Each anchor's size in nodes, aliases in it expanded.
    anchors: HashMap<usize, u64>,
    /// Where the aliases first add more than [`MAX_ALIAS_NODES`].
    bomb: Option<Pos>,
    /// Where the text stops being YAML, if it does.
    syntax_error: Option<Pos>,
    /// The position of the event before.
    last: Option<Pos>,
}

impl Locator {
    /// Indexes `text`. A document that does not parse yields an empty index (serde then
    /// reports the syntax error with its own position).
    pub fn new(text: &str) -> Self {
        let mut loc = Locator::default();
        let mut parser = Parser::new_from_str(text);
        // Event by event, not `Parser::load`, which recurses once per level of nesting
        // and overflowed the stack on 400 nested mappings (the fuzzer's find); the
        // first document only, and no further once the file is found too deep or an
        // alias bomb (it is rejected for that alone).
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd | Event::DocumentEnd, _)) => break,
                Ok((ev, mark)) => {
                    loc.on_event(ev, mark);
                    if loc.too_deep.is_some() || loc.bomb.is_some() {
                        break;
                    }
                }
                Err(e) => {
                    loc.positions.clear();
                    loc.syntax_error = Some(Pos {
                        line: e.marker().line(),
                        col: e.marker().col() + 1,
                    });
                    // The scanner's own limit (255 nested flow collections) stops it
                    // before any event of such a document, so the depth is known from
                    // the error.
                    if e.info().contains("recursion limit") && loc.too_deep.is_none() {
                        loc.too_deep = loc.syntax_error;
                    }
                    break;
                }
            }
        }
        loc.stack.clear();
        loc
    }

    /// Returns: where the file first nests deeper than [`MAX_DEPTH`], if it does.
    pub fn too_deep(&self) -> Option<Pos> {
        self.too_deep
    }

    /// Returns: where the text stops being YAML (by yaml-rust2, which agrees with
    /// serde_yaml's libyaml on what is YAML but reports errors of its own), if it does.
    pub fn syntax_error(&self) -> Option<Pos> {
        self.syntax_error
    }

    /// Returns: where the file's aliases, expanded, first add more than
    /// [`MAX_ALIAS_NODES`] nodes, if they do.
    pub fn alias_bomb(&self) -> Option<Pos> {
        self.bomb
    }

    /// Returns: the position of `path`, or of its nearest ancestor that has one; a
    /// top-level field the file lacks is at the document's start (its first node, or
    /// line 1 of a file with none), so every error has a line.
    pub fn find(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            let Some(cut) = p.rfind(['.', '[']) else {
                return self
                    .positions
                    .get("")
                    .copied()
                    .unwrap_or(Pos { line: 1, col: 1 });
            };
            p = &p[..cut];
        }
    }

    /// The path of the node that starts now, and advances the parent's cursor.
    /// Returns: `None` when the node is a mapping key (keys are recorded with their value).
    fn enter(&mut self, scalar_key: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }),
                None => {
                    *key = Some(scalar_key.unwrap_or("?").to_string());
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Locator {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let mut pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        // An empty value (`key:` or `-` with nothing after) is marked where the next
        // token starts, perhaps lines below or at the end of the file: it stands where
        // its key or dash does.
        if let (Event::Scalar(v, TScalarStyle::Plain, ..), Some(last)) = (&ev, self.last) {
            if v.is_empty() && pos.line > last.line {
                pos = last;
            }
        }
        self.last = Some(pos);
        match ev {
            Event::Scalar(value, _, anchor, _) => {
                self.nodes += 1;
                if anchor != 0 {
                    self.anchors.insert(anchor, 1);
                }
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    let path = match self.stack.last() {
                        Some(Frame::Map { path, .. }) if path.is_empty() => value.clone(),
                        Some(Frame::Map { path, .. }) => format!("{path}.{value}"),
                        _ => unreachable!(),
                    };
                    // A key's position is where the operator looks for the field.
                    self.positions.entry(path).or_insert(pos);
                    self.enter(Some(&value));
                } else if let Some(p) = self.enter(None) {
                    self.positions.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.open.push((anchor, self.nodes));
                self.nodes += 1;
                if self.stack.len() >= MAX_DEPTH && self.too_deep.is_none() {
                    self.too_deep = Some(pos);
                }
                let path = self.enter(None).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            // An alias is a node like a scalar: it takes its place in the parent (an
            // item of a list, a key's value), or the later nodes would be misplaced.
            Event::Alias(anchor) => {
                let size = self.anchors.get(&anchor).copied().unwrap_or(1);
                self.nodes = self.nodes.saturating_add(size);
                self.by_aliases = self.by_aliases.saturating_add(size);
                if self.by_aliases > MAX_ALIAS_NODES && self.bomb.is_none() {
                    self.bomb = Some(pos);
                }
                if let Some(p) = self.enter(None) {
                    self.positions.entry(p).or_insert(pos);
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                if let Some((anchor, start)) = self.open.pop() {
                    if anchor != 0 {
                        self.anchors
                            .insert(anchor, self.nodes.saturating_sub(start));
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_their_lines() {
        let text = "interfaces: [eth0]\nvirtual_servers:\n  - name: web\n    real_servers:\n      - address: 10.0.0.1\n      - address: 10.0.0.2\n        weight: 3\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("interfaces").line, 1);
        assert_eq!(loc.find("virtual_servers[0].name").line, 3);
        assert_eq!(
            loc.find("virtual_servers[0].real_servers[1].address").line,
            6
        );
        assert_eq!(
            loc.find("virtual_servers[0].real_servers[1].weight").line,
            7
        );
        // An absent field falls back to its parent.
        assert_eq!(loc.find("virtual_servers[0].real_servers[0].port").line, 5);
    }
}
