//! The `runledger` command line: argument parsing (validation only), one
//! function per subcommand, grouped by concern, and the exit codes. Errors
//! carry their exit code: 2 for bad input or usage, 1 for a failed check (a
//! damaged chain), 3 for a run with dead-lettered tasks, 0 otherwise.
//!
//! Dependencies run one way: this file routes each command to its group
//! (`ledger`, `views`, `audit`, `run`, `worker`, `bench`); the groups use
//! `args` (the parsed flags), `open` (opening the ledger), `filter`,
//! `output`, `process` (runtime and signals) and `exit`, which use none of
//! them.

mod args;
mod audit;
mod bench;
mod exit;
mod filter;
mod ledger;
mod open;
mod output;
mod process;
mod run;
mod views;
mod worker;

pub use args::{
    BenchCommand, Cli, Command, QueueArgs, command, parse, shard_prefix, try_parse_from,
};
pub use exit::{CheckFailed, Damaged, RunFailed, exit_code};

/// Runs a parsed command line; the error's type decides the exit code
/// (see [`exit_code`]).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    let (data, json) = (cli.data.as_path(), cli.json);
    match cli.command {
        Command::Ingest { ref file } => ledger::ingest(data, file, json, out),
        Command::Log {
            ref run,
            ref tenant,
            from,
            limit,
        } => ledger::log(
            data,
            run.as_deref(),
            tenant.as_deref(),
            from,
            limit,
            json,
            out,
        ),
        Command::Verify { repair_indices } => ledger::verify_cmd(data, repair_indices, json, out),
        Command::Checkpoint => ledger::checkpoint(data, json, out),
        Command::Replay {
            ref run,
            check: true,
            ref policy,
            keep_going,
        } => audit::check_cmd(
            data,
            run.as_deref(),
            policy.as_deref(),
            keep_going,
            json,
            out,
        ),
        Command::Replay { ref run, .. } => audit::replay_cmd(data, run.as_deref(), json, out),
        Command::Tenants => views::tenants(data, json, out),
        Command::Queue => views::queue(data, json, out),
        Command::Runs => views::runs(data, json, out),
        Command::Workers => views::workers(data, json, out),
        Command::Decisions {
            ref run,
            ref tenant,
        } => views::decisions(data, run.as_deref(), tenant.as_deref(), json, out),
        Command::Run {
            ref workload,
            seed,
            ref run_id,
            ref artifacts,
            ref queue,
        } => run::run_cmd(
            data,
            workload,
            seed,
            run_id,
            artifacts.as_deref(),
            queue,
            json,
            out,
        ),
        Command::Resume { ref run, ref queue } => {
            run::resume_cmd(data, run.as_deref(), queue, json, out)
        }
        Command::Demo {
            tenants,
            runs,
            seed,
            max_concurrency,
            ref artifacts,
            ref queue,
        } => run::demo(
            data,
            tenants,
            runs,
            seed,
            max_concurrency,
            artifacts.as_deref(),
            queue,
            json,
            out,
        ),
        Command::Artifacts {
            ref run,
            out: ref dir,
        } => audit::artifacts_cmd(data, run.as_deref(), dir, json, out),
        Command::Diff {
            ref run_a,
            ref run_b,
            ref data_b,
        } => audit::diff_cmd(data, run_a, data_b.as_deref(), run_b, json, out),
        Command::Export {
            ref tenant,
            from,
            to,
            format,
            ref out,
            checkpoint,
        } => {
            let options = crate::audit::export::ExportOptions {
                tenant: crate::domain::TenantId(tenant.clone()),
                from,
                to,
                checkpoint,
            };
            audit::export(data, &options, format, out.as_deref())
        }
        Command::VerifyExport { ref file, ref head } => {
            audit::verify_export(file, head.as_deref(), json, out)
        }
        Command::Shard { ref tenant, of } => worker::shard(tenant, of, json, out),
        Command::Worker {
            ref redis,
            ref prefix,
            concurrency,
            ref handlers,
            ref id,
            timeout_sec,
            lease_ms,
            idle_exit_sec,
            shard,
        } => worker::worker_cmd(
            redis,
            &shard_prefix(prefix, shard),
            concurrency,
            handlers,
            id.as_deref(),
            timeout_sec,
            lease_ms,
            idle_exit_sec,
            out,
        ),
        // Only an explicit --data: RUNLEDGER_DATA names the user's real
        // ledger, which a bench must never append to.
        Command::Bench { ref what } => bench::bench(
            what,
            cli.data_on_command_line.then(|| cli.data.clone()),
            json,
            out,
        ),
    }
}
