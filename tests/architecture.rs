//! The module rules of the architecture, checked: imports run one way. Each top-level module of
//! `src/` may name only the modules listed for it here (`crate::x` paths, in `use` lines or
//! inline). A new dependency is a decision: add it to the table with the reason, or move the
//! code it needs into a leaf both can use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the crate modules it may import. Leaves first; each row only names rows above it
/// or beside it, which is what makes the graph acyclic.
const RULES: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("metrics", &[]),
    ("stomp", &[]),
    ("web", &["util"]),
    ("sockjs", &["web", "util"]),
    ("policy", &["util"]),
    // `web` for the HTTP client a plugin's backend calls go out through.
    ("plugin", &["policy", "web", "util"]),
    ("broker", &["stomp", "util"]),
    ("history", &["broker", "util"]),
    ("config", &["history", "stomp", "web", "util"]),
    // The Redis backplane also keeps the shared store of user messages: it owns the Redis
    // layout, the connection and the liveness filter the store's presence read needs.
    ("cluster", &["broker", "history", "metrics", "util"]),
    // What a tenant hands its backend: the stream is written through the backplane.
    ("upstream", &["cluster", "config", "metrics", "web", "util"]),
    (
        "tenant",
        &[
            "broker", "cluster", "config", "history", "metrics", "plugin", "policy", "upstream",
            "web", "util",
        ],
    ),
    ("publish", &["broker", "metrics", "stomp", "tenant", "util"]),
    (
        "node",
        &[
            "broker", "cluster", "config", "history", "metrics", "publish", "session", "tenant",
            "util",
        ],
    ),
    // `config` and `upstream` for the items a session hands its tenant's backend.
    (
        "session",
        &[
            "broker", "config", "history", "metrics", "policy", "stomp", "tenant", "upstream",
            "util",
        ],
    ),
    (
        "connection",
        &["broker", "metrics", "node", "session", "stomp", "util"],
    ),
    (
        "transport",
        &[
            "broker",
            "config",
            "connection",
            "metrics",
            "node",
            "policy",
            "session",
            "sockjs",
            "tenant",
            "web",
            "util",
        ],
    ),
    (
        "http",
        &[
            "broker",
            "cluster",
            // The admin API takes and shows a tenant's settings.
            "config",
            "metrics",
            "node",
            "plugin",
            "publish",
            "tenant",
            "transport",
            "web",
            "util",
        ],
    ),
    ("server", &["http", "node", "plugin", "transport", "util"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`src/cluster/redis/keys.rs` → `cluster`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::NAME` named in `text`, comments included (a doc link is a dependency too).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not ours
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
        // `use crate::{a, b::c}`
        if rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in group.split(',') {
                let head: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !head.is_empty() {
                    found.insert(head);
                }
            }
        }
    }
    found
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rules: BTreeMap<&str, BTreeSet<&str>> = RULES
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut broken = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        // The crate root and the binary see everything; a module's own `tests.rs` may build
        // its fixtures from anywhere in the crate.
        if module == "lib" || module == "main" || file.ends_with("tests.rs") {
            continue;
        }
        let Some(allowed) = rules.get(module.as_str()) else {
            broken.push(format!(
                "{}: module '{module}' is not in the table of tests/architecture.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for dep in crate_paths(&text) {
            if dep != module && !allowed.contains(dep.as_str()) {
                broken.push(format!(
                    "{}: '{module}' may not import crate::{dep}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the module rules:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let found = crate_paths(
        "use crate::{web::json_error, util};\nlet x = crate::node::Node::new(); // mycrate::no",
    );
    let found: Vec<_> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["node", "util", "web"]);
}
