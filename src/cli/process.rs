//! The process around a command that executes work (`run`, `demo`,
//! `resume`, `worker`): its tokio runtime, and its exit on SIGINT /
//! SIGTERM after killing the running `exec` steps' process groups, which
//! a terminal's Ctrl-C no longer reaches.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The multi-threaded tokio runtime a command runs its work on.
pub(super) fn live_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// SIGINT and SIGTERM, listened for (inside a runtime).
pub(super) fn signals() -> anyhow::Result<(Signal, Signal)> {
    let interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok((interrupt, terminate))
}

/// Waits for SIGINT or SIGTERM, kills the running `exec` steps and exits
/// with 130 or 143, as the signal would have, saying so on stderr: the
/// signal's name followed by `said`.
pub(super) async fn kill_steps_and_exit(
    interrupt: &mut Signal,
    terminate: &mut Signal,
    said: &str,
) -> ! {
    let (name, code) = tokio::select! {
        _ = interrupt.recv() => ("SIGINT", 130),
        _ = terminate.recv() => ("SIGTERM", 143),
    };
    crate::runtime::handler::kill_running_steps();
    eprintln!("{name}{said}");
    std::process::exit(code);
}

/// On SIGINT or SIGTERM, kills the running `exec` steps and exits with 130
/// or 143; the ledger is safe as after any kill, and `runledger resume`
/// finishes the run.
pub(super) fn exit_on_signal(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let _inside = runtime.enter();
    let (mut interrupt, mut terminate) = signals()?;
    runtime.spawn(async move {
        kill_steps_and_exit(
            &mut interrupt,
            &mut terminate,
            ": stopped, running exec steps killed; `runledger resume` finishes the run",
        )
        .await
    });
    Ok(())
}
