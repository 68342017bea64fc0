//! The command line's arguments: clap's derive structs, validation only,
//! and `--data` / `--json` added to exactly the commands that honour them.
//! Nothing here opens a ledger or prints. The flag names are a
//! **contract**.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::log::Durability;

#[derive(Parser, Debug)]
#[command(
    name = "runledger",
    version,
    about = "Multi-tenant task engine with a hash-chained event ledger"
)]
pub struct Cli {
    /// Data directory of the ledger, for the commands that use one (also
    /// accepted after the command) [env: RUNLEDGER_DATA] [default:
    /// ./runledger-data].
    #[arg(long = "data", id = "data", value_name = "DATA")]
    data_flag: Option<PathBuf>,
    /// Machine-readable JSON output, for the commands that offer it (also
    /// accepted after the command).
    #[arg(long = "json", id = "json")]
    json_flag: bool,
    #[command(subcommand)]
    pub command: Command,
    /// The data directory this command uses: `--data` (before or after the
    /// command), else `RUNLEDGER_DATA`, else `./runledger-data`. Set by
    /// [`parse`].
    #[arg(skip)]
    pub data: PathBuf,
    /// Whether JSON output was asked for, before or after the command.
    #[arg(skip)]
    pub json: bool,
    /// Whether `--data` was on the command line (not from `RUNLEDGER_DATA`
    /// or the default): set by [`parse`].
    #[arg(skip)]
    pub data_on_command_line: bool,
}

/// The commands that read or write a ledger, and so take `--data`.
const USES_DATA: &[&str] = &[
    "ingest",
    "log",
    "verify",
    "replay",
    "tenants",
    "queue",
    "runs",
    "workers",
    "decisions",
    "run",
    "resume",
    "artifacts",
    "diff",
    "export",
    "checkpoint",
    "demo",
    "bench ledger",
];

/// The commands with a machine-readable output, and so take `--json`.
const USES_JSON: &[&str] = &[
    "ingest",
    "log",
    "verify",
    "replay",
    "tenants",
    "queue",
    "runs",
    "workers",
    "decisions",
    "run",
    "resume",
    "artifacts",
    "diff",
    "verify-export",
    "checkpoint",
    "demo",
    "shard",
    "bench queue",
    "bench check",
    "bench governance",
    "bench export",
    "bench redis",
    "bench distributed",
    "bench ledger",
];

/// The whole command line: the derived one, with `--data` and `--json`
/// added to exactly the commands that honour them (so `runledger worker
/// --help` does not offer a `--data` it would ignore).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    fn add(command: clap::Command, path: &[&str], arg: &clap::Arg) -> clap::Command {
        match path {
            [] => command.arg(arg.clone()),
            [name, rest @ ..] => command.mut_subcommand(*name, |sub| add(sub, rest, arg)),
        }
    }
    let data = clap::Arg::new("data")
        .long("data")
        .value_name("DATA")
        .value_parser(clap::value_parser!(PathBuf))
        .help("Data directory of the ledger [env: RUNLEDGER_DATA] [default: ./runledger-data]");
    let json = clap::Arg::new("json")
        .long("json")
        .action(clap::ArgAction::SetTrue)
        .help("Machine-readable JSON output");
    let mut command = Cli::command();
    for path in USES_DATA {
        command = add(command, &path.split(' ').collect::<Vec<_>>(), &data);
    }
    for path in USES_JSON {
        command = add(command, &path.split(' ').collect::<Vec<_>>(), &json);
    }
    command
}

/// Parses the process's arguments (exiting with clap's message and code 2
/// on bad usage), resolving `--data` and `--json`.
pub fn parse() -> Cli {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] over given arguments: `--data` and `--json` before the command
/// are accepted only for a command that honours them.
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let mut path = Vec::new();
    let mut leaf = &matches;
    while let Some((name, sub)) = leaf.subcommand() {
        path.push(name);
        leaf = sub;
    }
    let path = path.join(" ");
    for (flag, given, uses, what) in [
        ("data", cli.data_flag.is_some(), USES_DATA, "ledger"),
        ("json", cli.json_flag, USES_JSON, "JSON output"),
    ] {
        if given && !uses.contains(&path.as_str()) {
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("`--{flag}` is not used by `runledger {path}`: it has no {what}"),
            ));
        }
    }
    let leaf_data = leaf.try_get_one::<PathBuf>("data").ok().flatten().cloned();
    let given = leaf_data.or(cli.data_flag.take());
    cli.data_on_command_line = given.is_some();
    cli.data = given
        .or_else(|| std::env::var_os("RUNLEDGER_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./runledger-data"));
    cli.json = cli.json_flag || leaf.try_get_one::<bool>("json").ok().flatten() == Some(&true);
    Ok(cli)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Append events given as JSON lines (a file, or - for stdin); all or
    /// nothing. Record lines (as `log --json` prints them) must continue the
    /// chain and come before any bare event.
    Ingest {
        /// JSON-lines file, or `-` for standard input.
        file: String,
    },
    /// Show records with seq, time, hash and event.
    Log {
        /// Only the records of this run (its tasks' events included).
        #[arg(long)]
        run: Option<String>,
        /// Only the records of this tenant (its tasks' events included).
        #[arg(long)]
        tenant: Option<String>,
        /// First seq to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Show at most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check the whole hash chain, the checkpoints and the indices against
    /// the log; exit 1 naming the first bad seq.
    Verify {
        /// Rebuild the indices (by run, by tenant) from the log, after
        /// checking them, when the chain itself holds.
        #[arg(long)]
        repair_indices: bool,
    },
    /// Rebuild every projection from the log and print their digests; with
    /// --check, also run every recorded decision again and compare.
    Replay {
        /// Only the records of this run (plus global ones such as tenant
        /// registrations); with --check, only this run's decisions.
        #[arg(long)]
        run: Option<String>,
        /// Re-run every decision (admission, reservation, settlement, retry
        /// schedule, degradation, learning) on the state just before it and
        /// compare; exit 1 at the first divergence.
        #[arg(long)]
        check: bool,
        /// With --check: decide with these thresholds (TOML) instead of
        /// today's, to see what a change would have decided differently.
        #[arg(long, requires = "check")]
        policy: Option<PathBuf>,
        /// With --check: go on after a divergence and count them all.
        #[arg(long, requires = "check")]
        keep_going: bool,
    },
    /// Tenant budgets, spend by category, status, concurrency, learning intensity.
    Tenants,
    /// Queue state: counts, ready tasks by priority, leases, dead letters.
    Queue,
    /// Run summaries.
    Runs,
    /// Workers and their statistics.
    Workers,
    /// Governance decisions with their reasons: admission denials, budget
    /// status changes, overruns, degradation verdicts, learning adjustments.
    Decisions {
        /// Only the decisions about this run.
        #[arg(long)]
        run: Option<String>,
        /// Only the decisions about this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Execute a workload file to completion.
    Run {
        /// The workload (TOML).
        workload: PathBuf,
        /// Override the workload's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The run's id (default: the workload's `run`, else `run-<seed>`).
        #[arg(long)]
        run_id: Option<String>,
        /// Also write the run's summary and artifact files here.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Finish a run whose process died, from its ledger (with `--queue
    /// redis`, a coordinator's: its workers' results are waiting in Redis).
    Resume {
        /// The run (default: the most recent unfinished one).
        run: Option<String>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Regenerate the artifact files (budget usage, cost reports, period
    /// archives, learning profiles and history, cost decisions) from the ledger.
    Artifacts {
        /// Only the files of this run: its tasks' decisions, its tenants, its events.
        #[arg(long)]
        run: Option<String>,
        /// The directory to write to.
        #[arg(long, default_value = "artifacts")]
        out: PathBuf,
    },
    /// Compare two runs of the same workload: the first divergence and a
    /// summary of differences (tasks, cost per tenant, decisions); exit 0
    /// when they are the same, 1 when they differ.
    Diff {
        /// The first run (in --data).
        run_a: String,
        /// The second run (in --data-b if given, else in --data).
        run_b: String,
        /// Read RUN_B from this data directory instead.
        #[arg(long)]
        data_b: Option<PathBuf>,
    },
    /// A tenant's cost history (reservations, costs by category, releases,
    /// overruns, resets, budget changes, governance verdicts) with running
    /// totals and the Merkle proof that ties every row to the ledger's head.
    Export {
        /// The tenant whose history to export.
        #[arg(long)]
        tenant: String,
        /// Rows recorded at or after this time (YYYY-MM-DD = midnight UTC, or RFC 3339).
        #[arg(long, value_parser = parse_date)]
        from: Option<crate::domain::Timestamp>,
        /// Rows recorded before this time, exclusive (YYYY-MM-DD = midnight UTC, or RFC 3339).
        #[arg(long, value_parser = parse_date)]
        to: Option<crate::domain::Timestamp>,
        /// `jsonl` for machines, `csv` for people.
        #[arg(long, default_value = "jsonl", value_parser = parse_format)]
        format: crate::audit::export::Format,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Prove against the published checkpoint at this seq instead of the head.
        #[arg(long)]
        checkpoint: Option<u64>,
    },
    /// Check an export file alone, offline; exit 1 naming the first bad row.
    VerifyExport {
        /// The export file (`runledger export`), JSON lines or CSV.
        file: PathBuf,
        /// The head hash (or published checkpoint root) the export must prove against.
        #[arg(long)]
        head: Option<String>,
    },
    /// Record the Merkle root over every record up to the head, for a tenant
    /// or an auditor to keep; `verify` checks it from then on.
    Checkpoint,
    /// Run the built-in multi-tenant RAG demo on the embedded ledger.
    Demo {
        /// Tenants, each with its own budget and pipelines.
        #[arg(long, default_value_t = 4)]
        tenants: u32,
        /// Pipeline runs per tenant.
        #[arg(long, default_value_t = 20)]
        runs: u32,
        /// Every simulated latency, failure and cost derives from it.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Tasks running at once.
        #[arg(long, default_value_t = 8)]
        max_concurrency: u32,
        /// Also write the run's summary and artifact files here.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// A worker process: pulls tasks from Redis, runs their handlers under
    /// the timeout and reports the results to the coordinator (which owns
    /// the ledger: `run --queue redis`).
    Worker {
        /// The Redis to pull from, e.g. redis://10.0.0.5:6379.
        #[arg(long = "redis-url", alias = "redis")]
        redis: String,
        /// The namespace the coordinator uses.
        #[arg(long = "redis-prefix", alias = "prefix", default_value = "runledger")]
        prefix: String,
        /// Attempts running at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
        concurrency: u32,
        /// The handlers this worker runs (a task naming another is NACKed).
        #[arg(long, value_delimiter = ',', default_value = "sim,exec")]
        handlers: Vec<String>,
        /// This worker's id in the ledger (default: worker-<host>-<pid>).
        #[arg(long)]
        id: Option<String>,
        /// An attempt running longer is NACKed as timed out.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_sec: u64,
        /// A claimed task silent this long is taken over by another worker.
        #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
        lease_ms: u64,
        /// Exit after this many seconds with nothing to do.
        #[arg(long)]
        idle_exit_sec: Option<u64>,
        /// Work for the coordinator of shard I of N (`I/N`).
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(u32, u32)>,
    },
    /// Which of N shard coordinators runs a tenant (a stable hash of its id).
    Shard {
        /// The tenant id.
        tenant: String,
        /// The number of shards.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        of: u32,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// Which queue a real-time run uses (`run`, `demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// `memory` (default) or `redis` (overrides the workload's
    /// `execution.queue.type`); with `redis` the run is coordinated here and
    /// executed by this process's workers and any `runledger worker`.
    #[arg(long, value_parser = ["memory", "redis"])]
    pub queue: Option<String>,
    /// The Redis URL (overrides `execution.queue.redis_url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The namespace in Redis (workers must use the same).
    #[arg(long, default_value = "runledger")]
    pub redis_prefix: String,
    /// Workers in this process on the Redis queue (default: the
    /// workload's `num_workers`; 0 leaves the work to `runledger worker`s).
    #[arg(long)]
    pub local_workers: Option<u32>,
    /// A claimed task silent this long is taken over by another worker.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_ms: u64,
    /// Coordinate only shard I of N (`I/N`): the tenants whose id hashes
    /// there (`runledger shard TENANT --of N`), in this data directory, on
    /// the Redis namespace `<prefix>-shard-I-of-N`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(u32, u32)>,
}

fn parse_shard(text: &str) -> Result<(u32, u32), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected I/N, e.g. 0/4"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{text}`: expected I/N, e.g. 0/4"))
    };
    let (i, n) = (parse(i)?, parse(n)?);
    if n == 0 || i >= n {
        return Err(format!(
            "`{text}`: the shard index must be below the count (0/4 … 3/4)"
        ));
    }
    Ok((i, n))
}

/// The Redis namespace of shard `shard` of `prefix`.
pub fn shard_prefix(prefix: &str, shard: Option<(u32, u32)>) -> String {
    match shard {
        Some((i, n)) => format!("{prefix}-shard-{i}-of-{n}"),
        None => prefix.to_owned(),
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// submit → dequeue → ack of no-op tasks through the in-memory queue,
    /// beside appending the same events directly.
    Queue {
        /// No-op tasks to push through.
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Worker threads leasing and ACKing.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Tasks a worker leases and ACKs at once.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// The scratch ledger's durability: always, batch or none.
        #[arg(long, default_value = "none", value_parser = parse_durability)]
        durability: Durability,
    },
    /// One serial pipeline of N nodes checked and run to its end on the
    /// simulated executor, for each N in the same run: the time per node
    /// stays flat when the work is linear in the pipeline's length.
    Pipeline {
        /// Pipeline lengths, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [20_000u32, 200_000])]
        nodes: Vec<u32>,
    },
    /// `replay --check` on the demo ledger at this size (decisions/s),
    /// beside a plain replay of the same ledger.
    Check {
        /// Tenants of the demo workload.
        #[arg(long, default_value_t = 40)]
        tenants: u32,
        /// Pipeline runs per tenant.
        #[arg(long, default_value_t = 400)]
        runs: u32,
        /// Tasks running at once in the demo.
        #[arg(long, default_value_t = 256)]
        max_concurrency: u32,
    },
    /// Budget admission checks and cost-agent decisions on a state of many
    /// tenants, beside a plain tenant lookup, and the memory each tenant holds.
    Governance {
        /// Registered tenants, each with spend and one 4-node pipeline.
        #[arg(
            long,
            default_value_t = 1_000_000,
            value_parser = clap::value_parser!(u32)
                .range(1..=i64::from(crate::bench::governance::TENANTS_MAX))
        )]
        tenants: u32,
    },
    /// Export one tenant's cost history from a ledger where its N cost
    /// events are interleaved with other tenants' events, and verify the
    /// file, beside a plain chain `verify` of the same ledger.
    Export {
        /// The tenant's cost events (rows of its export).
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(4..))]
        events: u64,
    },
    /// The Redis Streams transport's dispatch → claim → report → results
    /// cycle, beside raw XADD / XREADGROUP / XACK on the same server.
    Redis {
        /// Tasks to cycle through the transport.
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Entries per pipeline, script call and read.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Use this Redis instead of starting a private redis-server.
        #[arg(long = "redis-url", alias = "url")]
        url: Option<String>,
    },
    /// No-op tasks end to end through Redis: this process coordinates (owns
    /// a scratch ledger) while K `runledger worker` processes execute, for
    /// each K; beside raw XADD / XREADGROUP / XACK and the in-memory queue,
    /// measured in the same run on a private redis-server.
    Distributed {
        /// No-op tasks per measurement.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        tasks: u64,
        /// Worker process counts to measure, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4", value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: Vec<u32>,
        /// Attempts each worker process runs at once (and the in-memory
        /// baseline's worker count).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
        concurrency: u32,
        /// The scratch ledgers' durability (`batch` = flushed every 10 ms,
        /// as `runledger run` does).
        #[arg(long, default_value = "batch", value_parser = parse_durability)]
        durability: Durability,
    },
    /// Append synthetic events, then replay and verify them, beside a raw sled baseline.
    Ledger {
        /// Synthetic events to append.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// always (fsync per group), batch (every 10 ms) or none.
        #[arg(long, default_value = "always", value_parser = parse_durability)]
        durability: Durability,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        appenders: usize,
        /// Events per append call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
}

fn parse_date(text: &str) -> Result<crate::domain::Timestamp, String> {
    crate::audit::export::parse_date(text)
}

fn parse_format(text: &str) -> Result<crate::audit::export::Format, String> {
    match text {
        "jsonl" => Ok(crate::audit::export::Format::Jsonl),
        "csv" => Ok(crate::audit::export::Format::Csv),
        other => Err(format!("unknown format `{other}` (expected csv or jsonl)")),
    }
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    text.parse()
}
