//! The `slipway` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bindings::{HookPoint, Revision};
use crate::engine::WasmEngine;
use crate::events::{RolloutOutcome, Timeline};
use crate::modules::{ModuleLoader, World};
use crate::rollout::{self, RolloutPlan};
use crate::sim::{SIM_EPOCH_MS, SimCluster, SimConfig, SimHooks};

/// Slipway: deployments whose strategies and hooks are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one rollout from revision 1 to revision 2 against a simulated cluster and print
    /// its timeline. Exits 0 when the rollout succeeds, 1 when it fails.
    Simulate(SimulateArgs),
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// The strategy: `builtin:rolling|recreate|blue-green|canary` or a path to a `.wasm`
    /// component.
    #[arg(long)]
    strategy: String,
    /// Replicas of both revisions.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// The strategy's parameters as JSON, e.g. '{"max-surge": "50%"}'.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Fraction (0–1) of new instances that never pass their readiness probe.
    #[arg(long, default_value_t = 0.0)]
    fail_readiness: f64,
    /// Fraction (0–1) of new instances that crash while starting (and are restarted).
    #[arg(long, default_value_t = 0.0)]
    crash: f64,
    /// Fraction (0–1) of new instances that fail HTTP checks.
    #[arg(long, default_value_t = 0.0)]
    fail_http: f64,
    /// Mean time for a new instance to become ready, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    start_delay_ms: u64,
    /// Make the hook at this point fail (policy abort). Repeatable.
    #[arg(long, value_enum)]
    fail_hook: Vec<HookArg>,
    /// Seed for every random choice; the same inputs and seed give the same trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Progress deadline of the rollout, in seconds of virtual time.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
    /// Leave a failed rollout as it is instead of rolling back.
    #[arg(long)]
    no_rollback: bool,
    /// Where precompiled modules are cached (default: ~/.cache/slipway/modules).
    #[arg(long, env = "SLIPWAY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HookArg {
    Pre,
    Mid,
    Post,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

/// Runs the command line; returns the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    for (name, value) in [
        ("--fail-readiness", args.fail_readiness),
        ("--crash", args.crash),
        ("--fail-http", args.fail_http),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&value),
            "{name} is a fraction from 0 to 1, got {value}"
        );
    }
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    serde_json::from_str::<serde_json::Value>(&args.params).map_err(|e| {
        anyhow::anyhow!(
            "--params is not valid JSON ({e}); pass an object such as '{{\"max-surge\": 2}}'"
        )
    })?;

    let engine = WasmEngine::new()?;
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(ModuleLoader::default_cache_dir);
    let loader = ModuleLoader::new(engine, cache_dir)?;
    let module = loader.load_reference(&args.strategy).await?;
    anyhow::ensure!(
        module.world == World::Strategy,
        "{} is a hook component, not a strategy",
        args.strategy
    );

    let timeline = Timeline::new(SIM_EPOCH_MS);
    let config = SimConfig {
        seed: args.seed,
        start_delay_ms: args.start_delay_ms,
        fail_readiness: args.fail_readiness,
        crash: args.crash,
        fail_http: args.fail_http,
        ..SimConfig::default()
    };
    let cluster = Arc::new(SimCluster::new(config, timeline.clone()));
    cluster.add_ready_revision(1, args.replicas, 256);
    cluster.add_faulty_revision(2);
    let failing = args
        .fail_hook
        .iter()
        .map(|h| match h {
            HookArg::Pre => HookPoint::Pre,
            HookArg::Mid => HookPoint::Mid,
            HookArg::Post => HookPoint::Post,
        })
        .collect();
    let hooks = Arc::new(SimHooks { failing });

    let mut plan = RolloutPlan::new(
        "simulated",
        "sim-1",
        Revision {
            number: 2,
            replicas: args.replicas,
        },
        Some(Revision {
            number: 1,
            replicas: args.replicas,
        }),
    );
    plan.params = args.params.clone();
    plan.auto_rollback = !args.no_rollback;
    plan.progress_deadline = std::time::Duration::from_secs(args.deadline);
    plan.seed = args.seed;

    let report = rollout::run(&module, &plan, cluster.clone(), hooks, timeline).await;
    match args.output {
        Output::Json => {
            let document = serde_json::json!({
                "strategy": module.name,
                "digest": module.digest,
                "outcome": report.outcome,
                "summary": report.summary,
                "failure": report.failure,
                "final": cluster.snapshot(),
                "events": report.events,
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        Output::Human => {
            for event in &report.events {
                println!("{event}");
            }
        }
    }
    Ok(if report.outcome == RolloutOutcome::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
