//! The rules over the module graph, as a pure function of its edges: no cycle, nothing
//! imports the composition root, every import goes down the layer table, and the table names
//! exactly the modules there are.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Module `from` names module `to` (`crate::to…`) at `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Edge {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) file: String,
    pub(super) line: usize,
}

/// All the places one module names another: the first of them, and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Import {
    pub(super) first: Edge,
    pub(super) places: usize,
}

/// `from -> to -> import`, one entry per pair of modules.
pub(super) type Graph = BTreeMap<String, BTreeMap<String, Import>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Violation {
    /// The imports of a cycle `a -> b -> … -> a`, starting at its alphabetically first module.
    Cycle(Vec<Import>),
    /// Something names the composition root, which only `lib.rs` and `main.rs` may.
    RootImported(Import),
    /// An import to the same layer or a higher one.
    NotDownward {
        import: Import,
        from_layer: u8,
        to_layer: u8,
    },
    /// A module in `src/` that the layer table does not list.
    NotInTable(String),
    /// A name in the layer table with no module in `src/`.
    NoSuchModule(String),
    ListedTwice(String),
}

/// Groups edges by pair of modules, keeping the first place (by file, then line) each pair
/// occurs. Edges from a module to itself are dropped.
pub(super) fn graph(edges: &[Edge]) -> Graph {
    let mut sorted: Vec<&Edge> = edges.iter().filter(|e| e.from != e.to).collect();
    sorted.sort();
    let mut graph = Graph::new();
    for edge in sorted {
        graph
            .entry(edge.from.clone())
            .or_default()
            .entry(edge.to.clone())
            .and_modify(|import| import.places += 1)
            .or_insert_with(|| Import {
                first: edge.clone(),
                places: 1,
            });
    }
    graph
}

/// Every rule broken by `edges` between `modules`, given the layer table and the name of the
/// composition root: cycles first, then imports of the root, then the table, then layering.
pub(super) fn check(
    modules: &BTreeSet<String>,
    edges: &[Edge],
    layers: &[(&str, u8)],
    root: &str,
) -> Vec<Violation> {
    let graph = graph(edges);
    let mut found = cycles(&graph);
    found.extend(
        imports(&graph)
            .filter(|import| import.first.to == root)
            .map(|import| Violation::RootImported(import.clone())),
    );
    found.extend(table(modules, layers));
    found.extend(layering(&graph, layers, root));
    found
}

fn imports(graph: &Graph) -> impl Iterator<Item = &Import> {
    graph.values().flat_map(BTreeMap::values)
}

/// For each import `a -> b` on a cycle, the shortest cycle through it, each cycle reported
/// once. So every import that takes part in a cycle is shown, without listing the
/// exponentially many cycles a tangled graph can have. Shortest cycles come first.
fn cycles(graph: &Graph) -> Vec<Violation> {
    let mut rings: BTreeSet<(usize, Vec<&str>)> = BTreeSet::new();
    for import in imports(graph) {
        let (from, to) = (import.first.from.as_str(), import.first.to.as_str());
        let Some(back) = shortest_path(graph, to, from) else {
            continue;
        };
        // `from`, then `to … from` without the final `from`: the ring of modules in order.
        let mut ring = vec![from];
        ring.extend(&back[..back.len() - 1]);
        let start = (0..ring.len()).min_by_key(|&i| ring[i]).unwrap_or(0);
        ring.rotate_left(start);
        rings.insert((ring.len(), ring));
    }
    rings
        .into_iter()
        .map(|(len, ring)| {
            let steps = (0..len).map(|i| graph[ring[i]][ring[(i + 1) % len]].clone());
            Violation::Cycle(steps.collect())
        })
        .collect()
}

/// The modules on a shortest path `start -> … -> goal`, both ends included.
fn shortest_path<'g>(graph: &'g Graph, start: &'g str, goal: &str) -> Option<Vec<&'g str>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    // Each module is queued at most once, so this ends.
    while let Some(at) = queue.pop_front() {
        if at == goal {
            let mut path = vec![at];
            let mut step = at;
            while step != start {
                step = came_from[step];
                path.push(step);
            }
            path.reverse();
            return Some(path);
        }
        for next in graph.get(at).into_iter().flat_map(BTreeMap::keys) {
            if next != start && !came_from.contains_key(next.as_str()) {
                came_from.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
}

fn table(modules: &BTreeSet<String>, layers: &[(&str, u8)]) -> Vec<Violation> {
    let listed: BTreeSet<&str> = layers.iter().map(|(name, _)| *name).collect();
    let mut found: Vec<Violation> = modules
        .iter()
        .filter(|m| !listed.contains(m.as_str()))
        .map(|m| Violation::NotInTable(m.clone()))
        .collect();
    found.extend(
        listed
            .iter()
            .filter(|name| !modules.contains(**name))
            .map(|name| Violation::NoSuchModule((*name).to_owned())),
    );
    let mut seen = BTreeSet::new();
    for (name, _) in layers {
        if !seen.insert(*name) {
            found.push(Violation::ListedTwice((*name).to_owned()));
        }
    }
    found
}

/// Imports that do not go strictly down. Imports of the root are reported as such, and
/// imports of or from a module missing from the table have no layer to compare.
fn layering(graph: &Graph, layers: &[(&str, u8)], root: &str) -> Vec<Violation> {
    let layer_of = |module: &str| layers.iter().find(|(m, _)| *m == module).map(|(_, l)| *l);
    imports(graph)
        .filter(|import| import.first.to != root)
        .filter_map(|import| {
            let from_layer = layer_of(&import.first.from)?;
            let to_layer = layer_of(&import.first.to)?;
            (from_layer <= to_layer).then(|| Violation::NotDownward {
                import: import.clone(),
                from_layer,
                to_layer,
            })
        })
        .collect()
}

impl Import {
    /// Where the import is: `src/x.rs:12`, with how many other places there are.
    fn site(&self) -> String {
        let Edge { file, line, .. } = &self.first;
        match self.places {
            1 => format!("{file}:{line}"),
            n => format!("{file}:{line} (and {} more)", n - 1),
        }
    }
}

impl fmt::Display for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Edge { from, to, .. } = &self.first;
        write!(f, "{from} -> {to} at {}", self.site())
    }
}

/// A one-line count of each kind of violation, for the top of a long report.
pub(super) fn summary(violations: &[Violation]) -> String {
    let count = |kind: fn(&Violation) -> bool| violations.iter().filter(|v| kind(v)).count();
    let kinds = [
        (count(|v| matches!(v, Violation::Cycle(_))), "cycles"),
        (
            count(|v| matches!(v, Violation::RootImported(_))),
            "imports of the root",
        ),
        (
            count(|v| matches!(v, Violation::NotDownward { .. })),
            "imports not going down the layers",
        ),
        (
            count(|v| {
                matches!(
                    v,
                    Violation::NotInTable(_)
                        | Violation::NoSuchModule(_)
                        | Violation::ListedTwice(_)
                )
            }),
            "differences between LAYERS and src/",
        ),
    ];
    let parts: Vec<String> = kinds
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    parts.join(", ")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Cycle(steps) => {
                write!(f, "cycle: ")?;
                for step in steps {
                    write!(f, "{} -> ", step.first.from)?;
                }
                let back = steps.first().map_or("", |s| s.first.from.as_str());
                write!(f, "{back}")?;
                for step in steps {
                    write!(f, "\n      {step}")?;
                }
                Ok(())
            }
            Violation::RootImported(import) => write!(
                f,
                "imports the composition root: {import}; only lib.rs and main.rs may name it"
            ),
            Violation::NotDownward {
                import,
                from_layer,
                to_layer,
            } => {
                let how = if from_layer == to_layer {
                    "same-layer"
                } else {
                    "upward"
                };
                let Edge { from, to, .. } = &import.first;
                write!(
                    f,
                    "{how} import: {from} (layer {from_layer}) -> {to} (layer {to_layer}) at {}; \
                     imports must go to a lower layer",
                    import.site()
                )
            }
            Violation::NotInTable(module) => write!(
                f,
                "module `{module}` is in src/ but not in LAYERS: add it to the table with its layer"
            ),
            Violation::NoSuchModule(module) => write!(
                f,
                "`{module}` is in LAYERS but src/ has no {module}.rs or {module}/: \
                 create the module or remove it from the table"
            ),
            Violation::ListedTwice(module) => {
                write!(f, "`{module}` is in LAYERS more than once: keep one")
            }
        }
    }
}

/// The graph as `X -> Y, Z` lines, grouped by layer from the top down; modules not in the
/// table come last.
pub(super) fn render_graph(
    modules: &BTreeSet<String>,
    graph: &Graph,
    layers: &[(&str, u8)],
) -> String {
    let layer_of = |module: &str| layers.iter().find(|(m, _)| *m == module).map(|(_, l)| *l);
    let mut listed: Vec<(Option<u8>, &str)> =
        modules.iter().map(|m| (layer_of(m), m.as_str())).collect();
    listed.sort_by_key(|(layer, name)| (layer.is_none(), Reverse(*layer), *name));
    let mut out = String::new();
    let mut heading = None;
    for (layer, name) in listed {
        if heading != Some(layer) {
            heading = Some(layer);
            out.push_str(&match layer {
                Some(layer) => format!("layer {layer}\n"),
                None => "not in the layer table\n".to_owned(),
            });
        }
        let targets: Vec<&str> = graph
            .get(name)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .map(String::as_str)
            .collect();
        let targets = if targets.is_empty() {
            "(none)".to_owned()
        } else {
            targets.join(", ")
        };
        out.push_str(&format!("  {name} -> {targets}\n"));
    }
    out
}
