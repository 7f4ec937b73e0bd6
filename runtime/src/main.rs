use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A simulated rollout's failures are what `simulate` and `test` print (the timeline): the
    // runner's own warnings about them would say it twice, on stderr.
    let simulating = matches!(std::env::args().nth(1).as_deref(), Some("simulate" | "test"));
    let default = if simulating { "error" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in log files and CI output.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = slipway::dataplane::runtime_builder()
        .build()
        .expect("start the tokio runtime");
    runtime.block_on(slipway::cli::main())
}
