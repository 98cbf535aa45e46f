//! Reading the crate's source: a tokenizer that skips comments and literals, the
//! `crate::NAME` references it finds, and the walk over `src/` that turns them into edges.
//!
//! The tokenizer knows just enough Rust to never mistake a comment, a string (raw, byte or C)
//! or a char literal for code: a doc comment or an error message that mentions `crate::foo` is
//! not an import. It does not parse items, so it also finds references in inline paths
//! (`crate::y::f()`) and in `#[cfg(test)]` code, which count like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::graph::Edge;

/// Deeper than any real module tree; a bound so that a symlink loop cannot hang the test.
const DIR_DEPTH_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) line: usize,
}

/// One `crate::NAME` in a file: `NAME` is the first segment after `crate`, which is a
/// top-level module or something `lib.rs` brings into the crate root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reference {
    pub(super) name: String,
    pub(super) line: usize,
}

/// The top-level modules under `src/` and every edge between them.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) modules: BTreeSet<String>,
    pub(super) edges: Vec<Edge>,
}

/// Splits `text` into identifiers, `::` and single punctuation characters, dropping
/// whitespace, comments, literals and lifetimes. Keywords come out as identifiers.
pub(super) fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut lexer = Lexer {
        chars: &chars,
        at: 0,
        line: 1,
        tokens: Vec::new(),
    };
    lexer.run();
    lexer.tokens
}

struct Lexer<'a> {
    chars: &'a [char],
    at: usize,
    line: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    /// Moves past one character, counting lines.
    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.at += 1;
    }

    fn push(&mut self, tok: Tok, line: usize) {
        self.tokens.push(Token { tok, line });
    }

    fn run(&mut self) {
        // Every branch consumes at least one character, so this ends.
        while let Some(c) = self.peek(0) {
            match (c, self.peek(1)) {
                ('/', Some('/')) => self.line_comment(),
                ('/', Some('*')) => self.block_comment(),
                ('"', _) => self.quoted('"'),
                ('\'', _) => self.quote_or_lifetime(),
                (':', Some(':')) => {
                    self.push(Tok::PathSep, self.line);
                    self.at += 2;
                }
                _ if c == '_' || c.is_alphabetic() => self.word(),
                _ if c.is_ascii_digit() => self.number(),
                _ if c.is_whitespace() => self.bump(),
                _ => {
                    self.push(Tok::Punct(c), self.line);
                    self.at += 1;
                }
            }
        }
    }

    fn line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.at += 1;
        }
    }

    /// Block comments nest in Rust: `/* a /* b */ still a comment */`.
    fn block_comment(&mut self) {
        self.at += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    depth += 1;
                    self.at += 2;
                }
                (Some('*'), Some('/')) => {
                    depth -= 1;
                    self.at += 2;
                }
                _ => self.bump(),
            }
        }
    }

    /// A string or char literal with backslash escapes, from its opening quote to the
    /// matching `close`.
    fn quoted(&mut self, close: char) {
        self.at += 1;
        while let Some(c) = self.peek(0) {
            if c == '\\' {
                self.at += 1;
                self.bump();
            } else if c == close {
                self.at += 1;
                return;
            } else {
                self.bump();
            }
        }
    }

    /// `r"…"`, `r#"…"#` and so on, from the first `#` or `"`: no escapes, ends at a quote
    /// followed by as many `#` as opened it.
    fn raw_string(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            hashes += 1;
            self.at += 1;
        }
        self.at += 1; // the opening quote
        while let Some(c) = self.peek(0) {
            self.bump();
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                self.at += hashes;
                return;
            }
        }
    }

    /// `'a'`, `'\n'` and `'\''` are char literals; `'a` and `'static` are lifetimes or labels.
    fn quote_or_lifetime(&mut self) {
        let is_char = self.peek(1) == Some('\\') || self.peek(2) == Some('\'');
        if is_char {
            self.quoted('\'');
        } else {
            self.at += 1;
            while self
                .peek(0)
                .is_some_and(|c| c == '_' || c.is_alphanumeric())
            {
                self.at += 1;
            }
        }
    }

    /// An identifier or keyword, or the prefix of a literal (`r"`, `b'`, `br#"`, `c"`) or of
    /// a raw identifier (`r#type`).
    fn word(&mut self) {
        let start = self.at;
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_alphanumeric())
        {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        let raw_ident = self.peek(1).is_some_and(|c| c == '_' || c.is_alphabetic());
        match (word.as_str(), self.peek(0)) {
            ("r" | "br" | "cr", Some('"')) => self.raw_string(),
            ("r" | "br" | "cr", Some('#')) if !(word == "r" && raw_ident) => self.raw_string(),
            ("r", Some('#')) => {
                self.at += 1;
                self.word();
            }
            ("b" | "c", Some('"')) => self.quoted('"'),
            ("b", Some('\'')) => self.quoted('\''),
            _ => self.push(Tok::Ident(word), self.line),
        }
    }

    /// Digits with their suffix (`0x1f`, `10_000u64`, `1e9`); a `.` becomes punctuation.
    fn number(&mut self) {
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_alphanumeric())
        {
            self.at += 1;
        }
    }
}

/// Every `crate::NAME` in `text`, with the line of `NAME`. A grouped `use crate::{a, b::c}`
/// gives one reference per item (`a`, `b`), nested groups included; `crate::{self}`, globs
/// and paths through `self::` or `super::` give none.
pub(super) fn crate_references(text: &str) -> Vec<Reference> {
    let tokens = tokenize(text);
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let is_crate = token.tok == Tok::Ident("crate".into());
        if !is_crate || tokens.get(i + 1).map(|t| &t.tok) != Some(&Tok::PathSep) {
            continue;
        }
        match tokens.get(i + 2) {
            Some(Token {
                tok: Tok::Ident(name),
                line,
            }) if name != "self" => found.push(Reference {
                name: name.clone(),
                line: *line,
            }),
            Some(Token {
                tok: Tok::Punct('{'),
                ..
            }) => {
                group(&tokens, i + 2, &mut found);
            }
            _ => {}
        }
    }
    found
}

/// Records the first segment of each item in the `{ … }` group opening at `open`, and
/// returns the index after its closing brace. A group nested after a segment (`b::{c, d}`)
/// belongs to that item; a group that is itself an item (`{{a, b}}`) is read the same way.
fn group(tokens: &[Token], open: usize, found: &mut Vec<Reference>) -> usize {
    let mut at = open + 1;
    let mut item_start = true;
    while let Some(token) = tokens.get(at) {
        match &token.tok {
            Tok::Punct('}') => return at + 1,
            Tok::Punct('{') if item_start => {
                at = group(tokens, at, found);
                item_start = false;
                continue;
            }
            Tok::Punct('{') => {
                at = group(tokens, at, &mut Vec::new());
                continue;
            }
            Tok::Punct(',') => item_start = true,
            Tok::Ident(name) if item_start => {
                if name != "self" {
                    found.push(Reference {
                        name: name.clone(),
                        line: token.line,
                    });
                }
                item_start = false;
            }
            _ => item_start = false,
        }
        at += 1;
    }
    at
}

/// The names `lib.rs` brings into the crate root with `use` (private or `pub`), mapped to the
/// module they come from: `pub use node::{Node, run};` makes `crate::Node` an import of
/// `node`. Globs are not followed.
pub(super) fn root_names(lib_rs: &str) -> BTreeMap<String, String> {
    let tokens = tokenize(lib_rs);
    let mut names = BTreeMap::new();
    let mut at = 0;
    while at < tokens.len() {
        if tokens[at].tok != Tok::Ident("use".into()) {
            at += 1;
            continue;
        }
        let end = (at..tokens.len())
            .find(|&i| tokens[i].tok == Tok::Punct(';'))
            .unwrap_or(tokens.len());
        let path = &tokens[at + 1..end];
        let module = path.iter().find_map(|t| match &t.tok {
            Tok::Ident(name) if !matches!(name.as_str(), "crate" | "self") => Some(name),
            _ => None,
        });
        if let Some(module) = module {
            for (i, token) in path.iter().enumerate() {
                let ends_item = match path.get(i + 1).map(|t| &t.tok) {
                    None => true,
                    Some(Tok::Punct(c)) => matches!(c, ',' | '}'),
                    Some(_) => false,
                };
                if let Tok::Ident(name) = &token.tok
                    && ends_item
                    && name != "self"
                {
                    names.insert(name.clone(), module.clone());
                }
            }
        }
        at = end + 1;
    }
    names
}

/// Where a reference points: a top-level module, a name `lib.rs` re-exports from one, or
/// nothing this test tracks (an item defined in `lib.rs` itself, an exported macro, a name
/// `lib.rs` takes from another crate).
pub(super) fn resolve(
    name: &str,
    modules: &BTreeSet<String>,
    root_names: &BTreeMap<String, String>,
) -> Option<String> {
    if modules.contains(name) {
        Some(name.to_owned())
    } else {
        root_names
            .get(name)
            .filter(|m| modules.contains(*m))
            .cloned()
    }
}

/// Reads `src/` (the crate's source directory): each `X.rs` and `X/` other than `lib.rs`,
/// `main.rs` and `bin/` is module `X`, and each `crate::Y` in one of its files is an edge
/// `X -> Y`. Paths in edges are relative to the crate, like `src/node.rs`.
pub(super) fn read_tree(src: &Path) -> Tree {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in sorted_entries(src) {
        let Some(name) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if entry.is_dir() && name != "bin" {
            let owned = files.entry(name.clone()).or_default();
            collect_rs(&entry, &format!("src/{name}"), 0, owned);
        } else if let Some(module) = name.strip_suffix(".rs")
            && module != "lib"
            && module != "main"
        {
            files
                .entry(module.to_owned())
                .or_default()
                .push(format!("src/{name}"));
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let root_names = root_names(&read(&src.join("lib.rs")));
    let mut edges = Vec::new();
    for (module, paths) in &files {
        for path in paths {
            let text = read(&src.join(path.trim_start_matches("src/")));
            for reference in crate_references(&text) {
                match resolve(&reference.name, &modules, &root_names) {
                    Some(to) if to != *module => edges.push(Edge {
                        from: module.clone(),
                        to,
                        file: path.clone(),
                        line: reference.line,
                    }),
                    _ => {}
                }
            }
        }
    }
    edges.sort();
    Tree { modules, edges }
}

fn collect_rs(dir: &Path, shown: &str, depth: usize, out: &mut Vec<String>) {
    assert!(
        depth < DIR_DEPTH_MAX,
        "{shown}: deeper than {DIR_DEPTH_MAX} directories; a symlink loop?"
    );
    for entry in sorted_entries(dir) {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let shown = format!("{shown}/{name}");
        if entry.is_dir() {
            collect_rs(&entry, &shown, depth + 1, out);
        } else if name.ends_with(".rs") {
            out.push(shown);
        }
    }
}

fn sorted_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<_> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    paths.sort();
    paths
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
