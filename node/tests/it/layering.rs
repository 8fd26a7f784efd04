//! The node's modules depend on each other in layers: the ids and plain
//! values of `model` at the bottom, then storage, the domain model, the
//! state machines, Raft, the node and its services, the wire adapters, and
//! the servers at the top. A module
//! may use modules of lower layers only; a use of a higher layer is a back
//! edge, and back edges are what grow into import cycles.
//!
//! The test fails on any back edge, and on any cycle among modules of one
//! layer. It also pins which modules may name which crates.
//!
//! It reads the sources as text (`crate::`, `super::` and `self::` paths
//! outside comments and outside the file's test module), which is all the
//! module graph needs and keeps the test free of a Rust parser.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

/// Directories whose files are modules of their own in the graph; other
/// directories (storage, gateway, ingest) are one module each.
const SPLIT_DIRS: &[&str] = &["api", "group", "raft", "state_machine"];

/// Layers, lowest first. A module missing here fails the test, so a new
/// module must be placed.
const LAYERS: &[&[&str]] = &[
    // Ids and plain values, which every module may name, storage included.
    &["model"],
    &[
        "storage",
        "disk",
        "time",
        "failpoints",
        "call_layer",
        "state_machine::fields",
    ],
    // The domain model: topics, commands, record batches.
    &["raft::types", "raft::batch"],
    &[
        "config",
        "link_faults",
        "identity",
        "clock",
        "rejoin",
        "tls",
        "state_machine",
        "state_machine::meta",
        "state_machine::balance",
        "state_machine::partition",
        "state_machine::subscriptions",
    ],
    // One Raft group hosted on this node and the registry of them: what
    // Raft's transport and quiescence look groups up in.
    &["group", "group::proposal_order"],
    &[
        "raft",
        "raft::network",
        "raft::transport",
        "raft::quiesce",
        "raft::log_range",
    ],
    // What a group needs to take writes and serve reads, and token checks.
    &[
        "group::write",
        "group::membership",
        "api::read",
        "api::schema",
        "backfill",
        "auth",
        "metrics",
        "platform",
    ],
    &["node"],
    // Services over the node.
    &["ingest"],
    &["api", "api::forwarded", "api::request_id"],
    // The client API without a wire format.
    &["api::service"],
    // Push delivery, over the service.
    &["push"],
    // Wire adapters.
    &["api::authenticate_first"],
    &["api::grpc", "gateway", "health"],
    &["server"],
];

/// Crates only some modules may name: (crate, module prefixes allowed).
const CRATE_HOMES: &[(&str, &[&str])] = &[
    ("rocksdb", &["storage"]),
    ("axum", &["gateway", "server"]),
    ("axum_server", &["server"]),
];

/// Crates some modules must not name: (crate, module prefixes refused).
const CRATE_BANS: &[(&str, &[&str])] = &[
    (
        "tonic",
        &[
            "storage",
            "state_machine",
            "model",
            "raft::types",
            "raft::batch",
            // The gateway calls the service, never the gRPC one.
            "gateway",
        ],
    ),
    (
        "raftstream_proto",
        &[
            "storage",
            "state_machine",
            "model",
            "raft::types",
            "raft::batch",
        ],
    ),
    // The service and the gateway are wire-free: error codes, but no
    // protobuf.
    ("raftstream_proto::v1", &["api::service", "gateway"]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph module a source file belongs to, or `None` for the crate
/// roots.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    Some(collapse(&parts))
}

/// `["api", "grpc", "ingest"]` → `api::grpc`; `["storage", "keys"]` →
/// `storage`.
fn collapse(parts: &[String]) -> String {
    if parts.len() > 1 && SPLIT_DIRS.contains(&parts[0].as_str()) {
        format!("{}::{}", parts[0], parts[1])
    } else {
        parts[0].clone()
    }
}

/// Whether `dir/name` is a module of its own (a file or a directory).
fn is_submodule(dir: &str, name: &str) -> bool {
    let base = src_dir().join(dir);
    base.join(format!("{name}.rs")).exists() || base.join(name).join("mod.rs").exists()
}

/// The module a path names, from its first segments after `crate::`.
fn target(segments: &[&str]) -> Option<String> {
    let first = *segments.first()?;
    if first.is_empty() {
        return None;
    }
    if SPLIT_DIRS.contains(&first)
        && let Some(second) = segments.get(1)
        && is_submodule(first, second)
    {
        return Some(format!("{first}::{second}"));
    }
    Some(first.to_string())
}

/// A production line of a source file.
#[derive(Debug)]
struct Line<'a> {
    number: usize,
    text: &'a str,
    /// Inside an inline `mod name { ... }`, where `super::` is the file's
    /// own module rather than its parent.
    in_inline_module: bool,
}

/// The lines of a file that are production code: up to its top-level
/// test module, without comment lines.
fn production_lines(text: &str) -> Vec<Line<'_>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut depth = 0usize;
    // The brace depths at which inline modules opened.
    let mut inline_modules: Vec<usize> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let starts_tests = *line == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .take(2)
                .any(|l| l.starts_with("mod tests") || l.starts_with("pub mod tests"));
        if starts_tests {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let opens_module = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .starts_with("mod ")
            && trimmed.ends_with('{');
        if opens_module {
            inline_modules.push(depth);
        }
        out.push(Line {
            number: i + 1,
            text: line,
            in_inline_module: !inline_modules.is_empty(),
        });
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if inline_modules.last() == Some(&depth) {
                        inline_modules.pop();
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The path segments after each occurrence of `prefix` in `line`.
fn paths_after<'a>(line: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").collect());
    }
    out
}

/// Whether `line` names `watched`: a crate, or a path inside one
/// (`raftstream_proto::v1`).
fn names(line: &str, watched: &str) -> bool {
    let (root, inner) = watched.split_once("::").unwrap_or((watched, ""));
    let inner: Vec<&str> = inner.split("::").filter(|s| !s.is_empty()).collect();
    paths_after(line, &format!("{root}::"))
        .iter()
        .any(|s| !s.is_empty() && s.starts_with(&inner))
}

/// Where a use of another module was seen first.
type Edges = BTreeMap<(String, String), String>;

struct Sources {
    edges: Edges,
    /// (crate, module) → where the module names the crate first.
    crates: BTreeMap<(String, String), String>,
}

fn read_sources() -> Sources {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges = Edges::new();
    let mut crates = BTreeMap::new();
    let watched: BTreeSet<&str> = CRATE_HOMES
        .iter()
        .chain(CRATE_BANS)
        .map(|(c, _)| *c)
        .collect();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap().to_path_buf();
        let Some(from) = module_of(&relative) else {
            continue;
        };
        let parts: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        // `super::` in `api/grpc.rs` is `api`; in `api/grpc/ingest.rs` it
        // is `api::grpc`; `self::` in `api/mod.rs` is `api`.
        let is_mod_rs = parts.last().is_some_and(|p| p == "mod");
        let own: Vec<String> = if is_mod_rs {
            parts[..parts.len() - 1].to_vec()
        } else {
            parts.clone()
        };
        let parent: Vec<String> = own[..own.len().saturating_sub(1)].to_vec();
        let text = std::fs::read_to_string(&file).unwrap();
        for Line {
            number,
            text: line,
            in_inline_module,
        } in production_lines(&text)
        {
            let at = format!("{}:{number}", relative.display());
            let mut named = Vec::new();
            for segments in paths_after(line, "crate::") {
                named.extend(target(&segments));
            }
            let super_base = if in_inline_module { &own } else { &parent };
            for (prefix, base) in [("super::", super_base), ("self::", &own)] {
                for segments in paths_after(line, prefix) {
                    let mut full: Vec<&str> = base.iter().map(String::as_str).collect();
                    full.extend(segments);
                    named.extend(target(&full));
                }
            }
            for to in named {
                if to != from {
                    edges
                        .entry((from.clone(), to))
                        .or_insert_with(|| at.clone());
                }
            }
            for krate in &watched {
                if names(line, krate) {
                    crates
                        .entry((krate.to_string(), from.clone()))
                        .or_insert_with(|| at.clone());
                }
            }
        }
    }
    Sources { edges, crates }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn under(module: &str, prefix: &str) -> bool {
    module == prefix || module.starts_with(&format!("{prefix}::"))
}

/// A cycle among `edges`, if there is one, as the modules along it.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        at: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(at, 1);
        path.push(at);
        for to in next.get(at).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|m| m == to).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|m| m.to_string()).collect();
                    cycle.push(to.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(to, next, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(at, 2);
        None
    }
    let starts: Vec<&str> = next.keys().copied().collect();
    for start in starts {
        if state.get(start).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(start, &next, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn every_module_has_a_layer() {
    let sources = read_sources();
    let modules: BTreeSet<&String> = sources.edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let unplaced: Vec<&&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in LAYERS (tests/it/layering.rs): {unplaced:?}"
    );
}

#[test]
fn modules_use_only_lower_layers_and_form_no_cycle() {
    let sources = read_sources();
    let mut problems = Vec::new();
    let mut back_edges = Vec::new();
    let mut kept = BTreeSet::new();
    for ((from, to), at) in &sources.edges {
        let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) else {
            continue;
        };
        if to_layer > from_layer {
            back_edges.push(format!("    {from} -> {to} ({at})"));
        }
        kept.insert((from.clone(), to.clone()));
    }
    if !back_edges.is_empty() {
        problems.push(format!(
            "uses of a higher layer (move the code down, or pass what it needs in):\n{}",
            back_edges.join("\n")
        ));
    }
    if let Some(cycle) = find_cycle(&kept) {
        let hops: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let at = &sources.edges[&(w[0].clone(), w[1].clone())];
                format!("{} -> {} ({at})", w[0], w[1])
            })
            .collect();
        problems.push(format!("an import cycle: {}", hops.join(", ")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn crates_are_named_only_where_they_belong() {
    let sources = read_sources();
    let mut problems = Vec::new();
    for ((krate, module), at) in &sources.crates {
        if let Some((_, homes)) = CRATE_HOMES.iter().find(|(c, _)| c == krate)
            && !homes.iter().any(|h| under(module, h))
        {
            problems.push(format!("{module} names {krate} ({at}); only {homes:?} may"));
        }
        if let Some((_, banned)) = CRATE_BANS.iter().find(|(c, _)| c == krate)
            && banned.iter().any(|b| under(module, b))
        {
            problems.push(format!("{module} must not name {krate} ({at})"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_uses_and_skips_comments_and_tests() {
    let text = "use crate::raft::types::NodeId;\n// use crate::node::Node;\nfn f() { super::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::gateway::Gateway;\n}\n";
    let lines = production_lines(text);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let paths = paths_after(lines[0].text, "crate::");
    assert_eq!(paths, vec![vec!["raft", "types", "NodeId"]]);
    assert_eq!(
        target(&paths[0]).as_deref(),
        Some("raft::types"),
        "raft's files are modules of their own"
    );
    assert_eq!(
        target(&["storage", "keys", "x"]).as_deref(),
        Some("storage")
    );
    // `super::` inside an inline module is the file's own module.
    let nested = production_lines("mod codec {\n    use super::Token;\n}\nuse super::Other;\n");
    let inline: Vec<bool> = nested.iter().map(|l| l.in_inline_module).collect();
    assert_eq!(inline, vec![true, true, true, false]);
    // `mycrate::` is not `crate::`.
    assert!(paths_after("use mycrate::x;", "crate::").is_empty());
    assert!(names(
        "use raftstream_proto::v1 as pb;",
        "raftstream_proto::v1"
    ));
    assert!(!names(
        "use raftstream_proto::ErrorCode;",
        "raftstream_proto::v1"
    ));
    assert!(names(
        "use raftstream_proto::ErrorCode;",
        "raftstream_proto"
    ));
    let cycle = find_cycle(
        &[("a", "b"), ("b", "c"), ("c", "a")]
            .iter()
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect(),
    );
    assert_eq!(cycle.map(|c| c.len()), Some(4));
    assert!(find_cycle(&[("a".to_string(), "b".to_string())].into_iter().collect()).is_none());
}
