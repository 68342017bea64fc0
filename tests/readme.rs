//! Every command the README shows runs, in order, in one scratch
//! directory, and prints what the README says it prints (trycmd reads the
//! README's `console` blocks; `[..]` stands for what changes with the
//! machine, `...` for lines left out). After a deliberate change of output,
//! `TRYCMD=overwrite cargo test --test readme` rewrites the README's
//! blocks; review the diff.

mod support;

use std::path::Path;

use support::bin::BIN;
use support::files::copy_dir;

#[test]
fn readme_commands_print_what_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let readme = scratch.path().join("README.md");
    std::fs::copy(root.join("README.md"), &readme).unwrap();
    // trycmd runs a `X.md` case in `X.in/`: the files the README names.
    let work = scratch.path().join("README.in");
    copy_dir(&root.join("examples"), &work.join("examples"));
    copy_dir(&root.join("replay/sample"), &work.join("replay/sample"));
    trycmd::TestCases::new()
        .register_bin("runledger", Path::new(BIN))
        .env("RUNLEDGER_DATA", "runledger-data")
        .case(&readme)
        .run();
    if std::env::var("TRYCMD").is_ok_and(|mode| mode == "overwrite") {
        std::fs::copy(&readme, root.join("README.md")).unwrap();
    }
}
