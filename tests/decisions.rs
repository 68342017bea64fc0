//! Decision fixtures: each `replay/*/workload.toml` is a small workload and
//! seed whose governance decisions (cost agent verdicts, admission denials,
//! status changes, skips, learning choices and adjustments) are snapshotted
//! in `snapshots/decisions-<fixture>.snap`, so any change of decision logic
//! shows up as a snapshot diff. The decisions are also reproduced by replay:
//! the ledger exported and ingested elsewhere lists the same decisions and
//! folds to the digest the run reported.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::bin::{runledger_stdin, stderr};

/// Runs the binary with `input` on stdin; fails the test unless it succeeds.
fn succeeds(data: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
    let out = runledger_stdin(data, args, input.unwrap_or_default());
    assert!(out.status.success(), "runledger {args:?}: {}", stderr(&out));
    out
}

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("workload.toml").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "decision fixtures under {}",
        root.display()
    );
    dirs
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn decisions_of_recorded_workloads_match_their_snapshots_and_replay() {
    let mut kinds = std::collections::BTreeSet::new();
    for fixture in fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let workload = fixture.join("workload.toml");
        let dir = tempfile::tempdir().unwrap();
        let run = succeeds(
            dir.path(),
            &["run", workload.to_str().unwrap(), "--json"],
            None,
        );
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&run.stdout).lines().last().unwrap())
                .unwrap();
        let decisions = json_lines(&succeeds(dir.path(), &["decisions", "--json"], None));
        assert!(!decisions.is_empty(), "{name}: no decisions");
        for d in &decisions {
            let kind = d["kind"].as_str().unwrap().to_owned();
            match d["decision"].as_str() {
                Some(verdict) => kinds.insert(format!("{kind}:{verdict}")),
                None => kinds.insert(kind),
            };
        }
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_info(&format!("replay/{name}/workload.toml"));
        settings.bind(|| insta::assert_json_snapshot!(format!("decisions-{name}"), decisions));

        // Reproduced by replay: the exported ledger, ingested elsewhere,
        // lists the same decisions and folds to the run's digest.
        let exported = succeeds(dir.path(), &["log", "--json"], None).stdout;
        let copy = tempfile::tempdir().unwrap();
        succeeds(copy.path(), &["ingest", "-"], Some(&exported));
        let replayed = json_lines(&succeeds(copy.path(), &["decisions", "--json"], None));
        assert_eq!(replayed, decisions, "{name}: decisions after replay");
        let folded = json_lines(&succeeds(copy.path(), &["replay", "--json"], None));
        assert_eq!(
            folded.last().unwrap()["digest"],
            report["digest"],
            "{name}: replayed digest"
        );
    }
    // Between them, the fixtures exercise every kind of decision.
    for kind in [
        "degradation_decided:continue",
        "degradation_decided:degrade",
        "degradation_decided:terminate",
        "admission_denied",
        "budget_status_changed",
        "budget_period_reset",
        "task_skipped",
        "learning_arm_chosen",
        "learning_profile_adjusted",
    ] {
        assert!(kinds.contains(kind), "no fixture decides {kind}: {kinds:?}");
    }
}
