//! Running workloads in real time from a test: an executable script, and
//! a run of a workload on a fresh ledger with the given handlers.

use std::path::Path;

use runledger::runtime::handler::Handlers;
use runledger::runtime::live::run_live;
use runledger::runtime::{RunOptions, RunReport};
use runledger::workload::Workload;

/// Writes `#!/bin/sh` + `body` to `dir/name`, executable; returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path.display().to_string()
}

/// Runs `w` to its end on the real-time executor, in a new ledger in `dir`.
pub fn run(dir: &Path, w: &Workload, handlers: &Handlers) -> RunReport {
    let ledger = super::ledger::open_ledger(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run_live(
            &ledger,
            w,
            &RunOptions::default(),
            handlers,
            false,
            &mut |_, _| {},
        ))
        .unwrap();
    ledger.close().unwrap();
    report
}
