//! The documentation describes this repository and nothing outside it: in
//! `README.md` and every Markdown file under `docs/`, each relative link
//! resolves to a file or folder inside the repository (and a `#fragment`
//! to a heading of the linked page), each path written as code
//! (`tunneld/src/gro.rs`) exists, and nothing points to a tracker or to
//! notes kept outside the repository. No root, no network; milliseconds.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// README.md and docs/**/*.md, relative to the repository.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("README.md")];
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(d) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&d))
            .expect("docs/ is readable")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).expect("inside").to_path_buf();
            if p.is_dir() {
                dirs.push(rel);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(rel);
            }
        }
    }
    out
}

/// The page's text outside fenced code blocks, line by line (1-based).
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// Splits a line into its inline code spans and the text between them.
fn split_code(line: &str) -> (String, Vec<&str>) {
    let mut text = String::new();
    let mut code = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('`') {
            Some(close) => {
                code.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => {
                rest = after;
                break;
            }
        }
    }
    text.push_str(rest);
    (text, code)
}

/// The targets of `[text](target)` links in `text`.
fn links(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(close) = after.find(')') else { break };
        out.push(after[..close].trim());
        rest = &after[close..];
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// `path` with `.` and `..` folded; `None` when it climbs above the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with one link of `page`, if anything.
fn check_link(root: &Path, page: &Path, target: &str) -> Option<String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return None;
    }
    if target.starts_with("mailto:") || target.starts_with('/') || target.contains("://") {
        return Some("not a relative link into the repository".into());
    }
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        let dir = page.parent().unwrap_or(Path::new(""));
        match normalise(&dir.join(path)) {
            Some(p) => p,
            None => return Some("leaves the repository".into()),
        }
    };
    let full = root.join(&file);
    if !full.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    if let Some(f) = fragment {
        if full.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&full).unwrap_or_default();
            if !anchors(&text).contains(f) {
                return Some(format!("{} has no heading #{f}", file.display()));
            }
        }
    }
    None
}

/// A code span that names a file or folder of the repository.
fn repo_path(code: &str) -> Option<&str> {
    let path = code.split([':', ' ']).next()?;
    let top = [
        "tunneld/",
        "tunbench/",
        "tests/",
        "profiles/",
        "docs/",
        ".ci/",
    ];
    let looks_like_file = path.ends_with('/') || path.rsplit('/').next()?.contains('.');
    (top.iter().any(|t| path.starts_with(t)) && looks_like_file && !path.contains('*'))
        .then_some(path)
}

/// Words that point outside the product: a tracker's issue numbers and
/// notes kept elsewhere.
fn outside_reference(line: &str) -> Option<&'static str> {
    if line.contains("DESIGN.md") || line.contains("STYLE.md") {
        return Some("a file outside the repository");
    }
    let lower = line.to_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("issue ") {
        let after = rest[i + 6..].trim_start_matches('#');
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            return Some("a tracker's issue number");
        }
        rest = &rest[i + 6..];
    }
    None
}

#[test]
fn every_doc_link_resolves_inside_the_repository() {
    let root = repo();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages(&root) {
        let text = std::fs::read_to_string(root.join(&page)).expect("page is readable");
        for (n, line) in prose(&text) {
            let (plain, code) = split_code(line);
            for target in links(&plain) {
                checked += 1;
                if let Some(why) = check_link(&root, &page, target) {
                    problems.push(format!("{}:{n}: ({target}): {why}", page.display()));
                }
            }
            for c in code {
                if let Some(p) = repo_path(c) {
                    checked += 1;
                    if !root.join(p).exists() {
                        problems.push(format!("{}:{n}: `{p}` does not exist", page.display()));
                    }
                }
            }
            if let Some(why) = outside_reference(line) {
                problems.push(format!("{}:{n}: points to {why}", page.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links and paths found: is the parser broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_what_it_should() {
    let root = repo();
    let page = Path::new("docs/config.md");
    assert_eq!(check_link(&root, page, "tunneld.md"), None);
    assert_eq!(check_link(&root, page, "../README.md"), None);
    assert_eq!(check_link(&root, page, "https://example.com/x"), None);
    assert!(check_link(&root, page, "missing.md").is_some());
    assert!(check_link(&root, page, "../../etc/passwd").is_some());
    assert!(check_link(&root, page, "/etc/passwd").is_some());
    assert!(check_link(&root, page, "tunneld.md#no-such-heading").is_some());
    assert_eq!(slug("Status and metrics"), "status-and-metrics");
    assert_eq!(slug("Hub and spokes"), "hub-and-spokes");
    assert_eq!(
        links("see [a](x.md) and [b](y.md#z), [c]"),
        vec!["x.md", "y.md#z"]
    );
    assert_eq!(repo_path("tunneld/src/gro.rs"), Some("tunneld/src/gro.rs"));
    assert_eq!(repo_path("tunneld/1"), None);
    assert_eq!(repo_path("dataplane.offload"), None);
    assert!(outside_reference("as issue 5 asked").is_some());
    assert!(outside_reference("see DESIGN.md").is_some());
    assert!(outside_reference("an issue with the link").is_none());
}
