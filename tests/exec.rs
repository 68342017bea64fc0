//! The `exec` handler and handler answers at their limits: output past
//! `EXEC_OUTPUT_BYTES_MAX` is cut and NACKed naming the limit, an answer
//! whose output params pass `PARAMS_BYTES_MAX` is NACKed (never appended),
//! a failure's reason is cut at `ERROR_BYTES_MAX`; exec children run in
//! their own process group, which is killed after the answer and on
//! timeout; relative program paths resolve against the workload's
//! directory.

mod support;

use support::bin::BIN;
use support::ledger::{assert_verifies, events_sized};
use support::live::{run, script};

use std::path::Path;
use std::time::{Duration, Instant};

use runledger::domain::limits::{
    ERROR_BYTES_MAX, EVENT_BYTES_MAX, EXEC_OUTPUT_BYTES_MAX, PARAMS_BYTES_MAX,
};
use runledger::domain::{Event, Params};
use runledger::runtime::handler::{
    Failure, Handler, HandlerFuture, Handlers, Outcome, TaskContext,
};
use runledger::workload::Workload;

/// One pipeline of `nodes`, `runs` times, two attempts per task.
fn workload_text(nodes: &str, runs: u32, timeout_sec: f64) -> String {
    format!(
        r#"
seed = 5
[execution]
default_cost_ceiling_micros = 1000
[execution.pool]
max_concurrency = 2
[execution.queue]
max_attempts = 2
retry_base_ms = 10
retry_max_ms = 10
[execution.workers]
num_workers = 2
worker_timeout_sec = {timeout_sec}
[[tenants]]
id = "acme"
budget_micros = 100000000
[[pipelines]]
id = "p"
nodes = [ {nodes} ]
[[submissions]]
tenant = "acme"
pipeline = "p"
runs = {runs}
"#
    )
}

fn exec_node(id: &str, program: &str) -> String {
    format!(r#"{{ id = "{id}", handler = "exec", params = {{ argv = ["{program}"] }} }}"#)
}

/// Every event of the ledger in `dir`, which verifies, with the size of
/// its canonical bytes.
fn events(dir: &Path) -> Vec<(Event, usize)> {
    assert_verifies(dir);
    events_sized(dir)
}

fn nack_errors(evs: &[(Event, usize)]) -> Vec<String> {
    evs.iter()
        .filter_map(|(e, _)| match e {
            Event::TaskNacked { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn acked(evs: &[(Event, usize)]) -> usize {
    evs.iter()
        .filter(|(e, _)| matches!(e, Event::TaskAcked { .. }))
        .count()
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits (a safety net, not a measure) for every pid in `file` to end;
/// the ones still running.
fn still_running(file: &Path) -> Vec<String> {
    let pids: Vec<String> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!pids.is_empty(), "no pid was written to {}", file.display());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let running: Vec<String> = pids.iter().filter(|p| !ended(p)).cloned().collect();
        if running.is_empty() || Instant::now() > until {
            for pid in &running {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status();
            }
            return running;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stdout_past_the_limit_is_nacked_naming_it_even_with_a_good_answer() {
    let dir = tempfile::tempdir().unwrap();
    let over = EXEC_OUTPUT_BYTES_MAX + 1;
    let chatty = script(
        dir.path(),
        "chatty.sh",
        &format!(
            "cat >/dev/null; head -c {over} /dev/zero | tr '\\0' x; echo; echo '{{\"output\":1}}'"
        ),
    );
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &chatty), 1, 30.0)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!((report.acked, report.dead_lettered), (0, 1));
    let evs = events(&data);
    let errors = nack_errors(&evs);
    assert_eq!(errors.len(), 2, "{errors:?}");
    for error in &errors {
        assert!(
            error.contains("EXEC_OUTPUT_BYTES_MAX") && error.contains("stdout"),
            "{error}"
        );
    }
}

#[test]
fn stderr_past_the_limit_is_nacked_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let over = EXEC_OUTPUT_BYTES_MAX + 1;
    let noisy = script(
        dir.path(),
        "noisy.sh",
        &format!("cat >/dev/null; head -c {over} /dev/zero >&2; echo '{{\"output\":1}}'"),
    );
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &noisy), 1, 30.0)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!((report.acked, report.dead_lettered), (0, 1));
    for error in nack_errors(&events(&data)) {
        assert!(
            error.contains("EXEC_OUTPUT_BYTES_MAX") && error.contains("stderr"),
            "{error}"
        );
    }
}

#[test]
fn a_step_that_never_stops_writing_is_cut_at_the_limit_and_killed_and_the_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // `exec yes`: the shell becomes `yes`, whose pid is the one written.
    let endless = script(
        dir.path(),
        "endless.sh",
        &format!("cat >/dev/null; echo $$ >> {}; exec yes", pids.display()),
    );
    // The timeout is only a safety net: the limit ends each attempt first.
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &endless), 2, 60.0)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!(
        (report.acked, report.dead_lettered, report.timeouts),
        (0, 2, 0)
    );
    let evs = events(&data);
    let errors = nack_errors(&evs);
    assert_eq!(errors.len(), 4, "{errors:?}");
    for error in &errors {
        assert!(error.contains("EXEC_OUTPUT_BYTES_MAX"), "{error}");
    }
    assert!(
        evs.iter()
            .any(|(e, _)| matches!(e, Event::RunFinished { .. }))
    );
    assert_eq!(still_running(&pids), Vec::<String>::new(), "`yes` killed");
}

#[test]
fn an_answer_with_a_background_child_holding_stdout_is_acked_and_the_child_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let answers = script(
        dir.path(),
        "answers.sh",
        &format!(
            "cat >/dev/null\nsleep 60 &\necho $! >> {}\necho '{{\"output\":{{\"ok\":true}}}}'\nexit 0",
            pids.display()
        ),
    );
    // A timeout far above what the step needs: reading until the pipe's
    // EOF (which the background child holds) would run into it.
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &answers), 1, 20.0)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!(
        (report.acked, report.dead_lettered, report.timeouts),
        (1, 0, 0)
    );
    let evs = events(&data);
    assert!(evs.iter().any(
        |(e, _)| matches!(e, Event::TaskAcked { output, .. } if output.as_json() == r#"{"ok":true}"#)
    ));
    assert_eq!(
        still_running(&pids),
        Vec::<String>::new(),
        "the background child was killed with the step's process group"
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let stuck = script(
        dir.path(),
        "stuck.sh",
        &format!(
            "cat >/dev/null\nsleep 60 &\necho $! >> {}\nwait",
            pids.display()
        ),
    );
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &stuck), 1, 0.3)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!((report.timeouts, report.dead_lettered), (2, 1));
    assert_eq!(
        still_running(&pids),
        Vec::<String>::new(),
        "the grandchildren of timed-out attempts were killed"
    );
}

/// Answers with a string output of `len` bytes, or fails with a reason
/// of `len` bytes when `fail` is set.
struct Sized {
    len: usize,
    fail: bool,
}

impl Handler for Sized {
    fn run<'a>(&'a self, _: &'a TaskContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let text = "é".repeat(self.len / 2);
            if self.fail {
                return Err(Failure::from(text));
            }
            Ok(Outcome {
                output: Params::from_value(&serde_json::Value::String(text)),
                costs: Vec::new(),
            })
        })
    }
}

fn user_workload() -> Workload {
    let text = workload_text(r#"{ id = "a", handler = "sized" }"#, 1, 30.0);
    Workload::parse_for("w.toml", &text, &["sized", "exec", "sim"]).unwrap()
}

#[test]
fn an_answer_whose_output_passes_params_bytes_max_is_nacked_never_appended() {
    let dir = tempfile::tempdir().unwrap();
    let mut handlers = Handlers::builtin();
    handlers.register(
        "sized",
        Sized {
            len: PARAMS_BYTES_MAX + 2,
            fail: false,
        },
    );
    let data = dir.path().join("data");
    let report = run(&data, &user_workload(), &handlers);
    assert_eq!((report.acked, report.dead_lettered), (0, 1));
    let evs = events(&data);
    assert_eq!(acked(&evs), 0);
    let errors = nack_errors(&evs);
    assert_eq!(errors.len(), 2);
    for error in &errors {
        assert!(error.contains("PARAMS_BYTES_MAX"), "{error}");
    }
    assert!(evs.iter().all(|(_, len)| *len < PARAMS_BYTES_MAX));

    // Just under the limit is fine.
    let dir = tempfile::tempdir().unwrap();
    let mut handlers = Handlers::builtin();
    handlers.register(
        "sized",
        Sized {
            len: PARAMS_BYTES_MAX - 100,
            fail: false,
        },
    );
    let data = dir.path().join("data");
    assert_eq!(run(&data, &user_workload(), &handlers).acked, 1);
}

#[test]
fn an_exec_answer_whose_output_passes_params_bytes_max_is_nacked_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Under the exec output limit, over the params limit.
    let len = PARAMS_BYTES_MAX + 10;
    let big = script(
        dir.path(),
        "big.sh",
        &format!(
            "cat >/dev/null; printf '{{\"output\":\"'; head -c {len} /dev/zero | tr '\\0' x; echo '\"}}'"
        ),
    );
    let w = Workload::parse("w.toml", &workload_text(&exec_node("a", &big), 1, 30.0)).unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &w, &Handlers::builtin());
    assert_eq!((report.acked, report.dead_lettered), (0, 1));
    let evs = events(&data);
    for error in nack_errors(&evs) {
        assert!(error.contains("PARAMS_BYTES_MAX"), "{error}");
    }
}

#[test]
fn a_failure_reason_past_error_bytes_max_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut handlers = Handlers::builtin();
    handlers.register(
        "sized",
        Sized {
            len: EVENT_BYTES_MAX + 10,
            fail: true,
        },
    );
    let data = dir.path().join("data");
    let report = run(&data, &user_workload(), &handlers);
    assert_eq!(report.dead_lettered, 1);
    let evs = events(&data);
    let errors = nack_errors(&evs);
    assert_eq!(errors.len(), 2);
    for error in &errors {
        assert!(error.len() <= ERROR_BYTES_MAX, "{}", error.len());
        assert!(error.starts_with("éé"), "the start is kept");
        assert!(error.contains("ERROR_BYTES_MAX"), "the cut is named");
    }
    for (e, len) in &evs {
        assert!(*len <= 2 * ERROR_BYTES_MAX, "{} is {len} bytes", e.kind());
    }
}

#[test]
fn relative_program_paths_resolve_against_the_workload_directory() {
    let dir = tempfile::tempdir().unwrap();
    let workloads = dir.path().join("workloads");
    std::fs::create_dir_all(workloads.join("steps")).unwrap();
    script(
        &workloads,
        "here.sh",
        r#"cat >/dev/null; echo '{"output":"here"}'"#,
    );
    script(
        &workloads.join("steps"),
        "deeper.sh",
        r#"cat >/dev/null; echo '{"output":"deeper"}'"#,
    );
    std::fs::write(workloads.join("data.txt"), "from a file\n").unwrap();
    script(
        &workloads,
        "reads.sh",
        r#"cat >/dev/null; printf '{"output":"%s"}\n' "$(cat "$1")""#,
    );
    let nodes = r#"{ id = "a", handler = "exec", params = { argv = ["./here.sh"] } }, { id = "b", handler = "exec", params = { argv = ["steps/deeper.sh"] } }, { id = "c", handler = "exec", params = { argv = ["/bin/sh", "./reads.sh", "./data.txt"] } }, { id = "d", handler = "exec", params = { argv = ["sh", "-c", "cat >/dev/null; echo '{\"output\":\"path\"}'"] } }"#;
    std::fs::write(workloads.join("w.toml"), workload_text(nodes, 1, 30.0)).unwrap();
    // Run from another directory, naming the workload relatively.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(&elsewhere)
        .args(["--data", "data", "run", "../workloads/w.toml"])
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = events(&elsewhere.join("data"));
    let mut outputs: Vec<String> = evs
        .iter()
        .filter_map(|(e, _)| match e {
            Event::TaskAcked { output, .. } => Some(output.as_json().to_owned()),
            _ => None,
        })
        .collect();
    outputs.sort();
    assert_eq!(
        outputs,
        [r#""deeper""#, r#""from a file""#, r#""here""#, r#""path""#],
        "{:?}",
        nack_errors(&evs)
    );
    // The ledger records the absolute paths that ran.
    let base = std::fs::canonicalize(&workloads).unwrap();
    let argvs: Vec<serde_json::Value> = evs
        .iter()
        .filter_map(|(e, _)| match e {
            Event::TaskSubmitted { params, .. } => Some(params.to_value()["argv"].clone()),
            _ => None,
        })
        .collect();
    let at = |rel: &str| base.join(rel).display().to_string();
    assert_eq!(argvs[0], serde_json::json!([at("here.sh")]));
    assert_eq!(argvs[1], serde_json::json!([at("steps/deeper.sh")]));
    assert_eq!(
        argvs[2],
        serde_json::json!(["/bin/sh", at("reads.sh"), at("data.txt")])
    );
    assert_eq!(argvs[3][0], "sh", "a bare name is looked up in PATH");
}

#[test]
fn a_signal_to_a_run_kills_its_running_steps() {
    // Steps run in process groups of their own, out of reach of a
    // terminal's Ctrl-C: the run kills them when it is interrupted.
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let long = script(
            dir.path(),
            "long.sh",
            &format!("cat >/dev/null; echo $$ >> {}; sleep 60", pids.display()),
        );
        let file = dir.path().join("w.toml");
        std::fs::write(&file, workload_text(&exec_node("a", &long), 1, 120.0)).unwrap();
        let mut run = std::process::Command::new(BIN)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("run")
            .arg(&file)
            .env_remove("RUNLEDGER_DATA")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&pids).map_or(true, |p| p.is_empty()) {
            assert!(Instant::now() < until, "the step never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(run.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = run.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = run.kill();
                panic!("SIG{sig}: the run did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}: {stderr}");
        assert!(stderr.contains("resume"), "SIG{sig}: {stderr}");
        assert_eq!(
            still_running(&pids),
            Vec::<String>::new(),
            "SIG{sig}: the running step was killed"
        );
    }
}
