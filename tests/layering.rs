//! The crate is layered: no file of `src/` imports a file that (directly or through
//! others) imports it back; and no production file grows past [`MAX_FILE_LINES`]. `docs/design.md` ("Layers") names the layers; this test keeps
//! them honest, and shows that it can fail on a synthetic cycle.
//!
//! An edge is every path a file names into the crate: `crate::...`, `super::...`,
//! `self::...` and paths through its own child modules (`mod x;` then `x::...`), in `use`
//! trees and in expressions, resolved to the deepest file module the path reaches. Test
//! code (`#[cfg(test)]` items and `test.rs` files) is left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file longer than this has seams to split along (README "Development").
const MAX_FILE_LINES: usize = 800;

/// One source file: its module path (`["runtime", "watch"]`) and its text.
struct SourceFile {
    module: Vec<String>,
    text: String,
}

fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        // The binary is another crate: its paths name the library by name.
        Some("main") if parts.len() == 1 => return None,
        Some("test" | "tests") => return None,
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts)
}

fn read_src(dir: &Path, root: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_src(&path, root, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).expect("under src");
            if let Some(module) = module_of(rel) {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.push(SourceFile { module, text });
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Tokens of Rust source without comments, string and character literals.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
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
                    i += 1;
                }
            }
        } else if ch == 'r' && (next == Some('"') || next == Some('#')) && raw_string_at(&c, i) {
            i += 1;
            let mut hashes = 0;
            while c.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < c.len() {
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::Path);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// Whether `r` at `i` starts a raw string (`r"`, `r#"`), not an identifier like `r#type`.
fn raw_string_at(c: &[char], i: usize) -> bool {
    let before_ok = i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    let mut j = i + 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    before_ok && c.get(j) == Some(&'"')
}

fn is_ident(t: &Tok, s: &str) -> bool {
    matches!(t, Tok::Ident(x) if x == s)
}

/// Drops `#[cfg(test)]` items (test modules, test-only imports and functions).
fn without_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let cfg_test = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i..].starts_with(&cfg_test) {
            i += cfg_test.len();
            // The item ends at its `;` or at the brace closing its body.
            let mut depth = 0i32;
            while i < toks.len() {
                match toks[i] {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    Tok::Punct(';') if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree starting at `toks[*i]` into full paths; stops after the tree.
fn use_tree(toks: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(*i) {
            Some(Tok::Path) => *i += 1,
            Some(Tok::Ident(s))
                if s == "self" && !path.is_empty() && path.len() == prefix.len() =>
            {
                // `a::{self, b}`: `self` is the prefix itself.
                *i += 1;
            }
            Some(Tok::Ident(s)) if s == "as" => {
                *i += 2;
                break;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match toks.get(*i) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        None => return,
                        _ => use_tree(toks, i, &path, out),
                    }
                }
            }
            _ => break,
        }
    }
    out.push(path);
}

/// Every path the tokens name that starts with an identifier: `use` trees expanded, and
/// `a::b::c` sequences elsewhere (not preceded by `::`, so `tokio::sync::watch` is one).
fn paths(toks: &[Tok]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if is_ident(&toks[i], "use") {
            i += 1;
            if toks.get(i) == Some(&Tok::Path) {
                i += 1;
            }
            use_tree(toks, &mut i, &[], &mut out);
            continue;
        }
        let starts = matches!(toks[i], Tok::Ident(_)) && (i == 0 || toks[i - 1] != Tok::Path);
        if starts && toks.get(i + 1) == Some(&Tok::Path) {
            let mut path = Vec::new();
            while let Some(Tok::Ident(s)) = toks.get(i) {
                path.push(s.clone());
                if toks.get(i + 1) != Some(&Tok::Path) {
                    break;
                }
                i += 2;
            }
            out.push(path);
        }
        i += 1;
    }
    out
}

/// Child modules a file declares (`mod x;`, `pub mod x;`), outside test code.
fn children(toks: &[Tok]) -> BTreeSet<String> {
    toks.windows(3)
        .filter_map(|w| match (&w[0], &w[1], &w[2]) {
            (Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')) if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The file-to-file import graph, by module path.
fn graph(files: &[SourceFile]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut g = BTreeMap::new();
    for f in files {
        let toks = without_test_items(tokens(&f.text));
        let kids = children(&toks);
        let mut deps = BTreeSet::new();
        for p in paths(&toks) {
            let mut segs = p.as_slice();
            let mut base: Vec<String> = match segs.first().map(String::as_str) {
                Some("crate") => {
                    segs = &segs[1..];
                    Vec::new()
                }
                Some("self") => {
                    segs = &segs[1..];
                    f.module.clone()
                }
                Some("super") => {
                    let mut b = f.module.clone();
                    while segs.first().is_some_and(|s| s == "super") {
                        b.pop();
                        segs = &segs[1..];
                    }
                    b
                }
                Some(first) if kids.contains(first) => f.module.clone(),
                _ => continue,
            };
            // The deepest file module the path reaches.
            let mut target = base.clone();
            for s in segs {
                base.push(s.clone());
                if modules.contains(&base) {
                    target = base.clone();
                }
            }
            if target != f.module && modules.contains(&target) {
                deps.insert(target);
            }
        }
        g.insert(f.module.clone(), deps);
    }
    g
}

/// The import cycles: every strongly connected set of more than one file (Tarjan).
fn cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(name(w));
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.found.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib.rs".into()
    } else {
        module.join("/")
    }
}

fn file(module: &str, text: &str) -> SourceFile {
    SourceFile {
        module: module
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        text: text.into(),
    }
}

#[test]
fn no_file_of_src_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_src(&root, &root, &mut files);
    assert!(files.len() > 20, "read the crate: {} files", files.len());
    let g = graph(&files);
    // The checker sees the known edges (or it would pass on anything).
    let deps = |m: &str| {
        g[&file(m, "").module]
            .iter()
            .map(|d| name(d))
            .collect::<Vec<_>>()
    };
    assert!(
        deps("runtime/watch").contains(&"state".to_string()),
        "{:?}",
        deps("runtime/watch")
    );
    assert!(
        deps("tracker").contains(&"event".to_string()),
        "{:?}",
        deps("tracker")
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between files of src/: {found:?}"
    );
}

#[test]
fn the_check_finds_a_synthetic_cycle() {
    let files = [
        file("", "pub mod a;\npub mod b;\npub mod c;\n"),
        file("a", "use crate::{b::{self, Thing as T}, c};\nfn f() {}\n"),
        file("b", "pub struct Thing;\npub fn g() { crate::c::h() }\n"),
        file(
            "c",
            "// crate::b::x in a comment is no edge\nconst S: &str = \"crate::b::y\";\npub fn h() { let _ = super::a::f; }\n",
        ),
    ];
    let found = cycles(&graph(&files));
    assert_eq!(found, vec![vec!["a", "b", "c"]], "a -> b -> c -> a");
}

#[test]
fn child_modules_and_test_code_are_resolved_as_rust_does() {
    let files = [
        file("", "pub mod k;\n"),
        file("k", "pub mod w;\nuse w::Layer;\npub struct Conn;\n"),
        // `super` of a file module is its parent; inside `#[cfg(test)]` it is not an edge.
        file(
            "k/w",
            "pub struct Layer;\n#[cfg(test)]\nmod test {\n    use super::super::Conn;\n}\nfn f<'a>(c: char) -> bool { c == '{' }\n",
        ),
    ];
    let g = graph(&files);
    assert!(cycles(&g).is_empty(), "{g:?}");
    let files_with_cycle = [
        file("", "pub mod k;\n"),
        file("k", "pub mod w;\nuse w::Layer;\npub struct Conn;\n"),
        file("k/w", "use super::Conn;\npub struct Layer;\n"),
    ];
    assert_eq!(cycles(&graph(&files_with_cycle)), vec![vec!["k", "k/w"]]);
}

#[test]
fn no_production_file_is_longer_than_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_src(&root, &root, &mut files);
    let long: Vec<(String, usize)> = files
        .iter()
        .map(|f| (name(&f.module), f.text.lines().count()))
        .filter(|(_, n)| *n > MAX_FILE_LINES)
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {long:?}"
    );
}
