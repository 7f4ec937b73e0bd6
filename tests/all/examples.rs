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
