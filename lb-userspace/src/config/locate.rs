//! Where each node of a YAML document stands: a map from a path such as
//! `virtual_servers[0].real_servers[1].weight` to its line and column, so that errors
//! found after deserialisation can still name the line.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
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

/// Positions by path. Built once per file; lookups fall back to the nearest parent.
#[derive(Default)]
pub struct Locator {
    positions: HashMap<String, Pos>,
    stack: Vec<Frame>,
}

impl Locator {
    /// Indexes `text`. A document that does not parse yields an empty index (serde then
    /// reports the syntax error with its own position).
    pub fn new(text: &str) -> Self {
        let mut loc = Locator::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut loc, false).is_err() {
            loc.positions.clear();
        }
        loc.stack.clear();
        loc
    }

    /// Returns: the position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
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
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(value, ..) => {
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
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.enter(None).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
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
        assert_eq!(loc.find("interfaces").unwrap().line, 1);
        assert_eq!(loc.find("virtual_servers[0].name").unwrap().line, 3);
        assert_eq!(
            loc.find("virtual_servers[0].real_servers[1].address")
                .unwrap()
                .line,
            6
        );
        assert_eq!(
            loc.find("virtual_servers[0].real_servers[1].weight")
                .unwrap()
                .line,
            7
        );
        // An absent field falls back to its parent.
        assert_eq!(
            loc.find("virtual_servers[0].real_servers[0].port")
                .unwrap()
                .line,
            5
        );
    }
}
