//! The audit subcommands: `export`, `verify-export`, `checkpoint` and
//! `bench export`. Thin: the work is in `crate::audit`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::commands::{open_store, open_store_to_write, print_json, walk_error};
use super::{CheckFailed, Damaged};
use crate::audit::export::{self, ExportError, ExportOptions, Format};
use crate::audit::published::{self, PublishError};
use crate::audit::verify_export::{self, VerifyExportError};
use crate::log::ChainBreak;

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

pub(super) fn checkpoint(data: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = open_store_to_write(data)?;
    let checkpoint = match published::publish(&store) {
        Ok(c) => c,
        Err(PublishError::Walk(e)) => return Err(walk_error(e)),
        Err(e) => return Err(e.into()),
    };
    let hex = |bytes: [u8; 32]| blake3::Hash::from_bytes(bytes).to_hex();
    let head = hex(checkpoint.head);
    let records_root = hex(checkpoint.records_root);
    let tenants_root = hex(checkpoint.tenants_root);
    let root = hex(checkpoint.root);
    if json {
        return print_json(
            out,
            &serde_json::json!({
                "seq": checkpoint.seq,
                "head": head.as_str(),
                "records_root": records_root.as_str(),
                "tenants_root": tenants_root.as_str(),
                "root": root.as_str(),
            }),
        );
    }
    // The root stays last on the line: scripts take it with `sed 's/.*root //'`.
    writeln!(
        out,
        "checkpoint at seq {}: head {head}, records root {records_root}, tenants root {tenants_root}, root {root}",
        checkpoint.seq
    )?;
    Ok(())
}

pub(super) fn bench(events: u64, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let r =
        crate::bench::export::run_export_bench(events, &mut |phase| eprintln!("bench: {phase}"))?;
    writeln!(
        out,
        "ledger: {} records, tenant {} has {} rows",
        r.records, r.tenant, r.rows
    )?;
    writeln!(
        out,
        "export (jsonl, {:.1} MB): {:.0} rows/s ({:.2} s; reads and hashes all {} records)",
        r.file_bytes as f64 / 1e6,
        r.export_rows_per_sec,
        r.export_secs,
        r.records
    )?;
    writeln!(
        out,
        "verify-export: {:.0} rows/s ({:.2} s)",
        r.verify_export_rows_per_sec, r.verify_export_secs
    )?;
    writeln!(
        out,
        "baseline, chain verify of the same ledger: {:.0} records/s ({:.2} s)",
        r.verify_records_per_sec, r.verify_secs
    )?;
    if json {
        print_json(out, &r)?;
    }
    Ok(())
}
