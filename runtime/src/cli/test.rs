//! `slipway test`: runs scenario files (see [`crate::scenario`]) and reports each scenario,
//! what broke and at which timeline line; optionally as JUnit XML for CI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::engine::WasmEngine;
use crate::hooks::{Hook, WasmHooks};
use crate::modules::{LoadedModule, ModuleLoader, World};
use crate::scenario::{self, Ran};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Scenario files (TOML): a `strategy` and `[[scenario]]` tables, each with its
    /// replicas, params, faults, seed and `expect` assertions.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The strategy to test instead of the files' own `strategy`: `builtin:NAME` or a path
    /// to a `.wasm` component (your fresh build, say).
    #[arg(long)]
    strategy: Option<String>,
    /// The hook module to run at a point instead of the files' own, as POINT=PATH.wasm
    /// (pre, mid, post or rollback; repeatable): the rest of the files' `[hooks.POINT]`
    /// (params, policy, grants) stays.
    #[arg(long, value_parser = super::point_value)]
    hook: Vec<(&'static str, String)>,
    /// Also write the results as JUnit XML to this file (for CI).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Print every scenario's whole timeline, not only around what broke.
    #[arg(long, short)]
    verbose: bool,
    /// Where precompiled modules are cached (default: ~/.cache/slipway/modules).
    #[arg(long, env = "SLIPWAY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    // Every file is read before anything runs: a mistake in the last one is found at once.
    let files = args
        .files
        .iter()
        .map(|path| scenario::read(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let engine = WasmEngine::new()?;
    let cache_dir = args.cache_dir.clone().or_else(ModuleLoader::default_cache_dir);
    let loader = ModuleLoader::new(engine, cache_dir)?;
    let mut modules: BTreeMap<String, LoadedModule> = BTreeMap::new();
    let mut results = Vec::new();
    for file in &files {
        let shown = file.path.display().to_string();
        let Some(reference) = args.strategy.clone().or_else(|| file.strategy.clone()) else {
            bail!(
                "{shown}: no strategy; add strategy = \"builtin:rolling\" (or a .wasm path) at the top, or pass --strategy"
            );
        };
        if !modules.contains_key(&reference) {
            let module = loader
                .load_reference(&reference)
                .await
                .with_context(|| format!("{shown}: cannot load the strategy {reference}"))?;
            if module.world != World::Strategy {
                bail!("{shown}: {reference} is a hook component, not a strategy");
            }
            modules.insert(reference.clone(), module);
        }
        let module = &modules[&reference];
        let mut hooks = file.hooks.clone();
        for (point, module) in &args.hook {
            match hooks.at_mut(point).expect("point_value names a point") {
                Some(hook) => hook.module.clone_from(module),
                None => bail!(
                    "{shown}: --hook {point}=…: the file has no [hooks.{point}] to run it with; add one (params, policy, grants)"
                ),
            }
        }
        let hooks = load_hooks(&loader, &hooks)
            .await
            .with_context(|| format!("{shown}: cannot load a hook"))?;
        for case in &file.scenarios {
            let started = Instant::now();
            let (report, last) = case.rollout.run(module, &hooks).await;
            let broken = scenario::check(&case.expect, case.rollout.replicas, &report, &last);
            let ran = Ran {
                file: shown.clone(),
                name: case.name.clone(),
                broken,
                timeline: report.events.iter().map(ToString::to_string).collect(),
                seconds: started.elapsed().as_secs_f64(),
            };
            let simulated = report.events.last().map_or(0, |e| e.at_ms) as f64 / 1000.0;
            if ran.broken.is_empty() {
                say!(
                    "ok    {shown} › {} ({} lines, {simulated:.1}s simulated)",
                    ran.name,
                    ran.timeline.len()
                );
            } else {
                say!("FAIL  {shown} › {}", ran.name);
                for line in ran.explain().lines() {
                    say!("      {line}");
                }
            }
            if args.verbose {
                for (n, line) in ran.timeline.iter().enumerate() {
                    say!("      {:>4} {line}", n + 1);
                }
            }
            results.push(ran);
        }
    }
    let failed = results.iter().filter(|r| !r.broken.is_empty()).count();
    say!(
        "{} scenarios: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if let Some(path) = &args.junit {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, scenario::junit(&results)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Loads `hooks`' modules (paths to `.wasm` components) as a simulation runs them.
pub async fn load_hooks(loader: &ModuleLoader, hooks: &crate::spec::Hooks) -> anyhow::Result<WasmHooks> {
    let mut loaded = WasmHooks::default();
    for (point, hook) in hooks.iter() {
        let module = loader
            .load_reference(&hook.module)
            .await
            .with_context(|| format!("hooks.{point}: cannot load {}", hook.module))?;
        if module.world != World::Hook {
            bail!(
                "hooks.{point}: {} is a strategy component, not a hook (its world is not slipway:deploy/hook)",
                hook.module
            );
        }
        let hook = Hook::simulated(hook, module).map_err(|e| anyhow::anyhow!("hooks.{point}: {e}"))?;
        loaded.hooks.insert(point, hook);
    }
    Ok(loaded)
}
