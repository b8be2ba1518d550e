//! Finds the line and column of a field path (`peers[1].allowed_prefixes[0]`)
//! in YAML text, so that rules checked after parsing (duplicates, overlaps,
//! combinations of fields) can still point at a line.
//!
//! A pragmatic reader of block-style YAML (indented mappings, `- ` sequences,
//! one-line `[a, b]` flow sequences), which is how configs are written and how
//! serde_norway emits them. Anything it does not understand yields `None`, and
//! the error is then reported without a line.

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `peers[1].allowed_prefixes[0]` into segments.
fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            out.push(Seg::Index(r[..close].parse().ok()?));
            rest = &r[close + 1..];
        }
    }
    Some(out)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A line that carries YAML content (not blank, not a comment, not `---`).
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty() || t.starts_with('#') || t == "---")
}

fn is_dash(rest: &str) -> bool {
    rest == "-" || rest.starts_with("- ")
}

/// A block mapping whose keys sit at column `col`; the first key may sit on
/// line `start` after a `- ` (a sequence item), later ones on their own lines.
#[derive(Debug, Clone, Copy)]
struct Scope {
    start: usize,
    col: usize,
    end: usize,
}

/// Where a value is: on the key's line, or as an indented block below it.
#[derive(Debug, Clone, Copy)]
enum Node {
    Inline {
        line: usize,
        col: usize,
    },
    Block {
        scope: Scope,
        line: usize,
        col: usize,
    },
}

impl Node {
    fn pos(&self) -> (usize, usize) {
        match *self {
            Node::Inline { line, col } | Node::Block { line, col, .. } => (line, col),
        }
    }
}

struct Doc<'a> {
    lines: Vec<&'a str>,
}

impl Doc<'_> {
    fn text_at(&self, line: usize, col: usize) -> Option<&str> {
        self.lines.get(line)?.get(col..)
    }

    /// Finds `key:` among the keys of `scope` and returns its value's node.
    fn key(&self, scope: Scope, key: &str) -> Option<Node> {
        for l in scope.start..scope.end {
            let pos = if l == scope.start {
                scope.col
            } else {
                let line = self.lines.get(l)?;
                if !is_content(line) {
                    continue;
                }
                let ind = indent(line);
                if ind < scope.col {
                    break;
                }
                ind
            };
            if pos != scope.col && l != scope.start {
                continue;
            }
            let rest = self.text_at(l, pos)?;
            let after = rest
                .strip_prefix(key)
                .or_else(|| rest.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| rest.strip_prefix(&format!("'{key}'")));
            let Some(after) = after else { continue };
            let Some(value) = after.trim_start_matches(' ').strip_prefix(':') else {
                continue;
            };
            let val_col = pos + rest.len() - value.len() + (value.len() - value.trim_start().len());
            let v = value.trim();
            if !v.is_empty() && !v.starts_with('#') {
                return Some(Node::Inline {
                    line: l,
                    col: val_col,
                });
            }
            return self.block_below(l, pos, scope.end);
        }
        None
    }

    /// The block value below a key at (`line`, `key_col`).
    fn block_below(&self, line: usize, key_col: usize, end: usize) -> Option<Node> {
        let m = (line + 1..end).find(|&m| self.lines.get(m).is_some_and(|t| is_content(t)))?;
        let text = self.lines.get(m)?;
        let ind = indent(text);
        let dash = is_dash(text.get(ind..)?);
        if ind < key_col || (ind == key_col && !dash) {
            return None;
        }
        let mut stop = end;
        for k in m + 1..end {
            let t = self.lines.get(k)?;
            if !is_content(t) {
                continue;
            }
            let i = indent(t);
            if i < ind || (i == ind && is_dash(t.get(i..)?) != dash) {
                stop = k;
                break;
            }
        }
        Some(Node::Block {
            scope: Scope {
                start: m,
                col: ind,
                end: stop,
            },
            line,
            col: key_col,
        })
    }

    /// The `i`-th item of a sequence value.
    fn index(&self, node: Node, i: usize) -> Option<Node> {
        match node {
            Node::Inline { line, col } => {
                let text = self.text_at(line, col)?;
                let col = col + flow_item(text, i)?;
                Some(Node::Inline { line, col })
            }
            Node::Block { scope, .. } => {
                let mut n = 0;
                for l in scope.start..scope.end {
                    let t = self.lines.get(l)?;
                    if !is_content(t) || indent(t) != scope.col || !is_dash(t.get(scope.col..)?) {
                        continue;
                    }
                    if n == i {
                        let after = t.get(scope.col + 1..)?;
                        let item_col = scope.col + 1 + (after.len() - after.trim_start().len());
                        let end = (l + 1..scope.end)
                            .find(|&k| {
                                self.lines.get(k).is_some_and(|t| {
                                    is_content(t)
                                        && indent(t) <= scope.col
                                        && t.get(scope.col..).is_some_and(is_dash)
                                })
                            })
                            .unwrap_or(scope.end);
                        return Some(Node::Block {
                            scope: Scope {
                                start: l,
                                col: item_col,
                                end,
                            },
                            line: l,
                            col: item_col,
                        });
                    }
                    n += 1;
                }
                None
            }
        }
    }
}

/// Byte offset of the `i`-th element of a one-line flow sequence `[a, b]`.
fn flow_item(text: &str, i: usize) -> Option<usize> {
    let body = text.strip_prefix('[')?;
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut n = 0;
    let mut item_start = true;
    for (off, c) in body.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if item_start && c != ' ' {
            if c == ']' && depth == 0 {
                return None;
            }
            if n == i {
                return Some(off + 1);
            }
            item_start = false;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' | '{' => depth += 1,
            ']' | '}' if depth == 0 => return None,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                n += 1;
                item_start = true;
            }
            _ => {}
        }
    }
    None
}

/// The 1-based (line, column) of the value at `path` in `text`, if found.
pub(crate) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let doc = Doc {
        lines: text.lines().collect(),
    };
    let top = Scope {
        start: 0,
        col: 0,
        end: doc.lines.len(),
    };
    let mut node: Option<Node> = None;
    for seg in segments(path)? {
        node = Some(match (seg, node) {
            (Seg::Key(k), None) => doc.key(top, k)?,
            (Seg::Key(k), Some(Node::Block { scope, .. })) => doc.key(scope, k)?,
            (Seg::Key(_), Some(Node::Inline { .. })) => return None,
            (Seg::Index(i), Some(n)) => doc.index(n, i)?,
            (Seg::Index(_), None) => return None,
        });
    }
    node.map(|n| {
        let (l, c) = n.pos();
        (l + 1, c + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
kind: tunnel
interface:
  name: tun-a   # the device
  addresses: [198.19.0.1/24, \"fd00:19::1/64\"]
  mtu: 1420
listen: 0.0.0.0:51820
peers:
  - name: dc-b
    public_key: abc
    allowed_prefixes:
      - 198.19.0.2/32
      - 198.18.2.0/24

  - name: dc-c
    allowed_prefixes: [198.19.0.3/32,  198.18.3.0/24]
    keepalive: 10s
rekey:
  after_time: 1s
";

    #[test]
    fn finds_paths() {
        assert_eq!(locate(TEXT, "kind"), Some((2, 7)));
        assert_eq!(locate(TEXT, "interface.name"), Some((4, 9)));
        assert_eq!(locate(TEXT, "interface.mtu"), Some((6, 8)));
        assert_eq!(locate(TEXT, "interface.addresses[0]"), Some((5, 15)));
        assert_eq!(locate(TEXT, "interface.addresses[1]"), Some((5, 30)));
        assert_eq!(locate(TEXT, "interface.addresses[2]"), None);
        assert_eq!(locate(TEXT, "listen"), Some((7, 9)));
        assert_eq!(locate(TEXT, "peers[0].name"), Some((9, 11)));
        assert_eq!(locate(TEXT, "peers[0].public_key"), Some((10, 17)));
        assert_eq!(locate(TEXT, "peers[0].allowed_prefixes[1]"), Some((13, 9)));
        assert_eq!(locate(TEXT, "peers[1].name"), Some((15, 11)));
        assert_eq!(locate(TEXT, "peers[1].public_key"), None);
        assert_eq!(locate(TEXT, "peers[1].allowed_prefixes[1]"), Some((16, 40)));
        assert_eq!(locate(TEXT, "peers[1].keepalive"), Some((17, 16)));
        assert_eq!(locate(TEXT, "peers[2].name"), None);
        assert_eq!(locate(TEXT, "rekey.after_time"), Some((19, 15)));
        assert_eq!(locate(TEXT, "rekey.after_bytes"), None);
        assert_eq!(locate(TEXT, "peers"), Some((8, 1)));
    }

    #[test]
    fn same_indent_sequences_and_garbage() {
        let t = "peers:\n- name: a\n  keepalive: 1s\n- name: b\nlisten: x\n";
        assert_eq!(locate(t, "peers[1].name"), Some((4, 9)));
        assert_eq!(locate(t, "peers[0].keepalive"), Some((3, 14)));
        assert_eq!(locate(t, "listen"), Some((5, 9)));
        for junk in ["", "[", "{a: [", "peers: [{", "- - -\n  :", "a:\n\tb: c"] {
            for path in ["peers[0].name", "a.b", "x[9]", "[", "a[", "a[x]"] {
                let _ = locate(junk, path);
            }
        }
    }
}
