//! The YAML toolkit shared by the tunneld config (`kind: tunnel`) and
//! tunbench's profiles (`kind: scenario`, `kind: sweep`), so that the three
//! file kinds report mistakes the same way:
//! - [`ProfileError`]: `FILE:LINE:COLUMN: FIELD: MESSAGE`, built from a
//!   file that cannot be read ([`ProfileError::read`]), a parser error ([`ProfileError::from_yaml`]) or from a rule checked after
//!   parsing ([`ProfileError::invalid`], which finds the field's line);
//! - [`locate`]: the line and column of a field path such as
//!   `peers[1].allowed_prefixes[0]` or `points[2].window`;
//! - [`Quantity`] and [`Text`]: serde visitors that apply a rule to a value
//!   inside the parser, so its error carries the field path and line;
//! - [`check_kind`]: the `kind:` line every profile starts with.
//!
//! The locator is a pragmatic reader of block-style YAML (indented mappings,
//! `- ` sequences, one-line `[a, b]` and `{k: v}` flow collections), which is
//! how profiles are written and how serde_norway emits them. Anything it
//! does not understand yields `None`, and the error is then reported without
//! a line.

use std::fmt;

use serde::de::{self, Visitor};

// ---- errors ----

/// A profile mistake with where it is. `Display` reads
/// `FILE:LINE:COLUMN: FIELD: MESSAGE` (line, column and field when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{message}", Loc(file, *line, *column), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ProfileError {
    /// The file name (or a stand-in such as `<config>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field path (`wan.delay`, `peers[1].name`) of a rule checked after
    /// parsing; parser errors carry it at the start of `message` instead.
    pub field: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ProfileError {
    /// A parser error: broken syntax, a wrong type, an unknown, missing or
    /// duplicate field, or a value failing a rule checked in a visitor.
    pub fn from_yaml(e: &serde_norway::Error, file: &str) -> ProfileError {
        let loc = e.location();
        let mut message = e.to_string();
        if let Some(l) = &loc {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(m) = message.strip_suffix(&suffix) {
                message = m.to_string();
            }
        }
        ProfileError {
            file: file.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: None,
            message,
        }
    }

    /// Reads a profile file; the error names it.
    pub fn read(path: &std::path::Path) -> Result<String, ProfileError> {
        std::fs::read_to_string(path).map_err(|e| ProfileError {
            file: path.display().to_string(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        })
    }

    /// A rule checked after parsing broken by `field`; its line and column
    /// are looked up in `text` (the YAML the values came from), if given.
    pub fn invalid(text: Option<&str>, file: &str, field: &str, message: String) -> ProfileError {
        let at = text.and_then(|t| locate(t, field));
        ProfileError {
            file: file.to_string(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            field: Some(field.to_string()),
            message,
        }
    }
}

/// Formats `file:line:col: `, `file:line: ` or `file: `.
#[derive(Debug, Clone, Copy)]
pub struct Loc<'a>(pub &'a str, pub Option<usize>, pub Option<usize>);

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.1, self.2) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: ", self.0),
            (Some(l), None) => write!(f, "{}:{l}: ", self.0),
            _ => write!(f, "{}: ", self.0),
        }
    }
}

// ---- the `kind:` line ----

/// The profile kinds, by the program that reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// `kind: tunnel`: a tunneld config.
    Tunnel,
    /// `kind: scenario`: a `tunbench lab` scenario.
    Scenario,
    /// `kind: sweep`: a `tunbench sweep` profile.
    Sweep,
}

impl ProfileKind {
    const ALL: [ProfileKind; 3] = [
        ProfileKind::Tunnel,
        ProfileKind::Scenario,
        ProfileKind::Sweep,
    ];

    /// The spelling after `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Tunnel => "tunnel",
            ProfileKind::Scenario => "scenario",
            ProfileKind::Sweep => "sweep",
        }
    }

    /// What such a file is, for messages.
    fn what(self) -> &'static str {
        match self {
            ProfileKind::Tunnel => "tunneld configs",
            ProfileKind::Scenario => "lab scenarios",
            ProfileKind::Sweep => "sweeps",
        }
    }

    /// The program (or subcommand) that reads it.
    fn reader(self) -> &'static str {
        match self {
            ProfileKind::Tunnel => "tunneld",
            ProfileKind::Scenario => "tunbench lab",
            ProfileKind::Sweep => "tunbench sweep",
        }
    }
}

/// Checks the `kind:` value `found` of a file read as `want`; the error says
/// which program reads a profile of another known kind.
pub fn check_kind(found: &str, want: ProfileKind) -> Result<(), String> {
    if found == want.as_str() {
        return Ok(());
    }
    match ProfileKind::ALL.iter().find(|k| k.as_str() == found) {
        Some(other) => Err(format!(
            "\"{found}\" profiles are not {}; `{}` reads `kind: {}` (`{}` reads `kind: {found}`)",
            want.what(),
            want.reader(),
            want.as_str(),
            other.reader(),
        )),
        None => Err(format!(
            "unknown profile kind \"{found}\" (expected `{}`)",
            want.as_str()
        )),
    }
}

// ---- visitors ----

/// Visits a number or a string (sizes, rates, durations, counts) and applies
/// `parse` to its text, so the parser reports the field path and line of a
/// value that `parse` refuses.
#[derive(Debug, Clone, Copy)]
pub struct Quantity<T> {
    /// What the value should be, e.g. "a duration such as 10ms or 2s".
    pub what: &'static str,
    /// The rule; its error is the message after the field path.
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for Quantity<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// Visits a string only and applies `parse` to it (names, addresses, the
/// profile kind).
#[derive(Debug, Clone, Copy)]
pub struct Text<T> {
    /// What the value should be.
    pub what: &'static str,
    /// The rule; its error is the message after the field path.
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for Text<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

// ---- the locator ----

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

    /// The value of `key` in a flow mapping `{k: v}` at (`line`, `col`).
    fn flow_key(&self, line: usize, col: usize, key: &str) -> Option<Node> {
        let off = flow_key(self.text_at(line, col)?, key)?;
        Some(Node::Inline {
            line,
            col: col + off,
        })
    }

    /// `key` in the first item of the block sequence `scope` that has it: a
    /// path without an index (`points.window`) names the first such item.
    fn key_in_items(&self, scope: Scope, key: &str) -> Option<Node> {
        let seq = Node::Block {
            scope,
            line: scope.start,
            col: scope.col,
        };
        (0..)
            .map_while(|i| self.index(seq, i))
            .find_map(|item| match item {
                Node::Block { scope: s, .. } => self
                    .key(s, key)
                    .or_else(|| self.flow_key(s.start, s.col, key)),
                Node::Inline { line, col } => self.flow_key(line, col, key),
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

/// Byte offsets (in `text`) of the entries of a one-line flow collection
/// opening at `text[0]` (`[a, b]` or `{k: v, l: w}`).
fn flow_entries(text: &str, open: char) -> Vec<usize> {
    let mut out = Vec::new();
    let Some(body) = text.strip_prefix(open) else {
        return out;
    };
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut item_start = true;
    for (off, c) in body.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if item_start && c != ' ' {
            if (c == ']' || c == '}') && depth == 0 {
                return out;
            }
            out.push(off + open.len_utf8());
            item_start = false;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' | '{' => depth += 1,
            ']' | '}' if depth == 0 => return out,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            _ => {}
        }
    }
    out
}

/// Byte offset of the `i`-th element of a one-line flow sequence `[a, b]`.
fn flow_item(text: &str, i: usize) -> Option<usize> {
    flow_entries(text, '[').get(i).copied()
}

/// Byte offset of the value of `key` in a one-line flow mapping `{k: v}`.
fn flow_key(text: &str, key: &str) -> Option<usize> {
    flow_entries(text, '{').into_iter().find_map(|off| {
        let rest = text.get(off..)?;
        let after = rest
            .strip_prefix(key)
            .or_else(|| rest.strip_prefix(&format!("\"{key}\"")))
            .or_else(|| rest.strip_prefix(&format!("'{key}'")))?;
        let value = after.trim_start_matches(' ').strip_prefix(':')?;
        Some(text.len() - value.trim_start_matches(' ').len())
    })
}

/// The 1-based (line, column) of the value at `path` in `text`, if found.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
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
            (Seg::Key(k), Some(Node::Block { scope, .. })) => doc
                .key(scope, k)
                .or_else(|| doc.flow_key(scope.start, scope.col, k))
                .or_else(|| doc.key_in_items(scope, k))?,
            (Seg::Key(k), Some(Node::Inline { line, col })) => doc.flow_key(line, col, k)?,
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

    #[test]
    fn keys_inside_list_items_and_flow_mappings() {
        let t = "\
grid:
  window:
    - 256K
    - 4
points:
  - window: 4M
    batch: 8
  - {window: 4194304, batch: 16}
  -   window: 1M
reference: {name: box, rate: 100MBps}
";
        // `- ` items: the item's own line, whether indexed or not.
        assert_eq!(locate(t, "grid.window[0]"), Some((3, 7)));
        assert_eq!(locate(t, "grid.window[1]"), Some((4, 7)));
        assert_eq!(locate(t, "points[0].window"), Some((6, 13)));
        assert_eq!(locate(t, "points[0].batch"), Some((7, 12)));
        assert_eq!(locate(t, "points[1].window"), Some((8, 14)));
        assert_eq!(locate(t, "points[1].batch"), Some((8, 30)));
        assert_eq!(locate(t, "points[2].window"), Some((9, 15)));
        assert_eq!(locate(t, "points[3].window"), None);
        // No index: the first item that has the key.
        assert_eq!(locate(t, "points.batch"), Some((7, 12)));
        assert_eq!(locate(t, "points.nothing"), None);
        // Flow mappings.
        assert_eq!(locate(t, "reference.rate"), Some((10, 30)));
        assert_eq!(locate(t, "reference.name"), Some((10, 19)));
        assert_eq!(locate(t, "reference.other"), None);
    }

    #[test]
    fn errors_read_file_line_column_field() {
        let t = "a:\n  - b: 1\n  - b: 2\n";
        let e = ProfileError::invalid(Some(t), "p.yaml", "a[1].b", "too big".into());
        assert_eq!(e.to_string(), "p.yaml:3:8: a[1].b: too big");
        let e = ProfileError::invalid(None, "p.yaml", "a[1].b", "too big".into());
        assert_eq!(e.to_string(), "p.yaml: a[1].b: too big");
        let y = serde_norway::from_str::<std::collections::BTreeMap<String, u8>>("a: [")
            .expect_err("broken");
        let e = ProfileError::from_yaml(&y, "p.yaml");
        assert!(e.line.is_some() && e.field.is_none(), "{e:?}");
        assert!(e.to_string().starts_with("p.yaml:"), "{e}");
        assert!(!e.message.contains(" at line "), "{e}");
        let missing = std::path::Path::new("/nonexistent/p.yaml");
        let e = ProfileError::read(missing).expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/p.yaml: cannot read: "),
            "{e}"
        );
    }

    #[test]
    fn kind_names_the_reader_of_other_kinds() {
        assert_eq!(check_kind("sweep", ProfileKind::Sweep), Ok(()));
        let m = check_kind("tunnel", ProfileKind::Scenario).expect_err("other kind");
        assert_eq!(
            m,
            "\"tunnel\" profiles are not lab scenarios; `tunbench lab` reads \
             `kind: scenario` (`tunneld` reads `kind: tunnel`)"
        );
        let m = check_kind("tunel", ProfileKind::Tunnel).expect_err("typo");
        assert_eq!(m, "unknown profile kind \"tunel\" (expected `tunnel`)");
    }
}
