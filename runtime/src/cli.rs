//! The `slipway` command line: the runner (`serve`), its client for people and CI (`deploy`,
//! `status`, `history`, `module`, the operations), and the simulator (`simulate`).

mod client;
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bindings::HookPoint;
use crate::engine::WasmEngine;
use crate::events::RolloutOutcome;
use crate::modules::{ModuleLoader, World};
use crate::protocol::{
    AppList, AppStatus, Deleted, DeployAccepted, History, MaintenanceRequest, MaintenanceSet, ModuleList,
    RedeployRequest, RollbackRequest, RouteRequest, Routed, ScaleRequest, Scaled, Steer, Steered,
};
use crate::sim::{SimConfig, SimRollout};
use crate::store::RolloutState;

/// Slipway: deployments whose strategies and hooks are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the runner: apps, rollouts and the HTTP API, with local processes and the built-in
    /// router (in a data plane process it starts). Stops every local instance on SIGTERM or
    /// SIGINT; apps in Kubernetes keep running in their cluster.
    Serve(serve::ServeArgs),
    /// Run the data plane: the routers and instances of every app of a data directory.
    /// `slipway serve` starts it; it outlives a runner that is killed or upgraded.
    Dataplane(serve::DataplaneArgs),
    /// Deploy a spec file and follow the rollout. Exits 0 when it succeeds, 1 when it fails.
    Deploy(DeployArgs),
    /// Show apps and their instances.
    Status(StatusArgs),
    /// Show an app's revisions and rollouts.
    History(HistoryArgs),
    /// Roll back to the previous revision: instant when it is still kept, else a redeploy.
    Rollback(RollbackArgs),
    /// Deploy a new revision from an earlier revision's config and module digests.
    Redeploy(RedeployArgs),
    /// Run the failed latest revision's rollout again (no new revision).
    Retry(AppArgs),
    /// Hold a running rollout at its next step.
    Pause(SteerArgs),
    /// Let a paused rollout go on.
    Resume(SteerArgs),
    /// Stop a running rollout and roll back.
    Abort(SteerArgs),
    /// Set the replicas of the app's running revision (no new revision).
    Scale(ScaleArgs),
    /// Split traffic by hand across up to four revisions: `slipway route hello 2=198 3=2`.
    Route(RouteArgs),
    /// Turn the app's maintenance page on or off.
    Maintenance(MaintenanceArgs),
    /// Delete an app: stop its instances and its route. Its history stays readable.
    Delete(DeleteArgs),
    /// Show instances' output (processes and containers alike), each line after its instance.
    Logs(LogsArgs),
    /// Show a revision's traffic as its router saw it: requests, errors, latency.
    Traffic(TrafficArgs),
    /// Upload or list strategy and hook modules.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Run one rollout from revision 1 to revision 2 against a simulated cluster and print
    /// its timeline. Exits 0 when the rollout succeeds, 1 when it fails.
    Simulate(SimulateArgs),
    /// Run scenario files: simulated rollouts of a strategy, each with assertions checked
    /// over its whole timeline (ready instances never below N, surge never above M,
    /// finished within T, the outcome, the weights at the end). Exits 0 when every
    /// assertion holds, 1 when one breaks, 2 when a file or the strategy cannot be read.
    Test(test::TestArgs),
    /// Start a project: a strategy in Rust, Python or JavaScript that builds with one
    /// command, simulates as it is, and has a README and a scenario file.
    #[command(subcommand)]
    New(new::NewCommand),
}

/// Where the runner is and how to authenticate.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The runner's API address.
    #[arg(long, env = "SLIPWAY_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
    /// A bearer token (default: the admin token `slipway serve` wrote to its data directory).
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The runner's data directory, to find its admin token.
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway", global = true)]
    data_dir: PathBuf,
}

impl Remote {
    fn client(&self) -> client::Client {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string(self.data_dir.join(serve::ADMIN_TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_string())
        });
        client::Client::new(&self.server, token)
    }
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The spec file (slipway.toml).
    file: PathBuf,
    /// Return once the rollout has started instead of following it.
    #[arg(long)]
    no_wait: bool,
    /// If the runner goes away while following (a restart, an upgrade), how long to keep
    /// trying to reach it before giving up; the rollout resumes on the restarted runner.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    reconnect: Duration,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// One app (default: all).
    app: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct HistoryArgs {
    app: String,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct AppArgs {
    app: String,
    /// Return once the rollout has started instead of following it.
    #[arg(long)]
    no_wait: bool,
    /// If the runner goes away while following, how long to keep trying to reach it.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    reconnect: Duration,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct RollbackArgs {
    #[command(flatten)]
    app: AppArgs,
    /// The revision to go back to (default: the most recent earlier one that ran).
    #[arg(long)]
    to: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct RedeployArgs {
    #[command(flatten)]
    app: AppArgs,
    /// The revision whose config to deploy again.
    revision: u32,
}

#[derive(Debug, clap::Args)]
struct SteerArgs {
    /// A rollout id, or an app name (its running rollout).
    target: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    app: String,
    replicas: u32,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct RouteArgs {
    app: String,
    /// REVISION=WEIGHT pairs, weights 0 to 256.
    #[arg(required = true)]
    weights: Vec<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct MaintenanceArgs {
    app: String,
    #[arg(value_parser = ["on", "off"])]
    state: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    app: String,
    /// Only this revision's instances.
    #[arg(long)]
    revision: Option<u32>,
    /// Only this instance (e.g. hello-r2-7).
    #[arg(long)]
    instance: Option<String>,
    /// Lines shown from each instance's end.
    #[arg(long, default_value_t = 100)]
    tail: usize,
    /// Keep showing new output until interrupted.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct TrafficArgs {
    app: String,
    /// The revision (default: the active one).
    #[arg(long)]
    revision: Option<u32>,
    /// How far back, up to 300s.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    window: Duration,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    app: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
enum ModuleCommand {
    /// Upload a component (.wasm) under a name; specs refer to it as NAME or NAME@sha256:….
    Push {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List uploaded modules (with the revisions that keep each) and the built-ins.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a module: every upload under NAME, or NAME@sha256:… alone. Refused while a
    /// revision an app keeps uses it (that revision could be rolled back to).
    Rm {
        module: String,
        #[command(flatten)]
        remote: Remote,
    },
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
    /// Requests per second reaching the app, split by the route's weights: the traffic a
    /// strategy's analysis sees (default: none).
    #[arg(long, default_value_t = 0.0)]
    traffic: f64,
    /// A revision's share of 5xx answers, as REVISION=SHARE (repeatable), e.g. `2=0.05`.
    #[arg(long, value_parser = revision_share)]
    errors: Vec<(u32, f64)>,
    /// A revision's median latency, as REVISION=DURATION (repeatable), e.g. `2=80ms`.
    #[arg(long, value_parser = revision_latency)]
    latency: Vec<(u32, Duration)>,
    /// Make the hook at this point fail (policy abort). Repeatable.
    #[arg(long, value_enum)]
    fail_hook: Vec<HookArg>,
    /// Run a real hook module at a point, as POINT=PATH.wasm (pre, mid, post or rollback;
    /// repeatable). It runs with policy abort, `exec` granted and any host reachable, and
    /// every `exec` and HTTP request it makes succeeds at once (exit 0, 200) without
    /// running anything; for chosen answers, policies and grants, use `slipway test` with
    /// fakes in a scenario file.
    #[arg(long, value_parser = point_value)]
    hook: Vec<(&'static str, String)>,
    /// A hook's parameters, as POINT=JSON, e.g. 'pre={"command": ["./migrate"]}'.
    #[arg(long, value_parser = point_value)]
    hook_params: Vec<(&'static str, String)>,
    /// Seed for every random choice; the same inputs and seed give the same trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Progress deadline of the rollout, in seconds of virtual time.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
    /// Leave a failed rollout as it is instead of rolling back.
    #[arg(long)]
    no_rollback: bool,
    /// How long the host watches the new revision after the strategy succeeds (virtual time).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    soak: Duration,
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

impl From<HookArg> for HookPoint {
    fn from(point: HookArg) -> HookPoint {
        match point {
            HookArg::Pre => HookPoint::Pre,
            HookArg::Mid => HookPoint::Mid,
            HookArg::Post => HookPoint::Post,
        }
    }
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
        Command::Serve(args) => serve::run(args).await,
        Command::Dataplane(args) => serve::dataplane(args).await,
        Command::Deploy(args) => deploy(args).await,
        Command::Status(args) => status(args).await,
        Command::History(args) => history(args).await,
        Command::Rollback(args) => {
            let body = RollbackRequest { to: args.to };
            operation(&args.app, "rollback", &body).await
        }
        Command::Redeploy(args) => {
            let body = RedeployRequest {
                revision: args.revision,
            };
            operation(&args.app, "redeploy", &body).await
        }
        Command::Retry(args) => operation(&args, "retry", &serde_json::json!({})).await,
        Command::Pause(args) => steer(args, Steer::Pause).await,
        Command::Resume(args) => steer(args, Steer::Resume).await,
        Command::Abort(args) => steer(args, Steer::Abort).await,
        Command::Scale(args) => scale(args).await,
        Command::Route(args) => route(args).await,
        Command::Maintenance(args) => maintenance(args).await,
        Command::Delete(args) => delete(args).await,
        Command::Logs(args) => logs(args).await,
        Command::Traffic(args) => traffic(args).await,
        Command::Module(command) => module(command).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Test(args) => test::run(args).await,
        Command::New(command) => new::run(command).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints a line to standard output. A reader that went away (`slipway … | head -1`) is not
/// an error: output stops, the command goes on and exits as it would have.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

// After `say!`, which they use.
mod new;
mod test;

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.write_all(b"\n")).is_err() {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let spec = crate::spec::load_file(&args.file)?;
    let client = args.remote.client();
    let answer: DeployAccepted = client
        .call(hyper::Method::PUT, &format!("/v1/apps/{}", spec.name), &spec)
        .await?;
    let json = args.output == Output::Json;
    let rollout = match &answer {
        DeployAccepted::Unchanged { app, revision } => {
            if json {
                say!("{}", serde_json::to_string(&answer)?);
            } else {
                say!("{app} is already at revision {revision} (the spec is unchanged); nothing to do");
            }
            return Ok(ExitCode::SUCCESS);
        }
        DeployAccepted::Started {
            app, revision, rollout, ..
        } => {
            if !json {
                say!("{app}: revision {revision} created; rollout {rollout} started");
            }
            rollout.clone()
        }
    };
    if args.no_wait {
        if json {
            say!("{}", serde_json::to_string(&answer)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow_rollout(&client, &rollout, args.output, args.reconnect).await
}

/// Follows a rollout to its end, printing its events; exit 0 when it succeeded.
async fn follow_rollout(
    client: &client::Client,
    rollout: &str,
    output: Output,
    reconnect: Duration,
) -> anyhow::Result<ExitCode> {
    let json = output == Output::Json;
    let mut events = Vec::new();
    let end = client
        .follow(
            rollout,
            reconnect,
            |value| {
                if json {
                    events.push(value);
                } else {
                    match serde_json::from_value::<crate::events::Event>(value.clone()) {
                        Ok(event) => say!("{event}"),
                        // An event this CLI does not know (a newer runner's) is shown as it came.
                        Err(_) => say!("          {value}"),
                    }
                }
            },
            |lost| {
                eprintln!(
                    "slipway: lost the runner while following rollout {rollout} ({lost}); reconnecting for up to {} s",
                    reconnect.as_secs()
                )
            },
        )
        .await?;
    let summary = end.summary.clone().unwrap_or_default();
    if json {
        say!("{}", serde_json::json!({ "rollout": end, "events": events }));
    } else if end.state == RolloutState::Succeeded {
        say!("rollout {rollout} succeeded: {summary}");
    } else {
        eprintln!("rollout {rollout} {}: {summary}", end.state);
    }
    Ok(if end.state == RolloutState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Starts an app operation that runs a rollout (rollback, redeploy, retry) and follows it.
async fn operation(args: &AppArgs, action: &str, body: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let path = format!("/v1/apps/{}/{action}", args.app);
    let answer: DeployAccepted = client.call(hyper::Method::POST, &path, body).await?;
    let DeployAccepted::Started {
        revision,
        rollout,
        note,
        ..
    } = &answer
    else {
        say!("{}", serde_json::to_string(&answer)?);
        return Ok(ExitCode::SUCCESS);
    };
    if args.output == Output::Human {
        say!(
            "{}: {action} of revision {revision} started (rollout {rollout})",
            args.app
        );
        if let Some(note) = note {
            say!("{}: {note}", args.app);
        }
    }
    if args.no_wait {
        if args.output == Output::Json {
            say!("{}", serde_json::to_string(&answer)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow_rollout(&client, rollout, args.output, args.reconnect).await
}

async fn steer(args: SteerArgs, action: Steer) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let verb = match action {
        Steer::Pause => "pause",
        Steer::Resume => "resume",
        Steer::Abort => "abort",
    };
    // An app name stands for its running rollout.
    let rollout = match client.get::<AppStatus>(&format!("/v1/apps/{}", args.target)).await {
        Ok(app) => app
            .running_rollout
            .ok_or_else(|| anyhow::anyhow!("{} has no running rollout to {verb}", args.target))?,
        Err(_) => args.target.clone(),
    };
    let answer: Steered = client
        .call(
            hyper::Method::POST,
            &format!("/v1/rollouts/{rollout}/{verb}"),
            &serde_json::json!({}),
        )
        .await?;
    let done = match action {
        Steer::Pause => "paused",
        Steer::Resume => "resumed",
        Steer::Abort => "aborted (it rolls back)",
    };
    if answer.changed {
        say!("rollout {rollout} {done}");
    } else {
        say!("rollout {rollout} was already {done}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let answer: Scaled = args
        .remote
        .client()
        .call(
            hyper::Method::PUT,
            &format!("/v1/apps/{}/scale", args.app),
            &ScaleRequest {
                replicas: args.replicas,
            },
        )
        .await?;
    say!(
        "{}: revision {} scaled to {} replicas",
        answer.app,
        answer.revision,
        answer.replicas
    );
    Ok(ExitCode::SUCCESS)
}

async fn traffic(args: TrafficArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/apps/{}/traffic?window={}s", args.app, args.window.as_secs().max(1));
    if let Some(revision) = args.revision {
        path.push_str(&format!("&revision={revision}"));
    }
    let report: crate::protocol::TrafficReport = args.remote.client().get(&path).await?;
    if args.output == Output::Json {
        say!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &report.stats;
    let ms = |us: Option<u64>| us.map_or("-".to_string(), |us| format!("{:.1} ms", us as f64 / 1000.0));
    say!(
        "{} r{}, last {} s: {} requests, {:.2}% errors ({} 5xx, {} connection errors), p50 {} p90 {} p99 {}",
        report.app,
        report.revision,
        s.window_ms / 1000,
        s.requests,
        s.error_rate() * 100.0,
        s.by_class[4],
        s.connection_errors,
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us)
    );
    say!(
        "  by status: 1xx {} · 2xx {} · 3xx {} · 4xx {} · 5xx {}",
        s.by_class[0],
        s.by_class[1],
        s.by_class[2],
        s.by_class[3],
        s.by_class[4]
    );
    Ok(ExitCode::SUCCESS)
}

async fn route(args: RouteArgs) -> anyhow::Result<ExitCode> {
    let mut weights = BTreeMap::new();
    for pair in &args.weights {
        let (revision, weight) = pair
            .split_once('=')
            .and_then(|(r, w)| Some((r.trim().parse::<u32>().ok()?, w.trim().parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("{pair:?}: expected REVISION=WEIGHT, e.g. 2=198"))?;
        if weights.insert(revision, weight).is_some() {
            anyhow::bail!("revision {revision} is given twice; give each revision one weight");
        }
    }
    let answer: Routed = args
        .remote
        .client()
        .call(
            hyper::Method::PUT,
            &format!("/v1/apps/{}/route", args.app),
            &RouteRequest { weights },
        )
        .await?;
    let shown: Vec<String> = answer
        .weights
        .iter()
        .map(|(r, w)| format!("revision {r} at {w}"))
        .collect();
    say!("{}: route set: {}", answer.app, shown.join(", "));
    Ok(ExitCode::SUCCESS)
}

async fn maintenance(args: MaintenanceArgs) -> anyhow::Result<ExitCode> {
    let answer: MaintenanceSet = args
        .remote
        .client()
        .call(
            hyper::Method::PUT,
            &format!("/v1/apps/{}/maintenance", args.app),
            &MaintenanceRequest { on: args.state == "on" },
        )
        .await?;
    let state = if answer.maintenance { "on" } else { "off" };
    say!("{}: maintenance page {state}", answer.app);
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let answer: Deleted = args
        .remote
        .client()
        .call_raw(
            hyper::Method::DELETE,
            &format!("/v1/apps/{}", args.app),
            "application/json",
            bytes::Bytes::new(),
        )
        .await?;
    say!(
        "{} deleted: {} instances stopped, its route closed; `slipway history {}` still shows its history",
        answer.app,
        answer.stopped,
        answer.app
    );
    Ok(ExitCode::SUCCESS)
}

async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/apps/{}/logs?tail={}", args.app, args.tail);
    if let Some(revision) = args.revision {
        path.push_str(&format!("&revision={revision}"));
    }
    if let Some(instance) = &args.instance {
        path.push_str(&format!("&instance={instance}"));
    }
    if args.follow {
        path.push_str("&follow=true");
    }
    let mut out = std::io::stdout().lock();
    args.remote
        .client()
        .stream(&path, |chunk| {
            use std::io::Write;
            // A closed pipe (`| head`) ends the output, not the program with a panic.
            let written = out.write_all(chunk).and_then(|()| out.flush()).is_ok();
            if !written {
                STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            written
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let apps = match &args.app {
        Some(app) => vec![client.get::<AppStatus>(&format!("/v1/apps/{app}")).await?],
        None => client.get::<AppList>("/v1/apps").await?.apps,
    };
    if args.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(ExitCode::SUCCESS);
    }
    if apps.is_empty() {
        say!("no apps yet; deploy one with `slipway deploy slipway.toml`");
    }
    for app in apps {
        let active = app.active_revision.map_or("none".to_string(), |r| r.to_string());
        let rollout = app
            .running_rollout
            .as_ref()
            .map(|r| format!(", rollout {r} running"))
            .unwrap_or_default();
        let maintenance = if app.maintenance { ", MAINTENANCE" } else { "" };
        let listen = app.instances.as_ref().and_then(|i| i.listen).map_or_else(
            || app.spec["listen"].as_str().unwrap_or("?").to_string(),
            |l| l.to_string(),
        );
        say!(
            "{}  listen {listen}  active revision {active}{rollout}{maintenance}",
            app.name
        );
        if let Some(notice) = &app.notice {
            say!("  ! {notice}");
        }
        if let Some(certificate) = &app.certificate {
            say!("  {}", certificate_line(certificate));
        }
        for (revision, s) in app.instances.iter().flat_map(|i| &i.revisions) {
            say!(
                "  revision {revision}: {}/{} ready (desired {}), weight {}",
                s.ready,
                s.current,
                s.desired,
                s.weight
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let history: History = client.get(&format!("/v1/apps/{}/revisions", args.app)).await?;
    if args.output == Output::Json {
        say!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(at) = history.deleted_at {
        say!("{} was deleted at {}", history.app, format_time(at));
    }
    say!(
        "{:<5} {:<11} {:<22} {:<14} {:<20} REASON",
        "REV",
        "STATE",
        "STRATEGY",
        "DIGEST",
        "CREATED"
    );
    for revision in &history.revisions {
        let digest = revision.strategy_digest.trim_start_matches("sha256:");
        say!(
            "{:<5} {:<11} {:<22} {:<14} {:<20} {}",
            revision.number,
            revision.state.as_str(),
            revision.strategy,
            &digest[..digest.len().min(12)],
            format_time(revision.created_at),
            revision.reason.as_deref().unwrap_or("")
        );
    }
    say!("");
    say!(
        "{:<28} {:<8} {:<12} {:<20} SUMMARY",
        "ROLLOUT",
        "TARGET",
        "OUTCOME",
        "STARTED"
    );
    for rollout in &history.rollouts {
        say!(
            "{:<28} {:<8} {:<12} {:<20} {}",
            rollout.id,
            rollout.target,
            rollout.state.as_str(),
            format_time(rollout.started_at),
            rollout.summary.as_deref().unwrap_or("")
        );
    }
    if !history.events.is_empty() {
        say!("");
        say!("{:<20} {:<6} EVENT", "AT", "LEVEL");
        for event in &history.events {
            say!("{:<20} {:<6} {}", format_time(event.at), event.level, event.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn module(command: ModuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModuleCommand::Push { file, name, remote } => {
            let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let path = format!("/v1/modules?name={name}");
            let listed: crate::protocol::ListedModule = remote
                .client()
                .call_raw(hyper::Method::POST, &path, "application/wasm", bytes.into())
                .await?;
            let module = &listed.module;
            say!(
                "uploaded {} as {}@{} ({} world)",
                file.display(),
                module.name,
                module.digest,
                module.world
            );
            if listed.compile == crate::protocol::CompileState::Compiling {
                say!(
                    "it is compiling in the background (`slipway module list` shows when it is ready); a deploy that uses it waits for it"
                );
            }
        }
        ModuleCommand::List { remote } => {
            let list: ModuleList = remote.client().get("/v1/modules").await?;
            for builtin in &list.builtin {
                say!("{builtin:<24} built in");
            }
            for listed in &list.modules {
                let module = &listed.module;
                let pins: Vec<String> = listed
                    .pinned_by
                    .iter()
                    .map(|p| format!("{} r{}", p.app, p.revision))
                    .collect();
                let compile = match (&listed.compile, &listed.compile_error) {
                    (_, Some(error)) => format!(", compiling FAILED: {error}"),
                    (crate::protocol::CompileState::Compiling, None) => ", compiling".to_string(),
                    _ => String::new(),
                };
                say!(
                    "{:<24} {} (API {}) {} {} bytes, uploaded {} UTC{compile}{}",
                    module.name,
                    module.world,
                    module.api_version.as_deref().unwrap_or("?"),
                    module.digest,
                    module.size,
                    format_time(module.uploaded_at),
                    if pins.is_empty() {
                        String::new()
                    } else {
                        format!(", in use by {}", pins.join(", "))
                    }
                );
            }
        }
        ModuleCommand::Rm { module, remote } => {
            let deleted: crate::protocol::ModulesDeleted = remote
                .client()
                .call(
                    hyper::Method::DELETE,
                    &format!("/v1/modules/{module}"),
                    &serde_json::json!({}),
                )
                .await?;
            for row in &deleted.deleted {
                say!("deleted {}@{}", row.name, row.digest);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An app's ACME certificate in one line of `slipway status`.
fn certificate_line(certificate: &crate::protocol::CertificateStatus) -> String {
    use crate::protocol::CertificateState;
    let names = certificate.hosts.join(", ");
    let at = |seconds: Option<u64>| seconds.map_or("?".into(), |s| format_time(s * 1000));
    match certificate.state {
        CertificateState::Obtaining => {
            format!("certificate for {names}: being obtained from {}", certificate.directory)
        }
        CertificateState::Valid => format!(
            "certificate for {names}: valid until {} UTC, renewed from {} UTC",
            at(certificate.not_after),
            at(certificate.renew_at)
        ),
        CertificateState::Failed => format!(
            "! certificate for {names}: FAILED: {}; next try at {} UTC{}",
            certificate.error.as_deref().unwrap_or("no reason given"),
            at(certificate.next_try),
            certificate
                .not_after
                .map(|n| format!("; the current one is valid until {} UTC", format_time(n * 1000)))
                .unwrap_or_else(|| "; no certificate is served for these names yet".into())
        ),
    }
}

fn format_time(ms: u64) -> String {
    crate::civil::format_utc(ms)
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
        anyhow::anyhow!("--params is not valid JSON ({e}); pass an object such as '{{\"max-surge\": 2}}'")
    })?;

    let engine = WasmEngine::new()?;
    let cache_dir = args.cache_dir.clone().or_else(ModuleLoader::default_cache_dir);
    let loader = ModuleLoader::new(engine, cache_dir)?;
    let module = loader.load_reference(&args.strategy).await?;
    anyhow::ensure!(
        module.world == World::Strategy,
        "{} is a hook component, not a strategy",
        args.strategy
    );

    let mut hooks = crate::spec::Hooks::default();
    for (point, module) in &args.hook {
        let slot = hooks.at_mut(point).expect("point_value names a point");
        anyhow::ensure!(
            slot.is_none(),
            "--hook {point}= is given twice; give each point one module"
        );
        *slot = Some(crate::spec::Hook {
            module: module.clone(),
            params: serde_json::Map::new(),
            timeout: Duration::from_secs(60),
            policy: crate::spec::HookPolicy::Abort,
            grants: vec!["exec".into()],
        });
    }
    for (point, params) in &args.hook_params {
        let Some(hook) = hooks.at_mut(point).expect("point_value names a point") else {
            anyhow::bail!("--hook-params {point}=…: no --hook {point}=PATH.wasm to give them to");
        };
        hook.params = match serde_json::from_str(params) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => anyhow::bail!(
                "--hook-params {point}=…: {params:?} is not a JSON object; pass e.g. '{point}={{\"command\": [\"./migrate\"]}}'"
            ),
        };
    }
    let hooks = test::load_hooks(&loader, &hooks).await?;

    let rollout = SimRollout {
        replicas: args.replicas,
        params: args.params.clone(),
        cluster: SimConfig {
            seed: args.seed,
            start_delay_ms: args.start_delay_ms,
            fail_readiness: args.fail_readiness,
            crash: args.crash,
            fail_http: args.fail_http,
            traffic_rps: args.traffic,
            error_rates: args.errors.iter().copied().collect(),
            latencies: args.latency.iter().copied().collect(),
            ..SimConfig::default()
        },
        failing_hooks: args.fail_hook.iter().map(|&h| h.into()).collect(),
        fakes: crate::fakes::Fakes {
            answer_unmatched: true,
            ..Default::default()
        },
        deadline: Duration::from_secs(args.deadline),
        rollback: !args.no_rollback,
        soak: args.soak,
    };
    let (report, last) = rollout.run(&module, &hooks).await;
    match args.output {
        Output::Json => {
            let document = serde_json::json!({
                "strategy": module.name,
                "digest": module.digest,
                "outcome": report.outcome,
                "summary": report.summary,
                "failure": report.failure,
                "final": last,
                "events": report.events,
            });
            say!("{}", serde_json::to_string_pretty(&document)?);
        }
        Output::Human => {
            for event in &report.events {
                say!("{event}");
            }
        }
    }
    Ok(if report.outcome == RolloutOutcome::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A duration argument: "30s", "500ms", "5m" or a number of seconds.
fn duration_arg(text: &str) -> Result<Duration, String> {
    crate::spec::duration::parse(text)
}

/// `--hook pre=PATH`: a hook point and a value.
fn point_value(text: &str) -> Result<(&'static str, String), String> {
    let (point, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not POINT=VALUE, e.g. pre=target/wasm32-wasip2/release/migrate.wasm"))?;
    let point = ["pre", "mid", "post", "rollback"]
        .into_iter()
        .find(|p| *p == point.trim())
        .ok_or_else(|| format!("{point:?} is not a hook point; use pre, mid, post or rollback"))?;
    Ok((point, value.to_string()))
}

/// `--errors 2=0.05`.
fn revision_share(text: &str) -> Result<(u32, f64), String> {
    let bad = || format!("{text:?} is not REVISION=SHARE, e.g. 2=0.05 (a share from 0 to 1)");
    let (revision, share) = text.split_once('=').ok_or_else(bad)?;
    let revision = revision.trim().parse().map_err(|_| bad())?;
    let share: f64 = share.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&share) {
        return Err(bad());
    }
    Ok((revision, share))
}

/// `--latency 2=80ms`.
fn revision_latency(text: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("{text:?} is not REVISION=DURATION, e.g. 2=80ms");
    let (revision, latency) = text.split_once('=').ok_or_else(bad)?;
    let revision = revision.trim().parse().map_err(|_| bad())?;
    let latency = crate::spec::duration::parse(latency.trim()).map_err(|_| bad())?;
    Ok((revision, latency))
}
