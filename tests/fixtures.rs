//! Every ledger kept in `replay/` replays to the head and digests stored
//! beside it, and its projections match the insta snapshots in
//! `snapshots/`.

mod support;

use std::path::Path;

use runledger::domain::{Event, State};
use runledger::log::Head;
use runledger::log::replay;
use runledger::{views, wire};

use support::ledger::{open_ledger, open_store};

fn fixture_dirs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("ledger.jsonl").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    dirs
}

fn ingest(dir: &Path, fixture: &Path) -> (u64, Vec<u64>) {
    let text = std::fs::read_to_string(fixture.join("ledger.jsonl")).unwrap();
    let mut batch = wire::Batch::new();
    for (i, line) in text.lines().enumerate() {
        wire::parse_line(line)
            .and_then(|parsed| batch.push(i + 1, parsed))
            .unwrap_or_else(|e| panic!("{}: line {}: {e}", fixture.display(), i + 1));
    }
    let (appends, _) = batch
        .attach(Head::EMPTY)
        .unwrap_or_else(|(line, e)| panic!("{}: line {line}: {e}", fixture.display()));
    let seeds = appends
        .iter()
        .filter_map(|a| match &a.event {
            Event::RunStarted { seed, .. } => Some(*seed),
            _ => None,
        })
        .collect();
    let ledger = open_ledger(dir);
    let receipt = ledger.append(appends).unwrap();
    ledger.close().unwrap();
    (receipt.last_seq, seeds)
}

fn projections(state: &State) -> serde_json::Value {
    serde_json::json!({
        "tenants": views::tenants(state),
        "queue": views::queue(state),
        "runs": views::runs(state),
        "workers": views::workers(state),
    })
}

#[test]
fn fixtures_replay_to_their_stored_digests() {
    for fixture in fixture_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let (records, seeds) = ingest(dir.path(), &fixture);
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("digests.json")).unwrap())
                .unwrap();
        let store = open_store(dir.path());
        let folded = replay::fold(&store, None).unwrap();
        let name = fixture.display();
        assert_eq!(
            records,
            stored["records"].as_u64().unwrap(),
            "{name}: record count"
        );
        assert_eq!(
            folded.head.hash.to_hex().as_str(),
            stored["head"].as_str().unwrap(),
            "{name} (seeds {seeds:?}): head hash at seq {} differs: the codec or the chain changed",
            folded.head.seq
        );
        let digests = serde_json::to_value(folded.state.digests()).unwrap();
        assert_eq!(
            digests, stored["digests"],
            "{name} (seeds {seeds:?}): a projection changed at head seq {}",
            folded.head.seq
        );
    }
}

#[test]
fn fixtures_projections_match_snapshots() {
    for fixture in fixture_dirs() {
        let dir = tempfile::tempdir().unwrap();
        ingest(dir.path(), &fixture);
        let store = open_store(dir.path());
        let state = replay::fold(&store, None).unwrap().state;
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_info(&format!("replay/{name}/ledger.jsonl"));
        settings.bind(|| {
            insta::assert_json_snapshot!(format!("projections-{name}"), projections(&state))
        });
    }
}
