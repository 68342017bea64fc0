//! `runledger`: install the log subscriber (warnings and errors on stderr,
//! `RUST_LOG` for more), parse, run, map errors to exit codes (0 ok, 1 a
//! check failed, 2 bad input or usage).

use std::process::ExitCode;

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    // Warnings (e.g. a Redis call retried) and errors on stderr; RUST_LOG
    // (`info`, `runledger=debug`, ...) shows more.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::WARN)
        });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    let cli = runledger::cli::parse();
    match runledger::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = runledger::cli::exit_code(&error);
            if code != 0 {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

// Replay and the writer allocate many small strings (ids); mimalloc is
// markedly faster than glibc's allocator for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
