//! The ledger's own subcommands: `ingest` (append JSON lines), `log`
//! (list records), `verify` (the chain, published checkpoints and indices)
//! and `checkpoint` (publish the roots at the head).

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, bail};

use super::exit::{CheckFailed, Damaged};
use super::filter::{Scopes, require_known};
use super::open::{open_ledger, open_store, open_store_to_write, walk_error};
use super::output::print_json;
use crate::audit::published::{self, PublishError};
use crate::domain::Event;
use crate::log::codec::decode_event;
use crate::log::record::{RawRecord, Record};
use crate::log::replay;
use crate::log::store::IndexKind;
use crate::log::{AppendError, Durability};
use crate::wire;

pub(super) fn ingest(
    data: &Path,
    file: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (name, reader): (String, Box<dyn BufRead>) = if file == "-" {
        (
            "<stdin>".to_owned(),
            Box::new(std::io::BufReader::new(std::io::stdin())),
        )
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
        (file.to_owned(), Box::new(std::io::BufReader::new(f)))
    };
    let mut batch = wire::Batch::new();
    for (number, line) in wire::lines(reader) {
        let line = line.map_err(|reason| anyhow::anyhow!("{name}: line {number}: {reason}"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        wire::parse_line(text)
            .and_then(|parsed| batch.push(number, parsed))
            .map_err(|reason| anyhow::anyhow!("{name}: line {number}: {reason}"))?;
    }
    let count = batch.len();
    let ledger = open_ledger(data, Durability::Always, true)?;
    // The ledger is this process's alone (sled's lock), so its head cannot
    // move between this query and the append.
    let head = match ledger.head() {
        Ok(head) => head,
        Err(e) => {
            let _ = ledger.discard_if_new();
            return Err(e.into());
        }
    };
    let (appends, line_numbers) = match batch.attach(head) {
        Ok(attached) => attached,
        Err((line, reason)) => {
            let _ = ledger.discard_if_new();
            bail!("{name}: line {line}: {reason}; nothing was appended");
        }
    };
    let receipt = match ledger.append(appends) {
        Ok(receipt) => receipt,
        Err(AppendError::Rejected { index, rejection }) => {
            let _ = ledger.discard_if_new();
            bail!(
                "{name}: line {}: {rejection}; nothing was appended",
                line_numbers[index]
            );
        }
        Err(e) => {
            let _ = ledger.discard_if_new();
            return Err(e.into());
        }
    };
    ledger.close()?;
    if json {
        print_json(
            out,
            &serde_json::json!({
                "ingested": count,
                "first_seq": receipt.first_seq,
                "last_seq": receipt.last_seq,
                "head": receipt.head.to_hex().as_str(),
            }),
        )
    } else if count == 0 {
        writeln!(out, "ingested 0 events").map_err(Into::into)
    } else {
        writeln!(
            out,
            "ingested {count} events (seq {}..{}), head {}",
            receipt.first_seq,
            receipt.last_seq,
            receipt.head.to_hex()
        )
        .map_err(Into::into)
    }
}

pub(super) fn log(
    data: &Path,
    run: Option<&str>,
    tenant: Option<&str>,
    from: u64,
    limit: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    require_known(&store, run, tenant)?;
    let limit = limit.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let mut emit = |raw: RawRecord<'_>, event: Event| -> ControlFlow<()> {
        if shown >= limit {
            return ControlFlow::Break(());
        }
        let record = Record {
            seq: raw.seq,
            recorded_at: raw.recorded_at,
            prev_hash: raw.prev_hash,
            hash: raw.hash,
            event,
        };
        let written = if json {
            writeln!(out, "{}", wire::record_line(&record))
        } else {
            writeln!(
                out,
                "{:>8}  {}  {}  {}",
                record.seq,
                record.recorded_at,
                &record.hash.to_hex()[..16],
                record.event
            )
        };
        if let Err(e) = written {
            failure = Some(e.into());
            return ControlFlow::Break(());
        }
        shown += 1;
        if shown >= limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut decode_failure: Option<Damaged> = None;
    let mut decode = |raw: &RawRecord<'_>| match decode_event(raw.event_bytes) {
        Ok(event) => Some(event),
        Err(what) => {
            decode_failure = Some(Damaged(crate::log::ChainBreak {
                seq: raw.seq,
                what: format!("event cannot be decoded: {what}"),
            }));
            None
        }
    };
    let mut filters = Vec::new();
    if let Some(r) = run {
        filters.push((IndexKind::Run, r));
    }
    if let Some(t) = tenant {
        filters.push((IndexKind::Tenant, t));
    }
    let indexed = store
        .walk_indexed(&filters, from, |raw| match decode(&raw) {
            Some(event) => emit(raw, event),
            None => ControlFlow::Break(()),
        })
        .map_err(walk_error)?;
    if indexed.is_none() {
        let mut scopes = Scopes::default();
        let start = if filters.is_empty() { from } else { 1 };
        store
            .walk(start, |raw| {
                let Some(event) = decode(&raw) else {
                    return ControlFlow::Break(());
                };
                if raw.seq < from || !scopes.matches(&event, run, tenant) {
                    return ControlFlow::Continue(());
                }
                emit(raw, event)
            })
            .map_err(walk_error)?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(d) = decode_failure {
        return Err(d.into());
    }
    Ok(())
}

pub(super) fn verify_cmd(
    data: &Path,
    repair_indices: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = open_store(data)?;
    // One pass: the chain, the published checkpoints, and the index
    // entries the log gives.
    let mut expected = replay::ExpectedIndex::default();
    let checked = crate::audit::published::verify_with_published_mapping(
        &store,
        |raw, event| replay::IndexKey::of(raw.frame_seq, event),
        |seq, key| expected.push(seq, key),
    );
    let (report, published) = match checked.context("cannot read the ledger")? {
        Ok(verified) => verified,
        Err(broken) => return verify_failed(&broken, false, json, out),
    };
    // The chain holds: now the indices against it.
    let index = expected
        .finish_check(&store, report.head.seq)
        .map_err(walk_error)?;
    let mut rebuilt = None;
    if repair_indices {
        replay::rebuild_index(&store).map_err(walk_error)?;
        store.flush(true)?;
        if let Err(broken) = replay::check_index(&store).map_err(walk_error)? {
            return verify_failed(&broken, true, json, out);
        }
        rebuilt = Some(index.err());
    } else if let Err(broken) = index {
        return verify_failed(&broken, true, json, out);
    }
    if json {
        let mut value = serde_json::json!({
            "ok": true,
            "records": report.records,
            "head_seq": report.head.seq,
            "head": report.head.hash.to_hex().as_str(),
            "checkpoints": report.checkpoints,
            "published_checkpoints": published,
        });
        if let Some(before) = &rebuilt {
            value["indices_rebuilt"] = serde_json::json!({
                "damaged_at_seq": before.as_ref().map(|b| b.seq),
                "error": before.as_ref().map(|b| b.what.as_str()),
            });
        }
        return print_json(out, &value);
    }
    match &rebuilt {
        Some(Some(before)) => writeln!(
            out,
            "indices rebuilt from the log (they were damaged at seq {}: {})",
            before.seq, before.what
        )?,
        Some(None) => writeln!(out, "indices rebuilt from the log (they matched it)")?,
        None => {}
    }
    writeln!(
        out,
        "ok: {} records, head {}",
        report.records,
        report.head.hash.to_hex()
    )?;
    Ok(())
}

/// Reports a failed `verify` (exit 1); `index`: the indices disagree with
/// an intact chain.
fn verify_failed(
    broken: &crate::log::ChainBreak,
    index: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::json!({"ok": false, "seq": broken.seq, "error": broken.what});
        if index {
            value["indices_damaged"] = serde_json::json!(true);
        }
        print_json(out, &value)?;
    } else {
        writeln!(out, "FAILED at seq {}: {}", broken.seq, broken.what)?;
    }
    let hint = if index {
        " (the chain holds; `runledger verify --repair-indices` rebuilds the indices from it)"
    } else {
        ""
    };
    Err(CheckFailed(format!(
        "verification failed at seq {}: {}{hint}",
        broken.seq, broken.what
    ))
    .into())
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
