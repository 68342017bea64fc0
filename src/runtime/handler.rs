//! Handlers: the code a task runs. Library users register async handlers
//! by name; two are built in — `sim` (the simulated agent step of
//! `domain::sim`, sleeping its simulated latency) and `exec` (runs a
//! program: the task as JSON on stdin, `{"costs": [...], "output": ...}`
//! on stdout).
//!
//! A handler may declare a params schema (`Handler::check_params`; the
//! default accepts anything, `sim`'s is strict) that the workload checker
//! runs on each node's params before anything is appended.
//!
//! A handler reports costs by category; the worker posts them to the
//! ledger with the task's ACK or NACK. Timeouts are the worker's: it drops
//! the handler's future, which kills an `exec` step's process group.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::queue::Report;
use crate::domain::limits::EXEC_OUTPUT_BYTES_MAX;
use crate::domain::{Category, Micros, ParamError, Params, RunId, TaskId, TenantId};

/// What a handler knows about the task it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub run: RunId,
    pub task: TaskId,
    pub tenant: TenantId,
    pub attempt: u32,
    /// The run's seed, for handlers that simulate.
    pub seed: u64,
    pub params: Params,
    /// Outputs of the task's parents.
    pub inputs: Vec<(TaskId, Params)>,
}

/// A finished attempt: its output and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub output: Params,
    pub costs: Vec<(Category, Micros)>,
}

/// A failed attempt: why, and what it cost up to the failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub costs: Vec<(Category, Micros)>,
}

impl From<String> for Failure {
    fn from(error: String) -> Self {
        Failure {
            error,
            costs: Vec::new(),
        }
    }
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Outcome, Failure>> + Send + 'a>>;

/// User code for one kind of task.
pub trait Handler: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> HandlerFuture<'a>;

    /// The handler's params schema: checks a node's params (as written in
    /// the workload) before anything runs; the workload checker reports an
    /// error as `file:line: params.<key>: …`. The default accepts anything.
    fn check_params(&self, params: &serde_json::Value) -> Result<(), ParamError> {
        let _ = params;
        Ok(())
    }
}

/// Handlers by name.
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, Arc<dyn Handler>>,
}

impl Handlers {
    /// The built-ins: `sim` and `exec`.
    pub fn builtin() -> Self {
        let mut handlers = Handlers::default();
        handlers.register("sim", SimHandler);
        handlers.register("exec", ExecHandler);
        handlers
    }

    pub fn register(&mut self, name: &str, handler: impl Handler + 'static) {
        self.map.insert(name.to_owned(), Arc::new(handler));
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.map.get(name).cloned()
    }

    /// Runs one attempt of handler `name` under `timeout`, on a task of its
    /// own, so that a panic is a failure and a timeout drops it (which
    /// kills an `exec` child): what the worker reports.
    pub async fn attempt(&self, name: &str, ctx: TaskContext, timeout: Duration) -> Report {
        let failed = |error: String, timed_out| Report::Failed {
            error,
            timed_out,
            costs: Vec::new(),
        };
        let Some(handler) = self.get(name) else {
            return failed(format!("this worker has no handler named `{name}`"), false);
        };
        let mut running = tokio::spawn(async move { handler.run(&ctx).await });
        match tokio::time::timeout(timeout, &mut running).await {
            Ok(Ok(Ok(done))) => Report::Done {
                output: done.output,
                costs: done.costs,
            },
            Ok(Ok(Err(Failure { error, costs }))) => Report::Failed {
                error,
                timed_out: false,
                costs,
            },
            Ok(Err(join)) => failed(format!("the handler panicked: {join}"), false),
            Err(_) => {
                running.abort();
                failed(format!("timed out after {} ms", timeout.as_millis()), true)
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.map.keys().map(String::as_str).collect()
    }

    /// Checks a node's params with the schema of handler `name` (any
    /// params for a name not here: the checker refuses unknown names).
    pub fn check_params(&self, name: &str, params: &serde_json::Value) -> Result<(), ParamError> {
        self.map
            .get(name)
            .map_or(Ok(()), |handler| handler.check_params(params))
    }

    /// Only the handlers named in `names`, or the first name not here.
    pub fn only(&self, names: &[String]) -> Result<Handlers, String> {
        let mut chosen = Handlers::default();
        for name in names {
            let handler = self.map.get(name).ok_or_else(|| name.clone())?;
            chosen.map.insert(name.clone(), Arc::clone(handler));
        }
        Ok(chosen)
    }
}

/// The workload checker asks the registered handlers.
impl crate::workload::HandlerSchemas for Handlers {
    fn names(&self) -> Vec<&str> {
        Handlers::names(self)
    }

    fn check_params(&self, handler: &str, params: &serde_json::Value) -> Result<(), ParamError> {
        Handlers::check_params(self, handler, params)
    }
}

/// The simulated agent step, in real time.
pub struct SimHandler;

impl Handler for SimHandler {
    fn check_params(&self, params: &serde_json::Value) -> Result<(), ParamError> {
        crate::domain::sim::check_params(params)
    }

    fn run<'a>(&'a self, ctx: &'a TaskContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let key = ctx.task.draw_key(&ctx.run);
            let sim = crate::domain::sim::simulate(ctx.seed, key, ctx.attempt, &ctx.params);
            tokio::time::sleep(Duration::from_micros(sim.latency_micros.max(0) as u64)).await;
            match sim.result {
                // The reward travels in the output, as an `exec` handler's would.
                Ok(output) => Ok(Outcome {
                    output: with_reward(output, sim.reward_bp),
                    costs: sim.costs,
                }),
                Err(error) => Err(Failure {
                    error,
                    costs: sim.costs,
                }),
            }
        })
    }
}

/// `output` with `reward_bp` added (when it is a JSON object).
fn with_reward(output: Params, reward_bp: i32) -> Params {
    let mut value = output.to_value();
    match value.as_object_mut() {
        Some(map) => {
            map.insert("reward_bp".into(), reward_bp.into());
            Params::from_value(&value)
        }
        None => output,
    }
}

/// Runs `params.argv` (program and arguments); the task goes to its stdin
/// as JSON and it answers on stdout with
/// `{"costs": [{"category": "llm", "amount_micros": 1200}], "output": ...}`.
/// A non-zero exit or an unreadable answer is a failure, and so is more
/// than [`EXEC_OUTPUT_BYTES_MAX`] on stdout or on stderr (the step is
/// stopped there). The program runs in a process group of its own, which
/// is killed once it has exited (its answer read), or when the attempt is
/// dropped (a timeout): background children never outlive their step.
pub struct ExecHandler;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecCost {
    category: Category,
    amount_micros: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecAnswer {
    #[serde(default)]
    costs: Vec<ExecCost>,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

fn parse_answer(stdout: &[u8]) -> Result<Outcome, String> {
    let text = String::from_utf8_lossy(stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let answer: ExecAnswer = serde_json::from_str(last).map_err(|e| {
        format!("the program's answer is not {{\"costs\": [...], \"output\": ...}}: {e}")
    })?;
    let mut costs = Vec::new();
    for c in answer.costs {
        if c.amount_micros < 0 {
            return Err(format!(
                "the program reported a negative cost ({})",
                c.amount_micros
            ));
        }
        costs.push((c.category, Micros(c.amount_micros)));
    }
    Ok(Outcome {
        output: answer
            .output
            .map_or_else(Params::null, |v| Params::from_value(&v)),
        costs,
    })
}

impl Handler for ExecHandler {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let params = ctx.params.to_value();
            let argv: Vec<String> = params
                .get("argv")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let Some((program, args)) = argv.split_first() else {
                return Err(Failure::from(
                    "exec needs params.argv = [program, args...]".to_owned(),
                ));
            };
            let spec = serde_json::json!({
                "run": ctx.run,
                "task": ctx.task,
                "tenant": ctx.tenant,
                "attempt": ctx.attempt,
                "params": params,
                "inputs": ctx.inputs.iter().map(|(t, o)| serde_json::json!({"task": t, "output": o.to_value()})).collect::<Vec<_>>(),
            });
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Failure::from(format!("cannot start `{program}`: {e}")))?;
            // Killed whole when this attempt ends, however it ends.
            let mut group = ProcessGroup::of(&child);
            // Feed stdin while stdout is read: a program that answers before
            // it has read all of a large task must not deadlock on a pipe.
            if let Some(mut stdin) = child.stdin.take() {
                let input = spec.to_string().into_bytes();
                tokio::spawn(async move {
                    let _ = stdin.write_all(&input).await;
                });
            }
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                return Err(Failure::from(format!("`{program}` has no output pipes")));
            };
            let (status, out, err) = run_to_exit(&mut child, &mut group, stdout, stderr)
                .await
                .map_err(|e| Failure::from(e.message(program)))?;
            if !status.success() {
                let stderr = String::from_utf8_lossy(&err);
                let tail: String = stderr
                    .lines()
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect();
                let code = status
                    .code()
                    .map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"));
                return Err(Failure::from(format!(
                    "`{program}` exited with {code}: {tail}"
                )));
            }
            parse_answer(&out).map_err(Failure::from)
        })
    }
}

/// The process group an `exec` step runs in (its own, led by the step):
/// killed with SIGKILL by [`ProcessGroup::kill`] or when dropped — after
/// the answer, when the output passes its limit, or when a timeout drops
/// the attempt — so no background child of the step outlives it.
struct ProcessGroup(Option<rustix::process::Pid>);

/// The process groups of the `exec` steps running in this process, for
/// [`kill_running_steps`].
static RUNNING: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn running() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<i32>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn kill_group(group: rustix::process::Pid) {
    // ESRCH: every process of the group has ended already.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
}

/// Kills every `exec` step running in this process, each with its process
/// group, for a process about to exit on a signal: the steps run in groups
/// of their own, which a terminal's Ctrl-C does not reach.
pub fn kill_running_steps() {
    let groups = std::mem::take(&mut *running());
    for group in groups
        .into_iter()
        .filter_map(rustix::process::Pid::from_raw)
    {
        kill_group(group);
    }
}

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            running().insert(group.as_raw_nonzero().get());
        }
        ProcessGroup(group)
    }

    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            running().remove(&group.as_raw_nonzero().get());
            kill_group(group);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// After the step exits, how long its pipes may stay open: what it wrote
/// is already in them, so this is only reached when a process that left
/// the step's group (e.g. with `setsid`) still holds them.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Why an `exec` step's output could not be read.
enum ReadError {
    /// Past [`EXEC_OUTPUT_BYTES_MAX`] on this stream.
    TooLong(&'static str),
    Io(&'static str, std::io::Error),
    Wait(std::io::Error),
}

impl ReadError {
    fn message(&self, program: &str) -> String {
        match self {
            ReadError::TooLong(stream) => format!(
                "`{program}` wrote more than EXEC_OUTPUT_BYTES_MAX ({EXEC_OUTPUT_BYTES_MAX} bytes) to {stream}; it was stopped"
            ),
            ReadError::Io(stream, e) => format!("reading the {stream} of `{program}`: {e}"),
            ReadError::Wait(e) => format!("`{program}` failed: {e}"),
        }
    }
}

/// Reads `from` to its end into `into`, holding at most `max` bytes.
async fn read_capped(
    mut from: impl tokio::io::AsyncRead + Unpin,
    into: &mut Vec<u8>,
    stream: &'static str,
) -> Result<(), ReadError> {
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        let n = from
            .read(&mut chunk)
            .await
            .map_err(|e| ReadError::Io(stream, e))?;
        if n == 0 {
            return Ok(());
        }
        if into.len() + n > EXEC_OUTPUT_BYTES_MAX {
            return Err(ReadError::TooLong(stream));
        }
        into.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the step's stdout and stderr (each up to its limit) until the
/// step exits — not until the pipes close, which a background child may
/// hold open — then kills its group and reads what is left in the pipes.
/// On an error the group is killed when the caller drops it.
async fn run_to_exit(
    child: &mut tokio::process::Child,
    group: &mut ProcessGroup,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), ReadError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = {
        let reading_out = read_capped(stdout, &mut out, "stdout");
        let reading_err = read_capped(stderr, &mut err, "stderr");
        tokio::pin!(reading_out, reading_err);
        let (mut out_open, mut err_open) = (true, true);
        let status = loop {
            tokio::select! {
                read = &mut reading_out, if out_open => {
                    read?;
                    out_open = false;
                }
                read = &mut reading_err, if err_open => {
                    read?;
                    err_open = false;
                }
                status = child.wait() => break status.map_err(ReadError::Wait)?,
            }
        };
        group.kill();
        let drain = async {
            let (read_out, read_err) = tokio::join!(
                async { if out_open { reading_out.await } else { Ok(()) } },
                async { if err_open { reading_err.await } else { Ok(()) } }
            );
            read_out.and(read_err)
        };
        if let Ok(read) = tokio::time::timeout(DRAIN_GRACE, drain).await {
            read?;
        }
        status
    };
    Ok((status, out, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_answer_parses_costs_and_output_and_refuses_garbage() {
        let ok = parse_answer(b"log line\n{\"costs\":[{\"category\":\"llm\",\"amount_micros\":12}],\"output\":{\"a\":1}}\n").unwrap();
        assert_eq!(ok.costs, vec![(Category::Llm, Micros(12))]);
        assert_eq!(ok.output.as_json(), r#"{"a":1}"#);
        assert!(parse_answer(b"not json").is_err());
        assert!(
            parse_answer(b"{\"costs\":[{\"category\":\"llm\",\"amount_micros\":-1}]}")
                .unwrap_err()
                .contains("negative")
        );
        assert!(parse_answer(b"{\"costs\":[{\"category\":\"gpu\",\"amount_micros\":1}]}").is_err());
    }
}
