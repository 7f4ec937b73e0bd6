//! The example custom strategies, in Rust, Python, JavaScript and C, built from source and run through
//! `slipway simulate` exactly as their READMEs say.

use std::process::Command;

use crate::cli::{slipway, stdout};
use crate::support::{guest, npm_ci, workspace};

/// Simulates a waves example (whichever its language) in waves of two: its timeline.
fn simulate_waves(wasm: &std::path::Path, replicas: u32) -> String {
    let output = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--replicas",
        &replicas.to_string(),
        "--params",
        r#"{"wave-size": 2}"#,
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    let waves = replicas / 2;
    assert!(
        text.contains(&format!(
            "SUCCEEDED {replicas} of {replicas} replicas on revision 2 in {waves} wave(s) of up to 2"
        )),
        "{text}"
    );
    text
}

#[test]
fn the_rust_example_strategy_runs_in_the_simulator() {
    simulate_waves(&guest("example-strategy-waves"), 6);
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
    simulate_waves(&wasm, 4);

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
    READY.get_or_init(|| npm_ci(&dir, "the JavaScript example"));
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
    let text = simulate_waves(&wasm, 4);
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

#[test]
fn the_c_example_strategy_builds_with_make_and_runs() {
    let dir = workspace().join("examples/strategies/c-waves");
    let out = crate::runner::unique_dir("c-waves");
    let build = Command::new("make")
        .arg(format!("OUT={}", out.display()))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "make in {}: {}{}",
        dir.display(),
        stdout(&build),
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = out.join("c-waves.wasm");
    simulate_waves(&wasm, 6);
    let output = slipway(&[
        "test",
        dir.join("scenarios.toml").to_str().unwrap(),
        "--strategy",
        wasm.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stdout(&output));
    // A bad parameter is refused by the C code with a message built on the heap, whole.
    let bad = slipway(&[
        "simulate",
        "--strategy",
        wasm.to_str().unwrap(),
        "--params",
        r#"{"wave-sise": 2}"#,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stdout(&bad).contains("unknown field `wave-sise`, expected one of `wave-size`, `timeout-seconds`"),
        "{}",
        stdout(&bad)
    );
}

/// The committed C bindings are what wit-bindgen's C generator writes for the WIT today.
/// With SLIPWAY_WRITE_C_BINDINGS=1 it writes them instead (after a change to the WIT).
#[test]
fn the_c_bindings_match_the_wit() {
    let write = std::env::var_os("SLIPWAY_WRITE_C_BINDINGS").is_some();
    for world in ["strategy", "hook"] {
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve.push_file(workspace().join("sdk/wit/deploy.wit")).unwrap();
        let id = resolve.select_world(&[package], Some(world)).unwrap();
        let mut files = wit_bindgen_core::Files::default();
        wit_bindgen_c::Opts::default()
            .build()
            .generate(&mut resolve, id, &mut files)
            .unwrap();
        let mut names = Vec::new();
        for (name, generated) in files.iter() {
            let path = workspace().join("sdk/c").join(world).join(name);
            if write {
                std::fs::write(&path, generated).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{} differs from what wit-bindgen-c generates from sdk/wit/deploy.wit: regenerate the C bindings (see sdk/c/README.md)",
                path.display()
            );
            names.push(name.to_string());
        }
        names.sort();
        assert_eq!(
            names,
            [
                format!("{world}.c"),
                format!("{world}.h"),
                format!("{world}_component_type.o")
            ]
        );
    }
}
