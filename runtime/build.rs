//! Builds the built-in strategies (`strategies/*`) for `wasm32-wasip2` so the runner can embed
//! them with `include_bytes!`. They are ordinary guests: the same SDK and target a user's
//! strategy would use.
//!
//! The guests are built by a nested cargo into their own target directory, because the outer
//! cargo holds the lock on the main one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, file stem of the built component, name under `builtin:`)
const BUILTINS: &[(&str, &str, &str)] = &[
    ("slipway-strategy-rolling", "slipway_strategy_rolling", "rolling"),
    ("slipway-strategy-recreate", "slipway_strategy_recreate", "recreate"),
    (
        "slipway-strategy-blue-green",
        "slipway_strategy_blue_green",
        "blue-green",
    ),
    ("slipway-strategy-canary", "slipway_strategy_canary", "canary"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    for watched in [
        "strategies",
        "sdk/wit",
        "sdk/rust/src",
        "sdk/rust/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }

    ensure_wasm_target();
    let guest_target = workspace.join("target").join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "--profile",
            "wasm-guest",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&guest_target);
    for (package, _, _) in BUILTINS {
        command.args(["-p", package]);
    }
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo to build the built-in strategies");
    if !status.success() {
        panic!(
            "building the built-in strategies for wasm32-wasip2 failed (see above). \
             Is the target installed? Run `rustup target add wasm32-wasip2`."
        );
    }

    let built = guest_target.join("wasm32-wasip2").join("wasm-guest");
    let mut table = String::from("/// The built-in strategies: (name under `builtin:`, component bytes).\n");
    table.push_str("pub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for (_, stem, name) in BUILTINS {
        let source = built.join(format!("{stem}.wasm"));
        let dest = out_dir.join(format!("{name}.wasm"));
        copy(&source, &dest);
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            dest.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), table).unwrap();
}

/// Installs the wasm32-wasip2 standard library with rustup when it is missing, so a plain
/// `cargo build` works on a fresh machine (rustup does not always install the targets listed
/// in rust-toolchain.toml by itself).
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output();
    let Ok(sysroot) = sysroot else { return };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").exists() {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (needed for the built-in strategies)");
    let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
}

fn copy(source: &Path, dest: &Path) {
    std::fs::copy(source, dest).unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), dest.display()));
}
