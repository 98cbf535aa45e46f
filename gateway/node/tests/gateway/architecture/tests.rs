//! The rules on synthetic graphs and the extractor on synthetic source, so that the real-tree
//! test is known to catch what it claims to.

use std::collections::BTreeSet;
use std::fs;

use super::graph::{self, Edge, Violation};
use super::source::{self, Reference};

fn edge(from: &str, to: &str, line: usize) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        file: format!("src/{from}.rs"),
        line,
    }
}

fn modules(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|&n| n.to_owned()).collect()
}

const LAYERS: &[(&str, u8)] = &[("a", 0), ("b", 0), ("c", 1), ("d", 2), ("root", 3)];

fn check(edges: &[Edge]) -> Vec<Violation> {
    graph::check(
        &modules(&["a", "b", "c", "d", "root"]),
        edges,
        LAYERS,
        "root",
    )
}

/// The modules around each reported cycle, like `["a", "b", "a"]`.
fn cycles(violations: &[Violation]) -> Vec<Vec<&str>> {
    fn ring(steps: &[graph::Import]) -> Vec<&str> {
        let mut names: Vec<&str> = steps.iter().map(|s| s.first.from.as_str()).collect();
        names.extend(steps.first().map(|s| s.first.from.as_str()));
        names
    }
    violations
        .iter()
        .filter_map(|v| match v {
            Violation::Cycle(steps) => Some(ring(steps)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_acyclic_layered_graph_passes() {
    let edges = [
        edge("root", "d", 1),
        edge("root", "a", 2),
        edge("d", "c", 3),
        edge("d", "a", 4),
        edge("c", "b", 5),
        edge("c", "b", 9),
        edge("c", "c", 6),
    ];
    assert_eq!(check(&edges), []);
    let shown = graph::render_graph(
        &modules(&["a", "b", "c", "d", "root"]),
        &graph::graph(&edges),
        LAYERS,
    );
    assert_eq!(
        shown,
        "layer 3\n  root -> a, d\nlayer 2\n  d -> a, c\nlayer 1\n  c -> b\n\
         layer 0\n  a -> (none)\n  b -> (none)\n"
    );
}

#[test]
fn a_two_cycle_is_reported_with_where_each_import_is() {
    let found = check(&[edge("c", "d", 7), edge("d", "c", 3), edge("d", "c", 1)]);
    assert_eq!(cycles(&found), [["c", "d", "c"]]);
    assert_eq!(
        found[0].to_string(),
        "cycle: c -> d -> c\n      c -> d at src/c.rs:7\n      d -> c at src/d.rs:1 (and 1 more)"
    );
}

#[test]
fn a_three_cycle_is_reported_once_from_its_first_module() {
    let found = check(&[
        edge("d", "a", 1),
        edge("a", "c", 2),
        edge("c", "d", 3),
        edge("d", "b", 4),
    ]);
    assert_eq!(cycles(&found), [["a", "c", "d", "a"]]);
    assert!(
        found[0]
            .to_string()
            .starts_with("cycle: a -> c -> d -> a\n")
    );
}

#[test]
fn every_import_on_a_cycle_is_in_some_reported_cycle() {
    // Two loops through `c`: c <-> d and c -> a -> b -> c.
    let found = check(&[
        edge("c", "d", 1),
        edge("d", "c", 2),
        edge("c", "a", 3),
        edge("a", "b", 4),
        edge("b", "c", 5),
    ]);
    assert_eq!(
        cycles(&found),
        [vec!["c", "d", "c"], vec!["a", "b", "c", "a"]]
    );
}

#[test]
fn an_import_of_the_root_is_reported() {
    let found = check(&[edge("d", "root", 5), edge("root", "d", 1)]);
    assert!(found.contains(&Violation::RootImported(graph::Import {
        first: edge("d", "root", 5),
        places: 1,
    })));
    assert!(
        found
            .iter()
            .all(|v| !matches!(v, Violation::NotDownward { .. })),
        "an import of the root is reported once, as such: {found:?}"
    );
}

#[test]
fn upward_and_same_layer_imports_are_reported() {
    let found = check(&[edge("a", "c", 2), edge("a", "b", 3)]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[0].to_string(),
        "same-layer import: a (layer 0) -> b (layer 0) at src/a.rs:3; \
         imports must go to a lower layer"
    );
    assert!(matches!(
        &found[1],
        Violation::NotDownward { from_layer: 0, to_layer: 1, import } if import.first.to == "c"
    ));
}

#[test]
fn the_table_must_list_exactly_the_modules() {
    let layers = [("a", 0), ("gone", 1), ("a", 2)];
    let found = graph::check(&modules(&["a", "new"]), &[], &layers, "root");
    assert_eq!(
        found,
        [
            Violation::NotInTable("new".into()),
            Violation::NoSuchModule("gone".into()),
            Violation::ListedTwice("a".into()),
        ]
    );
    assert!(found[0].to_string().contains("add it to the table"));
    assert_eq!(
        graph::summary(&found),
        "3 differences between LAYERS and src/"
    );
}

fn names(text: &str) -> Vec<String> {
    source::crate_references(text)
        .into_iter()
        .map(|r| r.name)
        .collect()
}

#[test]
fn grouped_and_nested_uses_give_each_first_segment() {
    let text = "use crate::{a, b::c, d::{self, e::{f, g}}, self, *};\n\
                use crate::{{h, i::j}, k as kk};\n\
                pub(crate) use crate::l::M;\n\
                pub(in crate::x) fn f() {}\n";
    assert_eq!(names(text), ["a", "b", "d", "h", "i", "k", "l", "x"]);
}

#[test]
fn inline_paths_count_with_their_lines() {
    let text = "fn f() {\n    let x = crate::node::lock(&m);\n    \
                <crate::a::T as crate::b::U>::go();\n}\n";
    assert_eq!(
        source::crate_references(text),
        [
            Reference {
                name: "node".into(),
                line: 2
            },
            Reference {
                name: "a".into(),
                line: 3
            },
            Reference {
                name: "b".into(),
                line: 3
            },
        ]
    );
}

#[test]
fn comments_strings_and_chars_are_not_code() {
    let text = r####"
//! See [`crate::docs`].
/// Calls crate::doc_line.
// crate::line
/* crate::block /* nested crate::inner */ still crate::comment */
fn f<'a>(x: &'a str) -> char {
    let s = "crate::string \" crate::escaped";
    let r = r#"crate::raw " still crate::raw"#;
    let rr = r##"crate::raw2 "# crate::raw3"##;
    let b = b"crate::bytes";
    let br = br#"crate::raw_bytes"#;
    let q = '"'; let e = '\''; let y = b'"';
    'outer: loop { break 'outer; }
    let kw = crate::r#type::f();
    crate::real::g(s, x)
}
"####;
    let found = source::crate_references(text);
    let lines: Vec<(&str, usize)> = found.iter().map(|r| (r.name.as_str(), r.line)).collect();
    assert_eq!(lines, [("type", 14), ("real", 15)]);
}

#[test]
fn self_and_super_paths_are_not_edges() {
    let text = "use self::inner::X;\nuse super::{a, b};\nuse super::super::c;\n\
                use std::fmt;\nlet v = self::x::y();\n";
    assert_eq!(names(text), Vec::<String>::new());
}

#[test]
fn root_names_map_lib_rs_reexports_to_their_modules() {
    let lib = "//! use crate::not::This;\npub mod node;\npub use config::Config;\n\
               pub use node::{self, Node, run as start};\nuse std::sync::Arc;\n";
    let names = source::root_names(lib);
    let mods = modules(&["config", "node"]);
    let resolve = |n: &str| source::resolve(n, &mods, &names);
    assert_eq!(resolve("Config").as_deref(), Some("config"));
    assert_eq!(resolve("Node").as_deref(), Some("node"));
    assert_eq!(resolve("start").as_deref(), Some("node"));
    assert_eq!(resolve("run"), None);
    assert_eq!(resolve("node").as_deref(), Some("node"));
    assert_eq!(resolve("Arc"), None, "std is not a module of the crate");
    assert_eq!(resolve("This"), None);
}

#[test]
fn a_tree_on_disk_gives_module_edges() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("architecture-tree");
    let _ = fs::remove_dir_all(&dir);
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub use b::Thing;\n"),
        ("main.rs", "use switchyard::a;\nuse crate::b;\n"),
        ("a.rs", "mod inner;\nuse crate::Thing;\n"),
        (
            "a/inner.rs",
            "use super::x;\n\nfn f() { crate::b::g(); crate::a::h() }\n",
        ),
        ("a/inner/deep.rs", "use crate::{c, a};\n"),
        ("b.rs", "pub struct Thing;\n"),
        ("c/only.rs", "// A module with no c.rs beside it.\n"),
        ("bin/tool.rs", "use crate::c;\n"),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let tree = source::read_tree(&dir);
    assert_eq!(tree.modules, modules(&["a", "b", "c"]));
    let edges: Vec<(&str, &str, &str, usize)> = tree
        .edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str(), e.file.as_str(), e.line))
        .collect();
    assert_eq!(
        edges,
        [
            ("a", "b", "src/a.rs", 2),
            ("a", "b", "src/a/inner.rs", 3),
            ("a", "c", "src/a/inner/deep.rs", 1),
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}
