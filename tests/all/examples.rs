//! The example custom strategies, in Rust and Python, built from source and run through
//! `slipway simulate` exactly as their READMEs say.

use std::process::Command;

use crate::cli::{slipway, stdout};
use crate::support::{guest, workspace};

#[test]
fn the_rust_example_strategy_runs_in_the_simulator() {
    let wasm = guest("example-strategy-waves");
    let output = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--replicas",
        "6",
        "--params",
        r#"{"wave-size": 2}"#,
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("SUCCEEDED 6 of 6 replicas on revision 2 in 3 wave(s)"),
        "{text}"
    );
}

#[test]
fn the_python_example_strategy_builds_with_componentize_py_and_runs() {
    let dir = workspace().join("examples/strategies/python-waves");
    let build = Command::new("sh")
        .arg(dir.join("build.sh"))
        .output()
        .expect("run build.sh");
    assert!(
        build.status.success(),
        "building the Python example failed (is componentize-py installed? `pip install componentize-py==0.25.1`):\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = dir.join("out/strategy.wasm");
    let output = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--replicas",
        "4",
        "--params",
        r#"{"wave-size": 2}"#,
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("SUCCEEDED 4 of 4 replicas on revision 2"), "{text}");

    let bad = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--params",
        r#"{"wave-size": 0}"#,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("wave-size"), "{}", stdout(&bad));
}

#[test]
fn the_example_specs_are_valid() {
    let dir = workspace().join("examples/hello");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "Cargo.toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = slipway::spec::parse_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let container = path.file_name().is_some_and(|n| n == "slipway-container.toml");
            assert_eq!(spec.name, if container { "hello-container" } else { "hello" });
            assert_eq!(spec.container.is_some(), container, "{}", path.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

/// `npm ci` in the JavaScript example, once per test process.
fn js_toolchain() -> std::path::PathBuf {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = workspace().join("examples/strategies/js-waves");
    READY.get_or_init(|| {
        let install = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("run npm (Node.js 20 and npm are needed for the JavaScript example)");
        assert!(
            install.status.success(),
            "npm ci failed:\n{}",
            String::from_utf8_lossy(&install.stderr)
        );
    });
    dir
}

/// The JavaScript example, built once per test process: its component.
pub fn js_example() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = js_toolchain();
    BUILT.get_or_init(|| {
        let build = Command::new("npm")
            .args(["run", "build"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    });
    dir.join("out/strategy.wasm")
}

#[test]
fn the_javascript_example_builds_simulates_logs_its_console_and_passes_its_scenarios() {
    let dir = js_toolchain();
    // The copy of the helper beside the example is the SDK's.
    assert_eq!(
        std::fs::read_to_string(dir.join("slipway.js")).unwrap(),
        std::fs::read_to_string(workspace().join("sdk/js/slipway.js")).unwrap(),
        "examples/strategies/js-waves/slipway.js differs from sdk/js/slipway.js: copy it again"
    );
    let wasm = js_example();
    assert!(dir.join("out/types/interfaces/slipway-deploy-scaling.d.ts").exists());
    let output = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--replicas",
        "4",
        "--params",
        r#"{"wave-size": 2}"#,
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("SUCCEEDED 4 of 4 replicas on revision 2 in 2 wave(s)"),
        "{text}"
    );
    // console.log reached the rollout's log.
    assert!(
        text.contains("log       [info] wave 1: 2 ready on revision 2, weights r2=128 r1=128"),
        "{text}"
    );
    let output = slipway(&["test", dir.join("scenarios.toml").to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout(&output));
    let bad = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--params",
        r#"{"waves": 2}"#,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("unknown field `waves`"), "{}", stdout(&bad));
}

#[test]
fn a_javascript_strategy_that_throws_or_passes_a_huge_u32_gets_a_clear_report() {
    let dir = js_toolchain();
    let fixture = crate::runner::unique_dir("js-throws");
    std::fs::create_dir_all(&fixture).unwrap();
    std::fs::copy(workspace().join("tests/js/throws.js"), fixture.join("strategy.js")).unwrap();
    std::fs::copy(workspace().join("sdk/js/slipway.js"), fixture.join("slipway.js")).unwrap();
    let wasm = fixture.join("strategy.wasm");
    let build = Command::new("node")
        .arg(dir.join("build.mjs"))
        .arg(fixture.join("strategy.js"))
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    for (mode, says) in [
        (
            "huge",
            "invalid: replicas must be an integer from 0 to 2147483647, got 4000000000",
        ),
        ("typo", "invalid: TypeError: "),
    ] {
        let output = slipway(&[
            "simulate",
            "--strategy",
            wasm.to_str().unwrap(),
            "--params",
            &format!(r#"{{"mode": "{mode}"}}"#),
        ]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains(says), "{mode}: {says:?} not in\n{text}");
        // console.error reached the log, as a warning.
        assert!(
            text.contains(&format!("log       [warn] about to go wrong on purpose: {mode}")),
            "{text}"
        );
    }
}
