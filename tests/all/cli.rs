//! The `slipway simulate` command as a user runs it.

use std::process::{Command, Output};

use crate::support::workspace;

pub fn slipway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .env("SLIPWAY_CACHE_DIR", workspace().join("target/test-module-cache"))
        .output()
        .expect("run slipway")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn simulate_rolling_prints_a_timeline_and_succeeds() {
    let output = slipway(&["simulate", "--strategy", "builtin:rolling", "--replicas", "10"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    for needle in [
        "rollout   simulated: revision 1 → revision 2, 10 replicas",
        "scale     revision 2: 0 → 3",
        "route     r1=",
        "SUCCEEDED 10 of 10 replicas on revision 2",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn a_failed_rollout_exits_non_zero_and_says_it_rolled_back() {
    let output = slipway(&[
        "simulate",
        "--strategy",
        "builtin:blue-green",
        "--replicas",
        "3",
        "--fail-readiness",
        "1",
        "--params",
        r#"{"timeout-seconds": 60}"#,
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("ROLLED BACK"), "{text}");
    assert!(text.contains("revision 1 serves all traffic at 3 replicas"), "{text}");
}

#[test]
fn json_output_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let output = slipway(&[
            "simulate",
            "--strategy",
            "builtin:canary",
            "--replicas",
            "5",
            "--crash",
            "0.3",
            "--seed",
            seed,
            "--output",
            "json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let first = run("42");
    assert_eq!(first, run("42"));
    assert_ne!(first, run("43"));
    let document: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(document["outcome"], "succeeded");
    assert_eq!(document["final"]["2"]["weight"], 256);
    assert!(document["events"].as_array().unwrap().len() > 10);
}

#[test]
fn a_failing_hook_aborts_the_rollout() {
    let output = slipway(&["simulate", "--strategy", "builtin:recreate", "--fail-hook", "mid"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("hook      mid: failed"), "{text}");
    assert!(text.contains("ROLLED BACK"), "{text}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    for (args, needle) in [
        (vec!["--strategy", "builtin:nope"], "no built-in strategy \"nope\""),
        (
            vec!["--strategy", "/does/not/exist.wasm"],
            "cannot read /does/not/exist.wasm",
        ),
        (
            vec!["--strategy", "builtin:rolling", "--params", "{oops"],
            "--params is not valid JSON",
        ),
        (
            vec!["--strategy", "builtin:rolling", "--fail-readiness", "2"],
            "fraction from 0 to 1",
        ),
        (vec!["--strategy", "Cargo.toml"], "not WebAssembly"),
    ] {
        let mut full = vec!["simulate"];
        full.extend(args.iter());
        let output = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(&full)
            .current_dir(workspace())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(needle),
            "{needle:?} not in {}",
            stderr(&output)
        );
    }
}
