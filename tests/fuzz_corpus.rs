//! The fuzz corpus replayed on stable Rust: every committed input of every
//! fuzz target (`fuzz/corpus/<target>/`) and every crash the fuzzers found
//! (`fuzz/regressions/<target>/`) goes through the same entry function the
//! target calls (`runledger::fuzzing::TARGETS`), and none may panic. CI
//! runs this instead of the fuzzers, which need libFuzzer and `-Z` flags.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use runledger::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly under `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds every file under `fuzz/<kind>/<target>/` to its target; returns
/// how many were fed and the files that panicked, with the message.
fn replay(kind: &str) -> (usize, Vec<String>) {
    let mut fed = 0;
    let mut panicked = Vec::new();
    for (name, entry) in TARGETS {
        for path in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&path).expect("a readable corpus file");
            fed += 1;
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panicked.push(format!("{name}: {}: {message}", path.display()));
            }
        }
    }
    (fed, panicked)
}

#[test]
fn every_target_has_a_committed_corpus() {
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(
            !inputs(&dir).is_empty(),
            "fuzz target `{name}` has no corpus under {}",
            dir.display()
        );
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(
            source.is_file(),
            "fuzz target `{name}` has no binary {}",
            source.display()
        );
    }
}

#[test]
fn the_corpus_replays_without_a_panic() {
    let (fed, panicked) = replay("corpus");
    assert!(fed > 0, "no corpus file was fed");
    assert!(panicked.is_empty(), "panicked on:\n{}", panicked.join("\n"));
}

#[test]
fn every_crash_found_by_fuzzing_is_now_an_error() {
    let (_, panicked) = replay("regressions");
    assert!(panicked.is_empty(), "panicked on:\n{}", panicked.join("\n"));
}

/// Found by reading `walk_frame` beside the fuzzer: a frame whose header
/// says its records run past `u64::MAX` overflowed the seq arithmetic of
/// the walk (a panic in a debug build, a wrong seq in a release one).
#[test]
fn a_frame_whose_seqs_run_past_the_largest_is_refused_by_its_header() {
    let bytes =
        std::fs::read(fuzz_dir().join("regressions/frame/first-seq-max-then-trailing-bytes"))
            .expect("the regression input");
    let error = runledger::log::frame::decode_header(&bytes).expect_err("the header is refused");
    assert!(
        error.contains(&u64::MAX.to_string()),
        "the error names the first seq: {error}"
    );
}
