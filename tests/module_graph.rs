//! The library's top-level modules import each other without cycles (docs/architecture.md draws
//! the graph). Read from the sources: every `crate::<module>` path outside comments, including
//! the names of `use crate::{a, b::c}` groups, with the `#[cfg(test)]` modules set apart (a
//! unit test may build what its module only reads). `cargo test --test module_graph --
//! --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `src` without `//` comments (string contents are kept; none of them holds `crate::`).
fn strip_comments(src: &str) -> String {
    src.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `#[cfg(test)] mod name { ... }` blocks (brace-matched) out of `src`.
fn split_tests(src: &str) -> (String, String) {
    let (mut rest, mut tests) = (src.to_string(), String::new());
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = rest[at + 12..].trim_start();
        if !after.starts_with("mod ") {
            // A test-only item that is not a module: keep it with the tests as well.
            let end = rest[at..].find('\n').map_or(rest.len(), |i| at + i);
            tests.push_str(&rest[at..end]);
            rest.replace_range(at..end, "");
            continue;
        }
        let open = at + rest[at..].find('{').expect("a module body");
        let mut depth = 0usize;
        let mut end = open;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        tests.push_str(&rest[at..end]);
        rest.replace_range(at..end, "");
    }
    (rest, tests)
}

/// The top-level modules `src` names through `crate::`.
fn imports(src: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for item in body.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn visit(dir: &Path, root: &Path, graph: &mut Graph, tests: &mut Graph) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            if rel != "cli" {
                visit(&path, root, graph, tests);
            }
            continue;
        }
        if !rel.ends_with(".rs") || rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let module = rel
            .split(['/', '\\'])
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let src = strip_comments(&std::fs::read_to_string(&path).unwrap());
        let (code, test_code) = split_tests(&src);
        let mut uses = imports(&code);
        uses.remove(&module);
        graph.entry(module.clone()).or_default().extend(uses);
        let mut test_uses = imports(&test_code);
        test_uses.remove(&module);
        tests.entry(module).or_default().extend(test_uses);
    }
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn dfs(
        v: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == w).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(w.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = dfs(w, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in graph.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(v, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut graph, mut tests) = (Graph::new(), Graph::new());
    visit(&root, &root, &mut graph, &mut tests);
    // Only modules count (`crate::Result`, `crate::Dictionary` are lib.rs's re-exports).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut().chain(tests.values_mut()) {
        uses.retain(|m| modules.contains(m));
    }
    for (m, uses) in &graph {
        let only_tests: Vec<_> = tests[m].difference(uses).cloned().collect();
        let extra = if only_tests.is_empty() {
            String::new()
        } else {
            format!("   (tests also: {})", only_tests.join(", "))
        };
        let list: Vec<_> = uses.iter().cloned().collect();
        println!("{m:<11} -> {}{extra}", list.join(", "));
    }
    assert!(graph.len() >= 15, "read too few modules: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "an import cycle");
    // What the layout promises: evaluation and then the analyses on a model are the end of the
    // data's path (the analyses use evaluation's metrics, matching and plots; nothing else uses
    // either), and the model knows nothing of the clustering or of the pipeline that drives it.
    for (m, uses) in &graph {
        assert!(!uses.contains("analysis"), "{m} imports analysis");
        if m != "analysis" {
            assert!(!uses.contains("eval"), "{m} imports eval");
        }
        assert!(!uses.contains("cli"), "{m} imports the CLI");
    }
    assert!(
        !graph["model"].contains("pipeline"),
        "model imports pipeline"
    );
    assert!(!graph["sae"].contains("build"), "sae imports build");
    // The detector itself.
    let mut g = Graph::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        imports("use crate::{a::B, c}; x = crate::d::e(); crate::{f};"),
        ["a", "c", "d", "f"].map(String::from).into()
    );
}
