//! Maps field paths (`routes[2].upstream`) to the line they start on.
//!
//! serde_yaml reports positions only for the first error of a whole-document parse, and we want
//! every error with its line, so we read the YAML event stream once with yaml-rust2 and remember
//! where each path begins.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Path → 1-based line.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// In a mapping: the path of the mapping and the key waiting for its value, if any.
    Map { path: String, key: Option<String> },
    /// In a sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
}

struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    /// Path of the node that starts now, advancing the parent's cursor. `None` for a key scalar.
    fn next_node_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key; the next node is its value.
                    *key = Some(scalar.unwrap_or("?").to_string());
                    None
                }
            },
        }
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 lines are 1-based already.
        let line = mark.line();
        match ev {
            Event::Scalar(ref v, ..) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    if let Some(Frame::Map { path, .. }) = self.stack.last() {
                        self.lines.entry(join(path, v)).or_insert(line);
                    }
                    self.next_node_path(Some(v));
                } else if let Some(p) = self.next_node_path(None) {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::Alias(_) => {
                self.next_node_path(None);
            }
            Event::MappingStart(..) => {
                let p = self.next_node_path(None).unwrap_or_default();
                self.lines.entry(p.clone()).or_insert(line);
                self.stack.push(Frame::Map { path: p, key: None });
            }
            Event::SequenceStart(..) => {
                let p = self.next_node_path(None).unwrap_or_default();
                self.lines.entry(p.clone()).or_insert(line);
                self.stack.push(Frame::Seq { path: p, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Index a YAML text; on a syntax error the index is simply partial.
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let _ = Parser::new_from_str(text).load(&mut b, false);
        LineIndex { lines: b.lines }
    }

    /// Line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_paths() {
        let text = "listen:\n  proxy: [\"a\"]\nroutes:\n  - name: a\n    upstream: x\n  - name: b\n    scopes:\n      - s1\n      - s2\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("listen"), Some(1));
        assert_eq!(idx.line_of("listen.proxy"), Some(2));
        assert_eq!(idx.line_of("routes[0]"), Some(4));
        assert_eq!(idx.line_of("routes[0].upstream"), Some(5));
        assert_eq!(idx.line_of("routes[1].name"), Some(6));
        assert_eq!(idx.line_of("routes[1].scopes[1]"), Some(9));
        // Unknown leaf falls back to its nearest known ancestor.
        assert_eq!(idx.line_of("routes[1].nope"), Some(6));
        assert_eq!(idx.line_of("nothing"), None);
    }
}
