//! Tidy rules that keep the workspace's shape: crates depend one way
//! (`sipshard → shards → parser`, `bench → parser`, and `sipshard → bench` for
//! the demo only: the load generator never sees the server's crates), read
//! from `cargo metadata`.

use std::process::Command;

use serde_json::Value;

/// Workspace crates each crate may depend on (normal and dev dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sipshard-parser", &[]),
    ("sipshard-shards", &["sipshard-parser"]),
    ("sipshard-bench", &["sipshard-parser"]),
    ("sipshard", &["sipshard-parser", "sipshard-shards", "sipshard-bench"]),
];

#[test]
fn workspace_crates_depend_one_way() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages array");
    assert_eq!(packages.len(), ALLOWED.len(), "a new workspace crate needs a line in ALLOWED");
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        let allowed = ALLOWED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).expect("package listed in ALLOWED");
        for dep in package["dependencies"].as_array().expect("dependencies array") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            if dep_name.starts_with("sipshard") {
                assert!(allowed.contains(&dep_name), "{name} must not depend on {dep_name}");
            }
        }
    }
}

/// The README's test command, which CI must run verbatim.
fn readme_test_command() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let mut lines = readme.lines();
    lines.find(|l| l.starts_with("Run the tests")).expect("README has a 'Run the tests' paragraph");
    let command = lines.find(|l| l.starts_with("    ")).expect("an indented command follows 'Run the tests'");
    command.trim().to_owned()
}

#[test]
fn ci_runs_the_readme_test_command() {
    let command = readme_test_command();
    assert!(command.starts_with("cargo nextest run"), "unexpected test command: {command}");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == command), ".ci/run must run `{command}` verbatim");
}
