//! Questions asked of a stored ledger after the fact: `replay` (with
//! `--check`), `diff`, `artifacts`, `export` and `verify-export`. Thin:
//! the work is in `crate::audit`, `crate::artifacts` and `crate::log::replay`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::exit::{CheckFailed, Damaged};
use super::open::{fold, open_store, walk_error};
use super::output::print_json;
use crate::artifacts::{self, ArtifactError};
use crate::audit::export::{self, ExportError, ExportOptions, Format};
use crate::audit::verify_export::{self, VerifyExportError};
use crate::domain::RunId;
use crate::log::replay;
use crate::log::{ChainBreak, Store};
use crate::views::{self, Table, bp_percent};

pub(super) fn replay_cmd(
    data: &Path,
    run: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let folded = fold(data, run)?;
    if let Some(r) = run {
        if folded.state.runs.get(&RunId(r.to_owned())).is_none() {
            bail!("run `{r}` is not in the ledger");
        }
    }
    let digests = folded.state.digests();
    if json {
        return print_json(
            out,
            &serde_json::json!({
                "records": folded.records,
                "head_seq": folded.head.seq,
                "head": folded.head.hash.to_hex().as_str(),
                "run": run,
                "digests": digests,
                "tenants": views::tenants(&folded.state),
                "queue": views::queue(&folded.state),
                "digest": digests.combined.to_hex().as_str(),
            }),
        );
    }
    writeln!(
        out,
        "replayed {} records, head seq {} {}",
        folded.records,
        folded.head.seq,
        folded.head.hash.to_hex()
    )?;
    for (name, hash) in digests.named() {
        writeln!(out, "  {name:<9} {}", hash.to_hex())?;
    }
    let mut table = Table::new(&["TENANT", "SPENT", "BUDGET", "USED", "STATUS"]);
    for t in views::tenants(&folded.state) {
        table.row(vec![
            t.tenant,
            crate::domain::Micros(t.spent_micros).to_string(),
            crate::domain::Micros(t.budget_micros).to_string(),
            bp_percent(t.utilisation_bp),
            t.status.name().to_owned(),
        ]);
    }
    write!(out, "{}", table.render())?;
    let c = folded.state.queue.counts();
    writeln!(
        out,
        "queue: {} waiting, {} pending, {} leased, {} done, {} dead-lettered, {} cancelled, {} skipped ({} retries)",
        c.waiting, c.pending, c.leased, c.done, c.dead_lettered, c.cancelled, c.skipped, c.retries
    )?;
    writeln!(out, "digest: {}", digests.combined.to_hex())?;
    Ok(())
}

pub(super) fn check_cmd(
    data: &Path,
    run: Option<&str>,
    policy: Option<&Path>,
    keep_going: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::audit::check::{CheckOptions, check, parse_policy};
    let policy = match policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy {}", path.display()))?;
            parse_policy(&path.display().to_string(), &text).map_err(anyhow::Error::msg)?
        }
        None => crate::domain::Policy::STANDARD,
    };
    let store = open_store(data)?;
    if let Some(r) = run {
        let folded = replay::fold(&store, Some(&RunId(r.to_owned()))).map_err(walk_error)?;
        if folded.state.runs.get(&RunId(r.to_owned())).is_none() {
            bail!("run `{r}` is not in the ledger");
        }
    }
    let options = CheckOptions {
        policy,
        run: run.map(|r| RunId(r.to_owned())),
        keep_going,
    };
    let report = check(&store, options).map_err(walk_error)?;
    if json {
        print_json(out, &report)?;
    } else {
        write_check(&report, out)?;
    }
    if report.ok() {
        return Ok(());
    }
    Err(CheckFailed(match report.first.first() {
        Some(d) => format!(
            "{} of {} decisions diverge; the first at seq {} ({} for {})",
            report.divergences,
            report.decisions + report.divergences,
            d.seq,
            d.decision,
            d.subject
        ),
        None => format!("{} decisions diverge", report.divergences),
    })
    .into())
}

fn write_check(
    report: &crate::audit::check::CheckReport,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "rebuilt {} records, digest {}",
        report.records, report.digest
    )?;
    for d in &report.first {
        writeln!(
            out,
            "divergence at seq {}: {} for `{}`: {}",
            d.seq, d.decision, d.subject, d.what
        )?;
        for f in &d.fields {
            writeln!(
                out,
                "  {}: recorded {}, recomputed {}",
                f.field, f.recorded, f.recomputed
            )?;
        }
    }
    if report.divergences > report.first.len() as u64 {
        writeln!(
            out,
            "... {} more divergences",
            report.divergences - report.first.len() as u64
        )?;
    }
    if report.ok() {
        let kinds: Vec<String> = report
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        writeln!(out, "ok: {} decisions re-checked", report.decisions)?;
        if !kinds.is_empty() {
            writeln!(out, "  {}", kinds.join(", "))?;
        }
    }
    if report.not_recheckable > 0 {
        writeln!(
            out,
            "  {} decision events belong to runs runledger did not execute (ingested): not re-checkable",
            report.not_recheckable
        )?;
    }
    Ok(())
}

/// `runledger diff`: loads both runs (from one store when both are in the
/// same directory: sled locks it), compares, prints; a difference is a
/// failed check (exit 1), an unknown run bad input (exit 2).
pub(super) fn diff_cmd(
    data: &Path,
    run_a: &str,
    data_b: Option<&Path>,
    run_b: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::audit::diff;
    let same_dir = |b: &Path| match (data.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => data == b,
    };
    let store_a = open_store(data)?;
    let store_b = match data_b {
        Some(b) if !same_dir(b) => Some(open_store(b).context("--data-b")?),
        _ => None,
    };
    let load = |store: &Store, run: &str| -> anyhow::Result<diff::RunInput> {
        let id = RunId(run.to_owned());
        if let Some(input) = diff::load_run(store, &id).map_err(walk_error)? {
            return Ok(input);
        }
        let known = diff::runs(store).map_err(walk_error)?;
        let listed: Vec<&str> = known.iter().take(20).map(RunId::as_str).collect();
        let more = known.len().saturating_sub(listed.len());
        bail!(
            "no run `{run}` in {}: {}{}",
            store.dir().display(),
            if listed.is_empty() {
                "it holds no runs".to_owned()
            } else {
                format!("runs there: {}", listed.join(", "))
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let a = load(&store_a, run_a)?;
    let b = load(store_b.as_ref().unwrap_or(&store_a), run_b)?;
    let result = diff::compare(&a, &b);
    if json {
        print_json(out, &result)?;
    } else {
        write!(out, "{}", diff::render_text(&result))?;
    }
    if result.identical {
        Ok(())
    } else {
        Err(CheckFailed(format!("runs `{run_a}` and `{run_b}` differ")).into())
    }
}

/// `runledger artifacts`: writes the files and says how many, and where.
pub(super) fn artifacts_cmd(
    data: &Path,
    run: Option<&str>,
    dir: &Path,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let written = write_artifacts(data, run, dir)?;
    if json {
        return print_json(
            out,
            &serde_json::json!({ "files": written, "out": dir.display().to_string() }),
        );
    }
    writeln!(out, "wrote {written} files to {}", dir.display())?;
    Ok(())
}

/// Writes the artifact files of the ledger in `data` (of `run` only, if
/// given) under `out` and returns how many; nothing is written when the
/// run is unknown.
pub(super) fn write_artifacts(data: &Path, run: Option<&str>, out: &Path) -> anyhow::Result<usize> {
    let store = open_store(data)?;
    let run = run.map(|r| RunId(r.to_owned()));
    let files = match artifacts::generate(&store, run.as_ref()) {
        Ok(files) => files,
        Err(ArtifactError::Walk(e)) => return Err(walk_error(e)),
        Err(e) => return Err(e.into()),
    };
    drop(store);
    artifacts::write(out, &files)?;
    Ok(files.len())
}

fn export_error(error: ExportError) -> anyhow::Error {
    match error {
        ExportError::Walk(e) => walk_error(e),
        ExportError::Damaged { seq, what } => Damaged(ChainBreak { seq, what }).into(),
        other => other.into(),
    }
}

pub(super) fn export(
    data: &Path,
    options: &ExportOptions,
    format: Format,
    out_file: Option<&Path>,
) -> anyhow::Result<()> {
    if let (Some(from), Some(to)) = (options.from, options.to) {
        anyhow::ensure!(from < to, "--from {from} is not before --to {to}");
    }
    let store = open_store(data)?;
    let built = export::export(&store, options).map_err(export_error)?;
    match out_file {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            built
                .write(format, &mut file)
                .with_context(|| format!("cannot write {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => built.write(format, &mut std::io::stdout().lock())?,
    }
    Ok(())
}

pub(super) fn verify_export(
    file: &Path,
    head: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut input = std::io::BufReader::with_capacity(1 << 16, opened);
    let report = match verify_export::verify_export(&mut input, head) {
        Ok(report) => report,
        Err(VerifyExportError::Failed(why)) => {
            if json {
                print_json(out, &serde_json::json!({ "ok": false, "error": why }))?;
            }
            return Err(CheckFailed(format!("{}: {why}", file.display())).into());
        }
        Err(VerifyExportError::Malformed(why)) => {
            anyhow::bail!("{}: {why}", file.display())
        }
    };
    if json {
        return print_json(
            out,
            &serde_json::json!({
                "ok": true,
                "format": report.format,
                "tenant": report.tenant,
                "rows": report.rows,
                "proof_nodes": report.proof_nodes,
                "tree_size": report.tree_size,
                "head": report.head_hash,
                "root": report.root,
                "tenant_rows": report.tenant_rows,
            }),
        );
    }
    writeln!(
        out,
        "ok: {} rows of tenant {} ({}), complete among its {} rows in all, proven by {} nodes against root {} of {} records, head {}",
        report.rows,
        report.tenant,
        report.format,
        report.tenant_rows,
        report.proof_nodes,
        report.root,
        report.tree_size,
        report.head_hash
    )?;
    Ok(())
}
