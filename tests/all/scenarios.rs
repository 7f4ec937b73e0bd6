//! `slipway test` as a strategy author runs it: the built-ins' own scenario files, a
//! scenario that breaks (named, with its timeline line, exit 1, JUnit), and files with
//! mistakes (exit 2, saying what is wrong).

use crate::cli::{slipway, stderr, stdout};
use crate::support::{guest, workspace};

#[test]
fn the_builtins_keep_what_their_scenario_files_promise() {
    let junit = workspace().join("target/e2e/scenarios-junit.xml");
    let files: Vec<String> = ["rolling", "recreate", "blue-green", "canary"]
        .iter()
        .map(|s| {
            workspace()
                .join(format!("strategies/{s}/scenarios.toml"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["test", "--junit", junit.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    let output = slipway(&args);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.contains("14 scenarios: 14 passed, 0 failed"), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"14\" failures=\"0\""), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 14, "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), 4, "{xml}");
}

#[test]
fn an_example_strategy_is_tested_with_its_own_build() {
    let wasm = guest("example-strategy-waves");
    let scenarios = workspace().join("examples/strategies/rust-waves/scenarios.toml");
    let output = slipway(&[
        "test",
        scenarios.to_str().unwrap(),
        "--strategy",
        wasm.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("2 scenarios: 2 passed"), "{}", stdout(&output));
    // Without --strategy, the file names none: said so, exit 2.
    let output = slipway(&["test", scenarios.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no strategy; add strategy ="),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_broken_assertion_names_its_timeline_line_exits_1_and_fails_in_junit() {
    let dir = crate::runner::unique_dir("scenarios");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("recreate.toml");
    // Recreate stops every old instance first: nothing is ready for a while.
    std::fs::write(
        &file,
        "strategy = \"builtin:recreate\"\n\n[[scenario]]\nname = \"keeps one ready\"\nreplicas = 3\nexpect = { outcome = \"succeeded\", min-ready = 1 }\n\n[[scenario]]\nname = \"succeeds\"\nreplicas = 3\nexpect = { outcome = \"succeeded\" }\n",
    )
    .unwrap();
    let junit = dir.join("junit.xml");
    let output = slipway(&["test", file.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  ") && text.contains("› keeps one ready"), "{text}");
    assert!(text.contains("ok    ") && text.contains("› succeeds"), "{text}");
    assert!(text.contains("2 scenarios: 1 passed, 1 failed"), "{text}");
    let marker = "min-ready = 1: ready instances fell to 0 (timeline line ";
    let at = text.find(marker).unwrap_or_else(|| panic!("{text}"));
    let line: usize = text[at + marker.len()..].split(')').next().unwrap().parse().unwrap();
    // The marked line is that line of `slipway simulate`'s timeline for the same inputs.
    let marked = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("> {line:>4} ")))
        .unwrap_or_else(|| panic!("no line marked {line}:\n{text}"));
    let simulated = stdout(&slipway(&[
        "simulate",
        "--strategy",
        "builtin:recreate",
        "--replicas",
        "3",
    ]));
    let same = simulated.lines().nth(line - 1).unwrap();
    assert!(marked.ends_with(same), "{marked:?} is not line {line} of\n{simulated}");
    assert!(same.contains("r1 0/0 ready"), "{same}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"min-ready = 1: ready instances fell to 0\">"),
        "{xml}"
    );
}

#[test]
fn mistakes_in_scenario_files_are_exit_2_with_the_reason() {
    let dir = crate::runner::unique_dir("scenarios");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("expect = { min-redy = 2 }", "unknown field `min-redy`"),
        (
            "faults = { crash = 1.5 }\nexpect = { min-ready = 1 }",
            "faults.crash is a fraction",
        ),
        ("", "no expect table"),
    ];
    for (body, says) in cases {
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            format!("strategy = \"builtin:rolling\"\n[[scenario]]\nname = \"x\"\n{body}\n"),
        )
        .unwrap();
        let output = slipway(&["test", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{body}");
        let error = stderr(&output);
        assert!(error.contains(says) && error.contains("bad.toml"), "{body}: {error}");
    }
    let output = slipway(&["test", dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read"), "{}", stderr(&output));
    let file = dir.join("wrong.toml");
    std::fs::write(
        &file,
        "strategy = \"builtin:nope\"\n[[scenario]]\nname = \"x\"\nexpect = { min-ready = 1 }\n",
    )
    .unwrap();
    let output = slipway(&["test", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot load the strategy builtin:nope"),
        "{}",
        stderr(&output)
    );
}
