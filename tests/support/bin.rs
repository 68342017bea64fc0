//! The `runledger` binary as a test drives it: always with `--data` given
//! (or none, for commands without a ledger) and `RUNLEDGER_DATA` removed,
//! so no test touches a ledger it did not make.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_runledger");

/// `runledger --data DATA ARGS...`, without `RUNLEDGER_DATA`: the command,
/// ready to take more (environment, stdio) before it runs.
pub fn command(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUNLEDGER_DATA");
    command
}

/// Runs `runledger --data DATA ARGS...` to its end (stdin empty).
pub fn runledger(data: &Path, args: &[&str]) -> Output {
    command(data, args).output().unwrap()
}

/// The binary without `--data`, for commands that use no ledger.
pub fn runledger_bare(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUNLEDGER_DATA")
        .output()
        .unwrap()
}

/// [`runledger`] with `input` on stdin. A refusing process may stop
/// reading: a broken pipe is not an error here.
pub fn runledger_stdin(data: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = command(data, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    out
}

/// What the process printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the process printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails the test unless the process exited 0, showing what it printed;
/// returns its stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}
