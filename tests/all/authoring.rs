//! `slipway new strategy|hook` as an author runs it: for each language the project builds
//! with the command its README gives, simulates, and passes its own scenario file.

use std::path::Path;
use std::process::Command;

use crate::cli::{slipway, stderr, stdout};
use crate::runner::unique_dir;

/// Runs `command` in `dir`, failing the test with its output if it fails.
fn run(dir: &Path, command: &str) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        // The project builds on its own, not as part of this workspace's build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{command}` in {} failed:\n{}{}",
        dir.display(),
        stdout(&output),
        stderr(&output)
    );
}

/// Creates a `kind` (strategy or hook) in `lang`, builds it as its README says, runs its
/// scenarios, and simulates it.
fn new_project_builds_and_passes_its_scenarios(kind: &str, lang: &str, build: &str) {
    let root = unique_dir(&format!("new-{kind}-{lang}"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("my-project");
    let new = [
        "new",
        kind,
        "my-project",
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ];
    let output = slipway(&new);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("slipway test scenarios.toml"),
        "{}",
        stdout(&output)
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for line in build.lines() {
        assert!(readme.contains(line), "the README does not say {line:?}:\n{readme}");
    }
    assert!(!readme.contains("{{"), "{readme}");
    run(&dir, build);
    let scenarios = dir.join("scenarios.toml");
    let output = slipway(&["test", scenarios.to_str().unwrap()]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let count = if kind == "strategy" { 3 } else { 2 };
    assert!(
        stdout(&output).contains(&format!("{count} scenarios: {count} passed, 0 failed")),
        "{}",
        stdout(&output)
    );
    // The module the scenario file names is the build's.
    let key = if kind == "strategy" {
        "strategy = \""
    } else {
        "module = \""
    };
    let wasm = std::fs::read_to_string(&scenarios)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|s| s.trim_end_matches('"').to_string()))
        .unwrap();
    let wasm = dir.join(wasm);
    // What it prints reaches the rollout's log.
    let (output, printed) = if kind == "strategy" {
        let output = slipway(&["simulate", "--strategy", wasm.to_str().unwrap(), "--replicas", "4"]);
        (output, "[info] 4 of 4 ready on revision 2".to_string())
    } else {
        let hook = format!("pre={}", wasm.display());
        let output = slipway(&[
            "simulate",
            "--strategy",
            "builtin:rolling",
            "--hook",
            &hook,
            "--hook-params",
            "pre={\"command\": [\"./migrate\"]}",
        ]);
        (output, "[info] my-project: running".to_string())
    };
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).contains(&printed), "{}", stdout(&output));
    // A second `new` into the same place is refused, and nothing is overwritten.
    let again = slipway(&new);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("exists and is not empty"), "{}", stderr(&again));
}

#[test]
fn a_new_rust_strategy_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("strategy", "rust", "cargo build --release");
}

#[test]
fn a_new_python_strategy_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("strategy", "python", "./build.sh");
}

#[test]
fn a_new_javascript_strategy_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("strategy", "js", "npm ci\nnpm run build");
}

#[test]
fn a_new_c_strategy_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("strategy", "c", "make");
}

#[test]
fn a_new_rust_hook_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("hook", "rust", "cargo build --release");
}

#[test]
fn a_new_python_hook_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("hook", "python", "./build.sh");
}

#[test]
fn a_new_javascript_hook_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("hook", "js", "npm ci\nnpm run build");
}

#[test]
fn a_new_c_hook_builds_simulates_and_passes_its_scenarios() {
    new_project_builds_and_passes_its_scenarios("hook", "c", "make");
}

#[test]
fn a_bad_name_or_language_is_refused_with_the_reason() {
    let output = slipway(&["new", "strategy", "My_Rollout", "--lang", "rust"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is not a strategy name"),
        "{}",
        stderr(&output)
    );
    let output = slipway(&["new", "hook", "My-Hook", "--lang", "c"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("is not a hook name"), "{}", stderr(&output));
    let output = slipway(&["new", "strategy", "x", "--lang", "cobol"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("possible values: rust, python, js, c"),
        "{}",
        stderr(&output)
    );
}
