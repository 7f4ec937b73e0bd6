//! `slipway new strategy NAME --lang rust|python|js`: a project that builds with one
//! command, simulates out of the box and carries its own scenario file. Everything it needs
//! from Slipway (the WIT, the Rust SDK, the JavaScript helper and pinned toolchain) is
//! written into it from this binary, so it builds wherever it is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;

#[derive(Debug, clap::Subcommand)]
pub enum NewCommand {
    /// A deployment strategy: the project, its build, a README and `scenarios.toml`.
    Strategy(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The strategy's name (lowercase letters, digits and dashes): the directory, the crate
    /// or package, and the name to upload it as.
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
}

/// A file of the new project: its path, its text, and whether `{{…}}` placeholders in it
/// are filled (templates) or it is written as it is (the SDK's own sources).
struct File {
    path: &'static str,
    text: &'static str,
    template: bool,
}

const fn template(path: &'static str, text: &'static str) -> File {
    File {
        path,
        text,
        template: true,
    }
}

const fn verbatim(path: &'static str, text: &'static str) -> File {
    File {
        path,
        text,
        template: false,
    }
}

const WIT: &str = include_str!("../../../sdk/wit/deploy.wit");

const COMMON: &[File] = &[
    template("README.md", include_str!("../../templates/strategy/README.md")),
    template(
        "scenarios.toml",
        include_str!("../../templates/strategy/scenarios.toml"),
    ),
    verbatim("wit/deploy.wit", WIT),
];

const RUST: &[File] = &[
    template("Cargo.toml", include_str!("../../templates/strategy/rust/Cargo.toml")),
    template(
        ".cargo/config.toml",
        include_str!("../../templates/strategy/rust/.cargo/config.toml"),
    ),
    template(".gitignore", include_str!("../../templates/strategy/rust/gitignore")),
    template("src/lib.rs", include_str!("../../templates/strategy/rust/src/lib.rs")),
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
    template("app.py", include_str!("../../templates/strategy/python/app.py")),
    template("build.sh", include_str!("../../templates/strategy/python/build.sh")),
    template(".gitignore", include_str!("../../templates/strategy/python/gitignore")),
];

const JS: &[File] = &[
    template("strategy.js", include_str!("../../templates/strategy/js/strategy.js")),
    template(".gitignore", include_str!("../../templates/strategy/js/gitignore")),
    verbatim("slipway.js", include_str!("../../../sdk/js/slipway.js")),
];

/// The JavaScript example's pinned toolchain, its names made the new project's.
const JS_PACKAGE: &str = include_str!("../../../examples/strategies/js-waves/package.json");
const JS_LOCK: &str = include_str!("../../../examples/strategies/js-waves/package-lock.json");
const JS_BUILD: &str = include_str!("../../../examples/strategies/js-waves/build.mjs");
const JS_EXAMPLE_NAME: &str = "slipway-js-waves";
const JS_EXAMPLE_WIT: &str = "../../../sdk/wit";

impl Lang {
    fn language(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    fn build(self) -> &'static str {
        match self {
            Lang::Rust => "rustup target add wasm32-wasip2   # once\ncargo build --release",
            Lang::Python => "pip install componentize-py==0.25.1   # once\n./build.sh",
            Lang::Js => "npm ci   # once: the pinned toolchain\nnpm run build",
        }
    }

    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
        }
    }
}

pub async fn run(command: NewCommand) -> anyhow::Result<ExitCode> {
    let NewCommand::Strategy(args) = command;
    check_name(&args.name)?;
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
        Lang::Python | Lang::Js => "out/strategy.wasm".to_string(),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{language}}", args.lang.language())
            .replace("{{lang}}", args.lang.flag())
            .replace("{{build}}", args.lang.build())
            .replace("{{wasm}}", &wasm)
    };
    let mut written: Vec<(String, String)> = Vec::new();
    for file in COMMON.iter().chain(args.lang.files()) {
        let text = if file.template {
            fill(file.text)
        } else {
            file.text.to_string()
        };
        written.push((file.path.to_string(), text));
    }
    if args.lang == Lang::Js {
        let named = |text: &str| text.replace(JS_EXAMPLE_NAME, &args.name).replace(JS_EXAMPLE_WIT, "wit");
        written.push((
            "package.json".into(),
            named(JS_PACKAGE).replace(
                "A Slipway deployment strategy in JavaScript: waves of replicas",
                "A Slipway deployment strategy in JavaScript",
            ),
        ));
        written.push(("package-lock.json".into(), named(JS_LOCK)));
        written.push(("build.mjs".into(), named(JS_BUILD)));
    }
    for (path, text) in &written {
        write(&dir.join(path), text)?;
    }
    if args.lang == Lang::Python {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    say!(
        "created {} ({} strategy, {} files)",
        dir.display(),
        args.lang.language(),
        written.len()
    );
    say!("next:");
    say!("  cd {}", dir.display());
    for line in args.lang.build().lines() {
        say!("  {line}");
    }
    say!("  slipway simulate --strategy {wasm} --replicas 4");
    say!("  slipway test scenarios.toml");
    Ok(ExitCode::SUCCESS)
}

/// A name that works as a directory, a crate, a package and a module name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?} is not a strategy name: use 1 to 63 lowercase letters, digits and dashes, starting with a letter (e.g. my-rollout)"
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
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
        assert!(check_name("my-rollout2").is_ok());
        for bad in ["", "My", "2fast", "a_b", "dash-", "a b", &"a".repeat(64)] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("is not a strategy name"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_javascript_example_names_what_a_new_project_replaces() {
        assert!(JS_PACKAGE.contains(JS_EXAMPLE_NAME) && JS_LOCK.contains(JS_EXAMPLE_NAME));
        assert!(JS_PACKAGE.contains(JS_EXAMPLE_WIT) && JS_BUILD.contains(JS_EXAMPLE_WIT));
        assert!(JS_PACKAGE.contains("A Slipway deployment strategy in JavaScript: waves of replicas"));
    }
}
