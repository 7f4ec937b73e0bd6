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

/// A hook example's scenario file, run against the hook's fresh build.
fn hook_example(name: &str, point: &str, extra: &[&str]) -> std::process::Output {
    let wasm = guest(&format!("example-hook-{name}"));
    let file = workspace().join(format!("examples/hooks/{name}/scenarios.toml"));
    let hook = format!("{point}={}", wasm.display());
    let mut args = vec!["test", file.to_str().unwrap(), "--hook", &hook];
    args.extend(extra);
    slipway(&args)
}

#[test]
fn hooks_run_their_real_modules_against_the_scenarios_fakes() {
    // migrate's exec is answered by each scenario's fake: success, exit 1, a hang killed at
    // its timeout on the simulated clock.
    let output = hook_example("migrate", "pre", &["--verbose"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.contains("3 scenarios: 3 passed"), "{text}");
    assert!(
        text.contains("exec ./migrate --up → exit 0: migrated 3 tables"),
        "{text}"
    );
    assert!(text.contains("exec ./migrate --up → killed"), "{text}");
    // notify's webhook answers 204, 500 and not at all; its policy is ignore.
    let output = hook_example("notify", "post", &["--verbose"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.contains("3 scenarios: 3 passed"), "{text}");
    assert!(
        text.contains("hook POST http://chat.internal:8080/hooks/deploys: answered 500"),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
}

#[test]
fn a_call_no_fake_answers_or_a_grant_missing_fails_the_hook_saying_what_to_add() {
    let dir = crate::runner::unique_dir("scenarios");
    std::fs::create_dir_all(&dir).unwrap();
    let migrate = guest("example-hook-migrate");
    let notify = guest("example-hook-notify");
    let file = dir.join("hooks.toml");
    std::fs::write(
        &file,
        format!(
            r#"strategy = "builtin:rolling"

[hooks.pre]
module = "{}"
params = {{ command = ["./seed"] }}
grants = ["exec"]

[hooks.post]
module = "{}"
params = {{ url = "http://chat.internal/x" }}

[[scenario]]
name = "no fake for ./seed"
exec = [{{ args = ["./migrate"] }}]
expect = {{ hooks = {{ pre = "succeeded" }} }}

[[scenario]]
name = "not granted"
exec = [{{ args = ["./seed"] }}]
expect = {{ outcome = "succeeded", hooks = {{ post = "succeeded" }} }}
"#,
            migrate.display(),
            notify.display()
        ),
    )
    .unwrap();
    let output = slipway(&["test", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}{}", stderr(&output));
    assert!(text.contains("2 scenarios: 0 passed, 2 failed"), "{text}");
    assert!(
        text.contains("hooks.pre = \"succeeded\": it failed (timeline line"),
        "{text}"
    );
    assert!(
        text.contains("no fake in this scenario answers it; add one, e.g. [[scenario.exec]] args = [\"./seed\"]"),
        "{text}"
    );
    // A simulation enforces grants as a runner does: post may not reach chat.internal.
    assert!(
        text.contains("this hook may not reach that host; grant it with \"http:chat.internal\""),
        "{text}"
    );
}

#[test]
fn hook_mistakes_in_scenario_files_are_exit_2_with_the_reason() {
    let dir = crate::runner::unique_dir("scenarios");
    std::fs::create_dir_all(&dir).unwrap();
    let strategy = guest("example-strategy-waves");
    let cases = [
        (
            "[hooks.pre]\nmodule = \"migrate\"\n",
            "expect = { outcome = \"succeeded\" }",
            "hooks.pre.module: \"migrate\" is not a path to a .wasm component",
        ),
        (
            "[hooks.pre]\nmodule = \"m.wasm\"\ngrants = [\"exce\"]\n",
            "expect = { outcome = \"succeeded\" }",
            "hooks.pre.grants: unknown grant `exce`; did you mean `exec`?",
        ),
        (
            "",
            "expect = { hooks = { deploy = \"succeeded\" } }",
            "expect.hooks: \"deploy\" is not a hook point",
        ),
        (
            "",
            "expect = { hooks = { pre = \"ok\" } }",
            "expect.hooks.pre: \"ok\" is not how a hook ends",
        ),
        (
            "",
            "http = [{ url = \"https://x.example/\" }]\nexpect = { outcome = \"succeeded\" }",
            "http fake 1: url \"https://x.example/\" is not an http:// URL",
        ),
        (
            &format!("[hooks.pre]\nmodule = \"{}\"\n", strategy.display()),
            "expect = { outcome = \"succeeded\" }",
            "is a strategy component, not a hook",
        ),
    ];
    for (hooks, scenario, says) in cases {
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            format!("strategy = \"builtin:rolling\"\n{hooks}\n[[scenario]]\nname = \"x\"\n{scenario}\n"),
        )
        .unwrap();
        let output = slipway(&["test", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{hooks}{scenario}: {}", stdout(&output));
        let error = stderr(&output);
        assert!(error.contains(says), "{hooks}{scenario}: {error}");
    }
}

#[test]
fn simulate_runs_a_real_hook_whose_calls_out_succeed() {
    let notify = guest("example-hook-notify");
    let hook = format!("post={}", notify.display());
    let output = slipway(&[
        "simulate",
        "--strategy",
        "builtin:recreate",
        "--hook",
        &hook,
        "--hook-params",
        "post={\"url\": \"http://chat.internal/deploys\"}",
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        text.contains("hook POST http://chat.internal/deploys: answered 200"),
        "{text}"
    );
    assert!(text.contains("post: succeeded"), "{text}");
    // Its parameters are the hook's to check: none is a failed hook, and a failed rollout.
    let output = slipway(&["simulate", "--strategy", "builtin:recreate", "--hook", &hook]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("post: failed: notify: params.url is required"),
        "{}",
        stdout(&output)
    );
    let output = slipway(&["simulate", "--strategy", "builtin:recreate", "--hook-params", "pre={}"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no --hook pre=PATH.wasm to give them to"),
        "{}",
        stderr(&output)
    );
}
