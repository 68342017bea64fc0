//! The layout cannot silently regress: the modules of `src/domain/` import
//! one another without a circle, and import nothing from the shell (the
//! rest of the crate: `log`, `runtime`, `cli`, `audit`, ...) nor the
//! shell's crates (sled, tokio, Redis, files, threads, the clock).
//!
//! The import graph is read from the source: every `use` declaration
//! (groups expanded) and every inline `crate::…`, `super::…` or `self::…`
//! path, outside comments, string literals and `#[cfg(test)]` modules. A
//! path is resolved to the file that defines its item, following `pub
//! use` re-exports (`crate::domain::Micros` is an import of
//! `domain/money.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate, e.g. `["domain", "queue"]`.
type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// A `mod.rs` (its `self` is the directory).
    is_dir: bool,
    /// The source without comments, literals and test modules.
    code: String,
}

/// An import: the module it leads to, and the path as written.
type Edges = BTreeMap<ModPath, BTreeMap<ModPath, String>>;

struct Graph {
    modules: BTreeMap<ModPath, Module>,
    /// `pub use` re-exports: `[module…, name]` → the path it names.
    reexports: BTreeMap<ModPath, ModPath>,
}

fn domain_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("domain")
}

fn load(dir: &Path, at: &ModPath, modules: &mut BTreeMap<ModPath, Module>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut sub = at.clone();
            sub.push(name);
            load(&path, &sub, modules);
            continue;
        }
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        let (module, is_dir) = if stem == "mod" {
            (at.clone(), true)
        } else {
            let mut m = at.clone();
            m.push(stem.to_owned());
            (m, false)
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let code = without_test_modules(&strip(&text));
        modules.insert(
            module,
            Module {
                file: path,
                is_dir,
                code,
            },
        );
    }
}

/// `text` with comments removed and string and char literals emptied
/// (lines are kept).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]))
            && matches!(c.get(i + 1), Some('"') | Some('#'))
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if c[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F}'), else a lifetime.
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c[i]);
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `code` without the `#[cfg(test)] mod … { … }` blocks: what tests
/// import is not part of the layout.
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let is_mod = item.starts_with("mod ") || item.starts_with("pub mod ");
        match (is_mod, item.find(['{', ';'])) {
            (true, Some(open)) if item.as_bytes()[open] == b'{' => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[open..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &item[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The tokens of a `use` tree: idents, `::`, `{`, `}`, `,`, `*`.
fn tokens(tree: &str) -> Vec<String> {
    let c: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_whitespace() {
            i += 1;
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else if is_ident(c[i]) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`super::{a::{B, C}, d as e}`) into its paths.
fn expand(toks: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<ModPath>) {
    let mut path = prefix.to_vec();
    while *i < toks.len() {
        match toks[*i].as_str() {
            "{" => {
                *i += 1;
                while *i < toks.len() && toks[*i] != "}" {
                    expand(toks, i, &path, out);
                    if toks.get(*i).map(String::as_str) == Some(",") {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "*" => {
                *i += 1;
                out.push(path);
                return;
            }
            "::" => *i += 1,
            "," | "}" => {
                out.push(path);
                return;
            }
            "as" => *i += 2,
            segment => {
                if segment != "self" || path.is_empty() {
                    path.push(segment.to_owned());
                }
                *i += 1;
            }
        }
    }
    out.push(path);
}

/// The `use` declarations of `code`, expanded, with whether each is `pub`.
fn use_paths(code: &str) -> Vec<(bool, ModPath)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        from = at + 4;
        if at > 0 && is_ident(bytes[at - 1] as char) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let before = code[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let toks = tokens(&code[at + 4..at + end]);
        let mut paths = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            expand(&toks, &mut i, &[], &mut paths);
        }
        out.extend(paths.into_iter().map(|p| (public, p)));
        from = at + end;
    }
    out
}

/// The inline paths of `code` that start at `crate`, `super` or `self`.
fn inline_paths(code: &str) -> Vec<ModPath> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let starts = (i == 0 || !(is_ident(c[i - 1]) || c[i - 1] == ':')) && is_ident(c[i]);
        if !starts {
            i += 1;
            continue;
        }
        let mut segs: ModPath = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < c.len() && is_ident(c[j]) {
                j += 1;
            }
            if start == j {
                break;
            }
            segs.push(c[start..j].iter().collect());
            if c.get(j) == Some(&':') && c.get(j + 1) == Some(&':') {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 && matches!(segs[0].as_str(), "crate" | "super" | "self") {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

impl Graph {
    fn load() -> Graph {
        let mut modules = BTreeMap::new();
        load(&domain_dir(), &vec!["domain".to_owned()], &mut modules);
        let mut graph = Graph {
            modules,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for (path, module) in &graph.modules {
            for (public, used) in use_paths(&module.code) {
                if !public {
                    continue;
                }
                if let (Some(abs), Some(name)) = (graph.absolute(path, &used), used.last()) {
                    let mut key = path.clone();
                    key.push(name.clone());
                    reexports.insert(key, abs);
                }
            }
        }
        graph.reexports = reexports;
        graph
    }

    /// `path` as written in `module`, made absolute (from the crate root);
    /// `None` for another crate's path.
    fn absolute(&self, module: &ModPath, path: &[String]) -> Option<ModPath> {
        let this = module.clone();
        let mut base = match path.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("self") => this.clone(),
            Some("super") => {
                let mut base = this.clone();
                base.pop();
                base
            }
            Some(first) => {
                // A child module named without `self::` (2018 paths).
                let mut child = this.clone();
                child.push(first.to_owned());
                if !self.modules.contains_key(&child) {
                    return None;
                }
                let mut abs = this.clone();
                abs.extend(path.iter().cloned());
                return Some(abs);
            }
            None => return None,
        };
        let mut rest = &path[1..];
        while rest.first().map(String::as_str) == Some("super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module that defines what `abs` names.
    fn resolve(&self, abs: &[String], depth: u32) -> Option<ModPath> {
        if depth > 16 {
            return None;
        }
        for k in (1..=abs.len()).rev() {
            let prefix = &abs[..k];
            if let Some(target) = self.reexports.get(prefix) {
                let mut next = target.clone();
                next.extend(abs[k..].iter().cloned());
                if next.as_slice() != abs {
                    return self.resolve(&next, depth + 1);
                }
            }
            if self.modules.contains_key(prefix) {
                return Some(prefix.to_vec());
            }
        }
        None
    }

    /// Each module's imports of other domain modules, and every path that
    /// leaves `domain`.
    fn edges(&self) -> (Edges, Vec<String>) {
        let mut edges: Edges = BTreeMap::new();
        let mut outside = Vec::new();
        for (path, module) in &self.modules {
            let uses = use_paths(&module.code).into_iter().map(|(_, p)| p);
            for used in uses.chain(inline_paths(&module.code)) {
                let Some(abs) = self.absolute(path, &used) else {
                    continue;
                };
                if abs.first().map(String::as_str) != Some("domain") {
                    outside.push(format!(
                        "{} imports `{}`",
                        module.file.display(),
                        used.join("::")
                    ));
                    continue;
                }
                if let Some(target) = self.resolve(&abs, 0)
                    && &target != path
                    && !(module.is_dir
                        && target.starts_with(path)
                        && target.len() == path.len() + 1)
                {
                    edges
                        .entry(path.clone())
                        .or_default()
                        .entry(target)
                        .or_insert_with(|| used.join("::"));
                }
            }
        }
        (edges, outside)
    }
}

/// A circle in `edges`, as the modules along it.
fn find_cycle(edges: &Edges) -> Option<Vec<ModPath>> {
    fn visit(
        node: &ModPath,
        edges: &Edges,
        done: &mut BTreeSet<ModPath>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn domain_modules_import_one_another_without_a_circle() {
    let graph = Graph::load();
    assert!(
        graph.modules.len() > 10,
        "found only {} modules under {}",
        graph.modules.len(),
        domain_dir().display()
    );
    let (edges, _) = graph.edges();
    // The reader sees imports: the queue imports rejections and the cost
    // model, the cost agent the state.
    let edge = |from: &str, to: &str| {
        let path = |m: &str| -> ModPath { m.split("::").map(str::to_owned).collect() };
        edges
            .get(&path(from))
            .is_some_and(|e| e.contains_key(&path(to)))
    };
    assert!(edge("domain::queue", "domain::rejection"));
    assert!(edge("domain::queue", "domain::cost"));
    assert!(edge("domain::cost_agent", "domain::state"));
    assert!(edge("domain::learning", "domain::draw"));
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                format!(
                    "{} -> {} (`{}`)",
                    w[0].join("::"),
                    w[1].join("::"),
                    edges[&w[0]][&w[1]]
                )
            })
            .collect();
        panic!(
            "the domain modules import one another in a circle:\n  {}",
            steps.join("\n  ")
        );
    }
}

#[test]
fn domain_imports_nothing_from_the_shell() {
    let graph = Graph::load();
    let (_, mut outside) = graph.edges();
    // Nor the shell's crates: no store, no runtime, no files, no clock.
    let forbidden = [
        "sled::",
        "tokio::",
        "redis::",
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "std::time",
        "SystemTime",
        "Instant",
        "Utc::now",
    ];
    for module in graph.modules.values() {
        for word in forbidden {
            let hit = module.code.match_indices(word).any(|(at, _)| {
                at == 0 || {
                    let before = module.code[..at].chars().next_back().unwrap_or(' ');
                    !(is_ident(before) || before == ':')
                }
            });
            if hit {
                outside.push(format!("{} names `{word}`", module.file.display()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "domain must know nothing of the shell:\n  {}",
        outside.join("\n  ")
    );
}

#[test]
fn the_reader_finds_imports_in_use_trees_and_inline_paths() {
    let code = without_test_modules(&strip(
        r#"
        use super::event::{Event, Params as P};
        pub use super::{money::Micros, queue::{self, Task}};
        // use super::comment::Nothing;
        fn f() { let s = "super::string::Nothing"; crate::domain::time::Timestamp(0); }
        #[cfg(test)]
        mod tests { use super::super::tests_only::X; }
        "#,
    ));
    let uses: Vec<String> = use_paths(&code)
        .into_iter()
        .map(|(public, p)| format!("{}{}", if public { "pub " } else { "" }, p.join("::")))
        .collect();
    assert_eq!(
        uses,
        [
            "super::event::Event",
            "super::event::Params",
            "pub super::money::Micros",
            "pub super::queue",
            "pub super::queue::Task",
        ]
    );
    let inline: Vec<String> = inline_paths(&code).iter().map(|p| p.join("::")).collect();
    assert!(inline.contains(&"crate::domain::time::Timestamp".to_owned()));
    assert!(!code.contains("comment") && !code.contains("string") && !code.contains("tests_only"));
}
