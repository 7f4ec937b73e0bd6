//! `slipway serve`: the runner process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::api::{self, ApiState};
use crate::auth::{Scope, Tokens};
use crate::engine::{Limits, WasmEngine};
use crate::modules::ModuleLoader;
use crate::runner::{Runner, RunnerConfig};

/// Where `serve` writes the admin token it creates when no tokens are configured.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The data directory: the SQLite database, uploaded modules, the module cache.
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway")]
    data_dir: PathBuf,
    /// Where the HTTP API listens.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// A file of `SCOPE TOKEN` lines (scopes: read, deploy, admin). Tokens can also come from
    /// SLIPWAY_TOKENS="scope:token,…". With neither, an admin token is created in the data
    /// directory.
    #[arg(long, env = "SLIPWAY_TOKENS_FILE")]
    tokens: Option<PathBuf>,
    /// Spec files to deploy once the runner is up (as `slipway deploy` would). Repeatable.
    #[arg(long)]
    deploy: Vec<PathBuf>,
    /// When stopped (SIGTERM, Ctrl-C), leave the data plane running: every app keeps its
    /// traffic and instances, and the next `slipway serve` on this data directory adopts them.
    /// For upgrading the runner in place. Without it, stopping the runner stops everything.
    #[arg(long, env = "SLIPWAY_KEEP_RUNNING")]
    keep_running: bool,
    /// The ACME directory that certificates for `[router.tls] acme = true` come from.
    #[arg(long, env = "SLIPWAY_ACME_DIRECTORY", default_value = crate::acme::LETS_ENCRYPT)]
    acme_directory: String,
    /// An email address the ACME CA may write to about expiring certificates.
    #[arg(long, env = "SLIPWAY_ACME_EMAIL")]
    acme_email: Option<String>,
    /// A PEM root certificate to trust for the ACME directory's HTTPS instead of the system's
    /// (a private CA, or a test CA such as Pebble).
    #[arg(long, env = "SLIPWAY_ACME_CA")]
    acme_ca: Option<PathBuf>,
    /// The plain HTTP address apps share when their specs name hosts but no listen address
    /// (their ACME challenges are answered here too).
    #[arg(long, env = "SLIPWAY_FRONT_HTTP", default_value = "0.0.0.0:80")]
    front_http: SocketAddr,
    /// The HTTPS address apps share when their `[router.tls]` names no listen address.
    #[arg(long, env = "SLIPWAY_FRONT_HTTPS", default_value = "0.0.0.0:443")]
    front_https: SocketAddr,
    /// The most replicas one revision may have on this runner, in a spec, a scale by hand or
    /// a strategy's `scale`: a bound for a small machine (1 to 1000).
    #[arg(long, env = "SLIPWAY_MAX_REPLICAS", default_value_t = crate::spec::MAX_REPLICAS,
          value_parser = clap::value_parser!(u32).range(1..=crate::spec::MAX_REPLICAS as i64))]
    max_replicas: u32,
    /// The most the precompiled-module cache (DATA/cache) may hold, e.g. "4GiB"; the least
    /// recently used modules are evicted first (and compiled again when next needed).
    #[arg(long, env = "SLIPWAY_MODULE_CACHE_SIZE", default_value = "4GiB", value_parser = cache_size)]
    module_cache_size: u64,
}

fn cache_size(text: &str) -> Result<u64, String> {
    crate::spec::bytes(text).map_err(|e| format!("{e}; write a size such as \"4GiB\""))
}

#[derive(Debug, clap::Args)]
pub struct DataplaneArgs {
    /// The data directory whose apps it serves (`slipway serve` starts it with its own).
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway")]
    data_dir: PathBuf,
}

/// `slipway dataplane`: the routers and instances of every app, in their own process.
pub async fn dataplane(args: DataplaneArgs) -> anyhow::Result<ExitCode> {
    crate::dataplane::server::run(&args.data_dir).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    {
        use std::os::unix::fs::DirBuilderExt;
        // Only the runner's user may look inside: it holds the database, tokens and modules.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", args.data_dir.display()))?;
    }
    anyhow::ensure!(
        args.acme_directory.starts_with("https://"),
        "--acme-directory {:?} is not an https:// URL; give the directory URL of an ACME CA, e.g. {}",
        args.acme_directory,
        crate::acme::LETS_ENCRYPT
    );
    if let Some(ca) = &args.acme_ca {
        anyhow::ensure!(
            ca.is_file(),
            "--acme-ca {} is not a file; give the PEM root certificate the ACME directory's HTTPS is signed by",
            ca.display()
        );
    }
    let tokens = load_tokens(&args)?;
    let mut specs = Vec::new();
    for file in &args.deploy {
        specs.push(crate::spec::load_file(file)?);
    }
    let engine = WasmEngine::new()?;
    let loader = ModuleLoader::new(engine, Some(args.data_dir.join("cache")))?.with_cache_limit(args.module_cache_size);
    let runner = Runner::start(
        RunnerConfig {
            data_dir: args.data_dir.clone(),
            limits: Limits {
                max_replicas: args.max_replicas,
                ..Limits::default()
            },
            plane: crate::dataplane::client::Start::Process,
            kube: None,
            acme: crate::acme::AcmeConfig {
                directory: args.acme_directory.clone(),
                contact: args.acme_email.clone(),
                ca: args.acme_ca.clone(),
            },
            front: crate::runner::FrontDoor {
                http: args.front_http,
                https: args.front_https,
            },
        },
        loader,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e} (is another runner running? use --listen)",
            args.listen
        )
    })?;
    eprintln!(
        "slipway: API on http://{} (data in {})",
        listener.local_addr()?,
        args.data_dir.display()
    );
    for spec in specs {
        let name = spec.name.clone();
        let listen = match spec.listen {
            Some(listen) => format!("http://{listen}"),
            None if spec.kubernetes.is_none() => {
                format!("http://{} for {}", args.front_http, spec.router.hosts.join(", "))
            }
            None => format!("its {} in the cluster", spec.router.kind.as_str()),
        };
        match runner.deploy(spec).await {
            Ok(crate::runner::DeployAccepted::Started { revision, rollout, .. }) => {
                eprintln!(
                    "slipway: deploying {name} revision {revision} (rollout {rollout}); it will answer on {listen}"
                )
            }
            Ok(crate::runner::DeployAccepted::Unchanged { revision, .. }) => {
                eprintln!("slipway: {name} is already at revision {revision}; it answers on {listen}")
            }
            Err(error) => eprintln!("slipway: could not deploy {name}: {error}"),
        }
    }
    let app = api::app(ApiState {
        runner: runner.clone(),
        tokens: Arc::new(tokens),
    });
    let lost = runner.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => false,
            () = lost.plane_lost() => true,
        }
    };
    let (stopped, lost) = tokio::sync::oneshot::channel();
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.send(stop.await);
    });
    serving.await?;
    if lost.await.unwrap_or(false) {
        eprintln!(
            "slipway: the data plane stopped unexpectedly, and every app's traffic with it; start `slipway serve` again to restore them"
        );
        return Ok(ExitCode::from(1));
    }
    if args.keep_running {
        eprintln!("slipway: stopped; the data plane keeps every app running (--keep-running)");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("slipway: stopping every local instance (apps in Kubernetes keep running)");
    runner.shutdown().await;
    eprintln!("slipway: stopped");
    Ok(ExitCode::SUCCESS)
}

fn load_tokens(args: &ServeArgs) -> anyhow::Result<Tokens> {
    let mut tokens = Tokens::default();
    if let Some(path) = &args.tokens {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the tokens file {}: {e}", path.display()))?;
        tokens = Tokens::parse_file(&text, path).map_err(anyhow::Error::msg)?;
    }
    if let Ok(text) = std::env::var("SLIPWAY_TOKENS") {
        let from_env = Tokens::parse_env(&text).map_err(anyhow::Error::msg)?;
        if tokens.is_empty() {
            tokens = from_env;
        } else {
            anyhow::bail!("tokens are configured both in --tokens and SLIPWAY_TOKENS; use one");
        }
    }
    if tokens.is_empty() {
        let path = args.data_dir.join(ADMIN_TOKEN_FILE);
        let token = match std::fs::read_to_string(&path) {
            Ok(token) => token.trim().to_string(),
            Err(_) => {
                let token = crate::auth::generate_token()?;
                write_private(&path, &token)?;
                eprintln!(
                    "slipway: created an admin token in {} (the CLI reads it from there)",
                    path.display()
                );
                token
            }
        };
        tokens.add(Scope::Admin, &token).map_err(anyhow::Error::msg)?;
    }
    Ok(tokens)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
