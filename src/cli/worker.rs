//! Work spread over processes: `worker` (a Redis worker process: claim,
//! run, report, until stopped) and `shard` (which coordinator's shard a
//! tenant falls in).

use std::io::Write;

use anyhow::bail;

use super::output::print_json;
use super::process::{kill_steps_and_exit, live_runtime, signals};

#[allow(clippy::too_many_arguments)]
pub(super) fn worker_cmd(
    redis: &str,
    prefix: &str,
    concurrency: u32,
    handlers: &[String],
    id: Option<&str>,
    timeout_sec: u64,
    lease_ms: u64,
    idle_exit_sec: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::runtime::redis::worker::{Stop, WorkerOptions, run_worker};
    let all = crate::runtime::handler::Handlers::builtin();
    let chosen = all.only(handlers).map_err(|name| {
        anyhow::anyhow!(
            "--handlers: no handler named `{name}` (this build has: {})",
            all.names().join(", ")
        )
    })?;
    let id = id.map_or_else(
        || {
            let host = gethostname::gethostname();
            format!("worker-{}-{}", host.to_string_lossy(), std::process::id())
        },
        str::to_owned,
    );
    crate::domain::limits::check_id("--id", &id).map_err(|r| anyhow::anyhow!("{r}"))?;
    let options = WorkerOptions {
        id: crate::domain::WorkerId(id.clone()),
        concurrency,
        timeout: std::time::Duration::from_secs(timeout_sec),
        idle_exit: idle_exit_sec.map(std::time::Duration::from_secs),
    };
    let config = crate::runtime::redis::StreamsConfig {
        prefix: prefix.to_owned(),
        lease: std::time::Duration::from_millis(lease_ms),
        ..Default::default()
    };
    if timeout_sec.saturating_mul(1_000) >= lease_ms {
        bail!(
            "--lease-ms ({lease_ms}) must be longer than --timeout-sec ({timeout_sec} s), or this worker's running attempts would be taken over"
        );
    }
    let runtime = live_runtime()?;
    let stop = Stop::new();
    let stats = runtime.block_on(async {
        // SIGINT (Ctrl-C) and SIGTERM (Docker, Kubernetes, systemd) stop
        // the worker the same way, also while Redis is away.
        let (mut interrupt, mut terminate) = signals()?;
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                tracing::warn!(
                    "stopping: running attempts finish and report first (a second signal kills them)"
                );
                stop.set();
                kill_steps_and_exit(
                    &mut interrupt,
                    &mut terminate,
                    " again: stopped, running exec steps killed; their tasks run again after their lease",
                )
                .await
            });
        }
        let streams = crate::runtime::redis::RedisStreams::connect(redis, config).await?;
        anyhow::Ok(run_worker(streams, chosen, options, stop).await?)
    })?;
    writeln!(
        out,
        "worker {id}: {} attempts, {} succeeded, {} failed",
        stats.executed, stats.succeeded, stats.failed
    )?;
    Ok(())
}

/// `runledger shard TENANT --of N`: the shard a tenant's id hashes to.
pub(super) fn shard(tenant: &str, of: u32, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let shard = crate::workload::shard_of(tenant, of);
    if json {
        print_json(
            out,
            &serde_json::json!({ "tenant": tenant, "shard": shard, "of": of }),
        )
    } else {
        writeln!(out, "{shard}")?;
        Ok(())
    }
}
