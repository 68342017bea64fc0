//! `runledger verify-export`: checks an export file alone, offline — no
//! ledger, nothing but the file and blake3.
//!
//! In order: the layout (opening, rows, proof nodes, proof; exit 2 when it
//! cannot be read), then every row (strictly increasing seqs, row numbers,
//! the record hash recomputed from seq, time, prev_hash and event bytes,
//! the link to the row before when seqs are adjacent, every human field
//! against the decoded event, the tenant, the running totals), then the
//! proof: the seqs it vouches for against the rows' seqs, the records root
//! it gives against the stated one; then completeness (the tenant line):
//! the subtree positions the proof leaves open against the rows and the
//! boundary leaves (no gap, boundaries outside the date window), the
//! subroot they rebuild, the tenants root the tenant leaf and its path
//! rebuild; then the checkpoint root from both roots, the closing totals,
//! the head. The first problem is reported with its line, row, seq and
//! field. This module never touches a store.

use std::io::BufRead;

use rustc_hash::FxHashMap;

use super::export::{
    CSV_COLUMNS, FORMAT, LeafNode, NodeLine, OpeningLine, ProofLine, RowLine, TenantLine, Totals,
    TotalsView, facts, units,
};
use super::merkle::{
    Domain, MultiProof, ProofError, ProofNode, SCHEME, checkpoint_root, leaf_hash,
};
use super::tenants::{self, is_money_event, row_leaf, tenant_leaf, tenant_tag};
use crate::domain::{Event, RunId, TenantId, Timestamp};
use crate::log::codec::decode_event;
use crate::log::record::record_hash;

#[derive(Debug, thiserror::Error)]
pub enum VerifyExportError {
    /// The file cannot be read as an export (exit 2).
    #[error("{0}")]
    Malformed(String),
    /// The file reads but does not verify (exit 1).
    #[error("{0}")]
    Failed(String),
}

use VerifyExportError::{Failed, Malformed};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyExportReport {
    pub format: &'static str,
    pub tenant: String,
    pub rows: u64,
    pub proof_nodes: u64,
    pub tree_size: u64,
    pub head_hash: String,
    pub root: String,
    /// The tenant's rows in all (its subtree's leaves).
    pub tenant_rows: u64,
}

/// One parsed line of either format.
enum Line {
    Opening(Box<OpeningLine>),
    /// A row, and (CSV) why its amounts in units disagree with its micros.
    Row(Box<RowLine>, Option<String>),
    Node(NodeLine),
    Tenant(Box<TenantLine>),
    Proof(Box<ProofLine>),
}

/// Checks the export read from `input`; with `expected_head`, the proof's
/// head hash (or root) must equal it.
pub fn verify_export(
    input: &mut dyn BufRead,
    expected_head: Option<&str>,
) -> Result<VerifyExportReport, VerifyExportError> {
    let start = input
        .fill_buf()
        .map_err(|e| Malformed(format!("cannot read: {e}")))?;
    let mut checker = Checker::default();
    match start.first() {
        Some(b'{') => {
            checker.format = "jsonl";
            for (index, line) in input.lines().enumerate() {
                let line_no = index as u64 + 1;
                let text =
                    line.map_err(|e| Malformed(format!("line {line_no}: cannot read: {e}")))?;
                checker.take(line_no, parse_json_line(line_no, &text)?)?;
            }
        }
        Some(_) if start.starts_with(b"row,") => {
            checker.format = "csv";
            let mut reader = csv::Reader::from_reader(input);
            let header = reader
                .headers()
                .map_err(|e| Malformed(format!("line 1: cannot read the CSV header: {e}")))?;
            if header.iter().ne(CSV_COLUMNS) {
                return Err(Malformed(format!(
                    "line 1: the CSV header is not the export's ({})",
                    CSV_COLUMNS.join(",")
                )));
            }
            for record in reader.records() {
                let record = record.map_err(|e| Malformed(format!("cannot read CSV: {e}")))?;
                let line_no = record.position().map_or(0, |p| p.line());
                checker.take(line_no, parse_csv_record(line_no, &record)?)?;
            }
        }
        _ => {
            return Err(Malformed(
                "not a runledger export (expected a JSON line or the CSV header `row,seq,...`)"
                    .to_owned(),
            ));
        }
    }
    checker.finish(expected_head)
}

fn parse_json_line(line: u64, text: &str) -> Result<Line, VerifyExportError> {
    // Rows are nearly every line: parse them in one go; anything else (or
    // a bad row, for its message) goes through a `Value` first.
    let node = text.starts_with(r#"{"kind":"proof_node","#);
    if node {
        if let Ok(node) = serde_json::from_str::<NodeLine>(text) {
            return Ok(Line::Node(node));
        }
    } else if let Ok(row) = serde_json::from_str::<RowLine>(text) {
        return Ok(Line::Row(Box::new(row), None));
    }
    let bad = |e: serde_json::Error| Malformed(format!("line {line}: {e}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    Ok(match kind {
        "opening" => Line::Opening(Box::new(serde_json::from_value(value).map_err(bad)?)),
        "proof_node" => Line::Node(serde_json::from_value(value).map_err(bad)?),
        "tenant" => Line::Tenant(Box::new(serde_json::from_value(value).map_err(bad)?)),
        "proof" => Line::Proof(Box::new(serde_json::from_value(value).map_err(bad)?)),
        "" => return Err(Malformed(format!("line {line}: no `kind`"))),
        _ => Line::Row(Box::new(serde_json::from_value(value).map_err(bad)?), None),
    })
}

fn parse_csv_record(line: u64, record: &csv::StringRecord) -> Result<Line, VerifyExportError> {
    if record.len() != CSV_COLUMNS.len() {
        return Err(Malformed(format!(
            "line {line}: {} columns where the header has {}",
            record.len(),
            CSV_COLUMNS.len()
        )));
    }
    let cell = |name: &str| {
        let index = CSV_COLUMNS.iter().position(|c| *c == name).unwrap_or(0);
        record.get(index).unwrap_or("")
    };
    let meta = || cell("detail");
    match cell("kind") {
        kind @ ("opening" | "proof_node" | "tenant" | "proof") => {
            let parsed = parse_json_line(line, meta())?;
            let same = matches!(
                (kind, &parsed),
                ("opening", Line::Opening(_))
                    | ("proof_node", Line::Node(_))
                    | ("tenant", Line::Tenant(_))
                    | ("proof", Line::Proof(_))
            );
            if !same {
                return Err(Malformed(format!(
                    "line {line}: the JSON in column detail is not of kind {kind}"
                )));
            }
            return Ok(parsed);
        }
        "" => return Err(Malformed(format!("line {line}: no kind"))),
        _ => {}
    }
    let int = |name: &str| -> Result<i64, VerifyExportError> {
        cell(name).parse().map_err(|_| {
            Malformed(format!(
                "line {line}: column {name}: `{}` is not an integer",
                cell(name)
            ))
        })
    };
    let opt_int = |name: &str| -> Result<Option<i64>, VerifyExportError> {
        if cell(name).is_empty() {
            Ok(None)
        } else {
            int(name).map(Some)
        }
    };
    let unsigned = |name: &str| -> Result<u64, VerifyExportError> {
        u64::try_from(int(name)?)
            .map_err(|_| Malformed(format!("line {line}: column {name} is negative")))
    };
    let opt_text = |name: &str| Some(cell(name).to_owned()).filter(|s| !s.is_empty());
    let row = RowLine {
        kind: cell("kind").to_owned(),
        row: unsigned("row")?,
        seq: unsigned("seq")?,
        recorded_at: cell("recorded_at").to_owned(),
        recorded_at_micros: int("recorded_at_micros")?,
        run: opt_text("run"),
        task: opt_text("task"),
        category: opt_text("category"),
        amount_micros: opt_int("amount_micros")?,
        budget_micros: int("budget_micros")?,
        spent_micros: int("spent_micros")?,
        reserved_micros: int("reserved_micros")?,
        category_spent_micros: opt_int("category_spent_micros")?,
        period: unsigned("period")?,
        detail: cell("detail").to_owned(),
        hash: cell("hash").to_owned(),
        prev_hash: cell("prev_hash").to_owned(),
        event_hex: cell("event_hex").to_owned(),
    };
    // The amounts in units must say what the micros say.
    let shown = [
        ("amount", row.amount_micros.map(units).unwrap_or_default()),
        ("spent", units(row.spent_micros)),
        ("reserved", units(row.reserved_micros)),
    ];
    let mismatch = shown.into_iter().find(|(name, want)| cell(name) != want);
    let why = mismatch.map(|(name, want)| {
        format!(
            "field {name}: `{}` does not match the micros column (`{want}`)",
            cell(name)
        )
    });
    Ok(Line::Row(Box::new(row), why))
}

fn parse_hash(text: &str) -> Option<blake3::Hash> {
    blake3::Hash::from_hex(text).ok()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// A row as the proof needs it.
struct Seen {
    line: u64,
    row: u64,
    seq: u64,
    recorded_at_micros: i64,
    hash: blake3::Hash,
}

#[derive(Default)]
struct Checker {
    format: &'static str,
    opening: Option<OpeningLine>,
    tenant: TenantId,
    /// The rows may start mid-history (`--from`): tasks submitted before
    /// the first row are unknown.
    starts_late: bool,
    totals: Totals,
    task_runs: FxHashMap<String, RunId>,
    seen: Vec<Seen>,
    /// The first row that fails, by index in `seen`.
    failure: Option<(usize, String)>,
    nodes: Vec<(u64, ProofNode)>,
    tenant_line: Option<(u64, TenantLine)>,
    proof: Option<(u64, ProofLine)>,
}

impl Checker {
    fn take(&mut self, line: u64, parsed: Line) -> Result<(), VerifyExportError> {
        if let Some((proof_line, _)) = &self.proof {
            return Err(Failed(format!(
                "line {line}: content after the proof line ({proof_line}): a row was added at the end"
            )));
        }
        match parsed {
            Line::Opening(opening) => {
                if self.opening.is_some() {
                    return Err(Malformed(format!("line {line}: a second opening line")));
                }
                if opening.format != FORMAT {
                    return Err(Malformed(format!(
                        "line {line}: format `{}` is not {FORMAT}",
                        opening.format
                    )));
                }
                self.totals = Totals::from_view(&opening.totals)
                    .map_err(|e| Malformed(format!("line {line}: totals: {e}")))?;
                if let Some(why) = diff_totals(&self.totals_view()?, &opening.totals) {
                    return Err(Failed(format!("line {line}: opening totals: {why}")));
                }
                self.tenant = TenantId(opening.tenant.clone());
                self.starts_late = opening.from.is_some();
                self.opening = Some(*opening);
            }
            _ if self.opening.is_none() => {
                return Err(Malformed(format!(
                    "line {line}: the file does not start with its opening line"
                )));
            }
            Line::Row(row, units_mismatch) => {
                if !self.nodes.is_empty() || self.tenant_line.is_some() {
                    return Err(Failed(format!(
                        "line {line} (row {}, seq {}): a row among the proof nodes: a row was added or moved",
                        row.row, row.seq
                    )));
                }
                self.row(line, &row, units_mismatch);
            }
            Line::Node(node) => {
                if let Some((tenant_line, _)) = &self.tenant_line {
                    return Err(Failed(format!(
                        "line {line}: a proof node after the tenant line ({tenant_line})"
                    )));
                }
                let hash = parse_hash(&node.hash).ok_or_else(|| {
                    Failed(format!(
                        "line {line}: proof node hash `{}` is not 64 hex digits",
                        node.hash
                    ))
                })?;
                self.nodes.push((
                    line,
                    ProofNode {
                        first_seq: node.first_seq,
                        last_seq: node.last_seq,
                        hash,
                    },
                ));
            }
            Line::Tenant(tenant) => {
                if self.tenant_line.is_some() {
                    return Err(Malformed(format!("line {line}: a second tenant line")));
                }
                self.tenant_line = Some((line, *tenant));
            }
            Line::Proof(proof) => self.proof = Some((line, *proof)),
        }
        Ok(())
    }

    fn totals_view(&self) -> Result<TotalsView, VerifyExportError> {
        self.totals.view().map_err(Failed)
    }

    fn row(&mut self, line: u64, row: &RowLine, units_mismatch: Option<String>) {
        let index = self.seen.len();
        let hash = parse_hash(&row.hash).unwrap_or(blake3::Hash::from_bytes([0; 32]));
        let previous = self.seen.last().map(|s| (s.seq, s.hash));
        self.seen.push(Seen {
            line,
            row: row.row,
            seq: row.seq,
            recorded_at_micros: row.recorded_at_micros,
            hash,
        });
        if self.failure.is_some() {
            return;
        }
        let checked = match units_mismatch {
            Some(why) => Err(why),
            None => self.check_row(index, row, previous),
        };
        if let Err(why) = checked {
            let place = format!("line {line} (row {}, seq {})", row.row, row.seq);
            self.failure = Some((index, format!("{place}: {why}")));
        }
    }

    fn check_row(
        &mut self,
        index: usize,
        row: &RowLine,
        previous: Option<(u64, blake3::Hash)>,
    ) -> Result<(), String> {
        if let Some((prev_seq, _)) = previous {
            if row.seq <= prev_seq {
                return Err(format!(
                    "seq {} does not follow seq {prev_seq}: rows are in strictly increasing seq order (a row was duplicated or moved)",
                    row.seq
                ));
            }
        }
        if row.row != index as u64 + 1 {
            return Err(format!(
                "field row: {} where {} was expected (a row was dropped, added or moved)",
                row.row,
                index + 1
            ));
        }
        let at =
            Timestamp::parse(&row.recorded_at).map_err(|e| format!("field recorded_at: {e}"))?;
        if at.as_micros() != row.recorded_at_micros {
            return Err(format!(
                "field recorded_at: {} is not recorded_at_micros {}",
                row.recorded_at, row.recorded_at_micros
            ));
        }
        let stated = parse_hash(&row.hash).ok_or("field hash: not 64 hex digits")?;
        let prev_hash = parse_hash(&row.prev_hash).ok_or("field prev_hash: not 64 hex digits")?;
        let bytes = unhex(&row.event_hex).ok_or("field event_hex: not hex")?;
        let recomputed = record_hash(row.seq, at, &prev_hash, &bytes);
        if recomputed != stated {
            return Err(format!(
                "field hash: {} is not the hash of the row's record (recomputed {})",
                row.hash,
                recomputed.to_hex()
            ));
        }
        if let Some((prev_seq, prev_row_hash)) = previous {
            if prev_seq + 1 == row.seq && prev_row_hash != prev_hash {
                return Err(format!(
                    "field prev_hash: not the hash of the row before (seq {prev_seq})"
                ));
            }
        }
        let event = decode_event(&bytes).map_err(|e| format!("field event_hex: {e}"))?;
        self.check_facts(row, &event)?;
        self.totals.apply(&event)?;
        let t = &self.totals;
        let category_spent = event_category(&event).map(|c| t.spent_by_category[c]);
        let expected = [
            (
                "budget_micros",
                Some(t.budget_micros),
                Some(row.budget_micros),
            ),
            (
                "spent_micros",
                Some(t.spent_micros()?),
                Some(row.spent_micros),
            ),
            (
                "reserved_micros",
                Some(t.reserved_micros),
                Some(row.reserved_micros),
            ),
            (
                "category_spent_micros",
                category_spent,
                row.category_spent_micros,
            ),
        ];
        for (field, want, found) in expected {
            if want != found {
                return Err(format!(
                    "field {field}: the row says {}, the rows so far give {}",
                    show(found),
                    show(want)
                ));
            }
        }
        if row.period != t.period {
            return Err(format!(
                "field period: the row says {}, the rows so far give {}",
                row.period, t.period
            ));
        }
        Ok(())
    }

    /// The row's human fields against its decoded event.
    fn check_facts(&mut self, row: &RowLine, event: &Event) -> Result<(), String> {
        if !is_money_event(event) {
            return Err(format!(
                "field event_hex: a {} event is not part of a cost history",
                event.kind()
            ));
        }
        let task = event.task().map(|t| t.as_str());
        let known_run = task.and_then(|t| self.task_runs.get(t)).cloned();
        match event.tenant() {
            Some(tenant) if *tenant != self.tenant => {
                return Err(format!(
                    "field event_hex: the event is of tenant `{tenant}`, the file of `{}`",
                    self.tenant
                ));
            }
            Some(_) => {}
            // A skip names only its task: it must be one of the tenant's.
            None if known_run.is_none() && !self.starts_late => {
                return Err(format!(
                    "field task: `{}` was not submitted by tenant `{}` in an earlier row",
                    task.unwrap_or(""),
                    self.tenant
                ));
            }
            None => {}
        }
        // A task-only event's run comes from its submission; in a file that
        // starts late, a task submitted before the first row keeps the run
        // the row states.
        let task_run = match (&known_run, event.run(), &row.run) {
            (None, None, Some(stated)) if self.starts_late => Some(RunId(stated.clone())),
            _ => known_run,
        };
        let want = facts(event, task_run.as_ref());
        let fields = [
            ("kind", Some(want.kind.to_owned()), Some(row.kind.clone())),
            ("run", want.run, row.run.clone()),
            ("task", want.task, row.task.clone()),
            (
                "category",
                want.category.map(|c| c.name().to_owned()),
                row.category.clone(),
            ),
            (
                "amount_micros",
                want.amount_micros.map(|a| a.to_string()),
                row.amount_micros.map(|a| a.to_string()),
            ),
            ("detail", Some(want.detail), Some(row.detail.clone())),
        ];
        for (field, want, found) in fields {
            if want != found {
                return Err(format!(
                    "field {field}: the row says {}, the event says {}",
                    quote(found.as_deref()),
                    quote(want.as_deref())
                ));
            }
        }
        if let Event::TaskSubmitted { task, run, .. } = event {
            self.task_runs.insert(task.0.clone(), run.clone());
        }
        Ok(())
    }

    fn finish(self, expected_head: Option<&str>) -> Result<VerifyExportReport, VerifyExportError> {
        let Some(opening) = &self.opening else {
            return Err(Malformed("the file is empty".to_owned()));
        };
        let Some((proof_line, proof)) = &self.proof else {
            return Err(Malformed(
                "no proof line at the end: the file is cut short".to_owned(),
            ));
        };
        let at_proof = |what: String| Failed(format!("line {proof_line} (proof): {what}"));
        if proof.scheme != SCHEME {
            return Err(Malformed(format!(
                "line {proof_line}: unknown proof scheme `{}` (expected {SCHEME})",
                proof.scheme
            )));
        }
        if proof.tree_size != proof.head_seq {
            return Err(at_proof(format!(
                "tree_size {} is not head_seq {}",
                proof.tree_size, proof.head_seq
            )));
        }
        let multi = MultiProof {
            nodes: self.nodes.iter().map(|(_, n)| *n).collect(),
        };
        let node_line = |index: usize| self.nodes.get(index).map_or(*proof_line, |n| n.0);
        // The rows and the head, with room to name dropped rows; bounded, as
        // tree_size comes from the file.
        let max = self.seen.len().saturating_mul(2).saturating_add(1_024);
        let mut proven = proven_seqs(&multi, proof.tree_size, max, node_line)?;
        if !proof.head_in_rows {
            if proven.last() != Some(&proof.head_seq) {
                return Err(at_proof(format!(
                    "the proof does not cover the head seq {}",
                    proof.head_seq
                )));
            }
            proven.pop();
        }
        // Which comes first: a row whose seq the proof does not vouch for,
        // or a row that fails its own checks?
        let membership = self.first_membership_gap(&proven);
        match (membership, &self.failure) {
            (Some((m, why)), Some((f, _))) if m <= *f => return Err(Failed(why)),
            (Some((_, why)), None) => return Err(Failed(why)),
            (_, Some((_, why))) => return Err(Failed(why.clone())),
            (None, None) => {}
        }
        if proof.rows != self.seen.len() as u64 {
            return Err(at_proof(format!(
                "rows says {}, the file has {}",
                proof.rows,
                self.seen.len()
            )));
        }
        let head_hash = parse_hash(&proof.head_hash)
            .ok_or_else(|| at_proof("head_hash is not 64 hex digits".to_owned()))?;
        let stated_root = parse_hash(&proof.root)
            .ok_or_else(|| at_proof("root is not 64 hex digits".to_owned()))?;
        let mut leaves: Vec<(u64, blake3::Hash)> = self
            .seen
            .iter()
            .map(|s| (s.seq, leaf_hash(&s.hash)))
            .collect();
        if proof.head_in_rows {
            if self.seen.last().map(|s| s.hash) != Some(head_hash) {
                return Err(at_proof(
                    "head_in_rows, but the last row's hash is not head_hash".to_owned(),
                ));
            }
        } else {
            leaves.push((proof.head_seq, leaf_hash(&head_hash)));
        }
        let records_root = multi
            .root(proof.tree_size, &leaves)
            .map_err(|e| at_proof(e.to_string()))?;
        let stated_records_root = parse_hash(&proof.records_root)
            .ok_or_else(|| at_proof("records_root is not 64 hex digits".to_owned()))?;
        if records_root != stated_records_root {
            return Err(at_proof(format!(
                "the rows and proof nodes give records root {}, the file states {} (a proof node, a row hash or the root was altered)",
                records_root.to_hex(),
                proof.records_root
            )));
        }
        let Some((tenant_line_no, tenant)) = &self.tenant_line else {
            return Err(Malformed(format!(
                "line {proof_line}: no tenant line before the proof"
            )));
        };
        let tenants_root = self.check_tenant(*tenant_line_no, tenant, opening)?;
        let stated_tenants_root = parse_hash(&proof.tenants_root)
            .ok_or_else(|| at_proof("tenants_root is not 64 hex digits".to_owned()))?;
        if tenants_root != stated_tenants_root {
            return Err(Failed(format!(
                "line {tenant_line_no} (tenant): the tenant's tag, count and subroot with its tenants path give tenants root {}, the proof states {} (the count, the subroot or the path was altered: a row was dropped or added)",
                tenants_root.to_hex(),
                proof.tenants_root
            )));
        }
        let root = checkpoint_root(&records_root, &tenants_root);
        if root != stated_root {
            return Err(at_proof(format!(
                "records_root and tenants_root give checkpoint root {}, the file states {}",
                root.to_hex(),
                proof.root
            )));
        }
        if let Some(why) = diff_totals(&self.totals_view()?, &proof.totals) {
            return Err(at_proof(format!("closing totals: {why}")));
        }
        if let Some(expected) = expected_head {
            let expected = expected.trim().to_ascii_lowercase();
            if expected != proof.head_hash && expected != proof.root {
                return Err(Failed(format!(
                    "--head {expected} is neither the file's head hash {} nor its root {}: the export is not of the ledger you expect",
                    proof.head_hash, proof.root
                )));
            }
        }
        Ok(VerifyExportReport {
            format: self.format,
            tenant: opening.tenant.clone(),
            rows: self.seen.len() as u64,
            proof_nodes: self.nodes.len() as u64,
            tree_size: proof.tree_size,
            head_hash: proof.head_hash.clone(),
            root: proof.root.clone(),
            tenant_rows: tenant.count,
        })
    }

    /// Completeness: the rows are every leaf of the tenant's subtree
    /// between the boundary leaves (or its ends), the boundary leaves lie
    /// outside the date window, and the subtree with the tenant's tag and
    /// count is a leaf of the tenants tree. Returns the tenants root the
    /// path gives.
    fn check_tenant(
        &self,
        line: u64,
        tenant: &TenantLine,
        opening: &OpeningLine,
    ) -> Result<blake3::Hash, VerifyExportError> {
        let at = |what: String| Failed(format!("line {line} (tenant): {what}"));
        if tenant.scheme != tenants::SCHEME {
            return Err(Malformed(format!(
                "line {line}: unknown tenant scheme `{}` (expected {})",
                tenant.scheme,
                tenants::SCHEME
            )));
        }
        let tag: [u8; 32] = parse_hash(&tenant.tag)
            .map(|h| *h.as_bytes())
            .ok_or_else(|| at("tag is not 64 hex digits".to_owned()))?;
        if tag != tenant_tag(&opening.ledger_id, &opening.tenant) {
            return Err(at(format!(
                "tag {} is not the tag of tenant `{}` in ledger `{}`",
                tenant.tag, opening.tenant, opening.ledger_id
            )));
        }
        let subroot = parse_hash(&tenant.subroot)
            .ok_or_else(|| at("subroot is not 64 hex digits".to_owned()))?;
        let boundary = |b: &Option<super::export::BoundaryLeaf>, side: &str| {
            b.as_ref()
                .map(|b| {
                    parse_hash(&b.hash)
                        .map(|h| (b.leaf, b.seq, b.recorded_at_micros, h))
                        .ok_or_else(|| {
                            at(format!("the {side} boundary's hash is not 64 hex digits"))
                        })
                })
                .transpose()
        };
        let left = boundary(&tenant.left, "left")?;
        let right = boundary(&tenant.right, "right")?;
        if left.is_some() && opening.from.is_none() {
            return Err(at(
                "a leaf before the rows, but no --from: the rows must start at the tenant's first leaf"
                    .to_owned(),
            ));
        }
        if right.is_some() && opening.to.is_none() {
            return Err(at(
                "a leaf after the rows, but no --to: the rows must end at the tenant's last leaf"
                    .to_owned(),
            ));
        }
        let subtree = to_multiproof(&tenant.nodes).map_err(&at)?;
        // Room for the rows, both boundaries and some dropped rows to name;
        // bounded, as count comes from the file.
        let max = self.seen.len().saturating_mul(2).saturating_add(1_024);
        let open = subtree
            .proven_seqs(tenant.count, max)
            .map_err(|e| at(format!("subtree proof (labels are leaf positions): {e}")))?;

        // Where a missing row of the tenant would stand, by the seqs around.
        let left_seq = left.map(|l| l.1);
        let right_seq = right.map(|r| r.1);
        let row_seq = |i: usize| self.seen.get(i).map(|s| s.seq);
        let between = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(b), Some(a)) => format!("between seq {b} and seq {a}"),
            (Some(b), None) => format!("after seq {b}"),
            (None, Some(a)) => format!("before seq {a}"),
            (None, None) => "somewhere in the file".to_owned(),
        };
        let mut rows_open = open.as_slice();
        if let Some((leaf, ..)) = left {
            match rows_open.split_first() {
                Some((&first, rest)) if first == leaf => rows_open = rest,
                _ => {
                    return Err(at(format!(
                        "the leaf before the rows is leaf {leaf}, which the subtree proof does not leave open first"
                    )));
                }
            }
        }
        if let Some((leaf, ..)) = right {
            match rows_open.split_last() {
                Some((&last, rest)) if last == leaf => rows_open = rest,
                _ => {
                    return Err(at(format!(
                        "the leaf after the rows is leaf {leaf}, which the subtree proof does not leave open last"
                    )));
                }
            }
        }
        // The rows' leaves follow the left boundary (or start at 1) with no
        // gap: a leaf folded into a node is a row left out.
        let first_leaf = left.map_or(1, |l| l.0.saturating_add(1));
        let mut want = first_leaf;
        for (i, &leaf) in rows_open.iter().enumerate() {
            if leaf != want {
                let before = if i == 0 { left_seq } else { row_seq(i - 1) };
                let after = row_seq(i).or(right_seq);
                return Err(at(format!(
                    "leaf {want} of the tenant is folded into a subtree node, not a row: a row of the tenant {} is missing",
                    between(before, after)
                )));
            }
            want = want.saturating_add(1);
        }
        let after_rows = right.map_or(tenant.count.saturating_add(1), |r| r.0);
        if want != after_rows {
            let before = self.seen.last().map(|s| s.seq).or(left_seq);
            return Err(at(format!(
                "leaf {want} of the tenant is folded into a subtree node after the rows: a row of the tenant {} is missing",
                between(before, right_seq)
            )));
        }
        if rows_open.len() != self.seen.len() {
            if rows_open.len() > self.seen.len() {
                return Err(at(format!(
                    "the subtree proof leaves {} leaves open for rows, the file has {} rows: a row of the tenant {} is missing",
                    rows_open.len(),
                    self.seen.len(),
                    between(left_seq, right_seq)
                )));
            }
            return Err(at(format!(
                "the file has {} rows where the subtree proof leaves {} leaves open: a row was added",
                self.seen.len(),
                rows_open.len()
            )));
        }
        // The boundaries lie outside the window, on their side of the rows.
        if let (Some((_, seq, micros, _)), Some(from)) = (left, opening.from) {
            if micros >= from.as_micros() {
                return Err(at(format!(
                    "the leaf before the rows (seq {seq}) was recorded at {micros} µs, not before --from {from}: it belongs among the rows (a row was dropped at the start)"
                )));
            }
            if let Some(first) = row_seq(0).or(right_seq) {
                if seq >= first {
                    return Err(at(format!(
                        "the leaf before the rows has seq {seq}, not before seq {first}"
                    )));
                }
            }
        }
        if let (Some((_, seq, micros, _)), Some(to)) = (right, opening.to) {
            if micros < to.as_micros() {
                return Err(at(format!(
                    "the leaf after the rows (seq {seq}) was recorded at {micros} µs, before --to {to}: it belongs among the rows (a row was dropped at the end)"
                )));
            }
            if let Some(last) = self.seen.last().map(|s| s.seq) {
                if seq <= last {
                    return Err(at(format!(
                        "the leaf after the rows has seq {seq}, not after seq {last}"
                    )));
                }
            }
        }
        let mut leaves = Vec::with_capacity(self.seen.len() + 2);
        if let Some((leaf, seq, micros, hash)) = left {
            leaves.push((leaf, row_leaf(seq, micros, &hash)));
        }
        for (i, s) in self.seen.iter().enumerate() {
            let leaf = first_leaf + i as u64;
            leaves.push((leaf, row_leaf(s.seq, s.recorded_at_micros, &s.hash)));
        }
        if let Some((leaf, seq, micros, hash)) = right {
            leaves.push((leaf, row_leaf(seq, micros, &hash)));
        }
        let computed = subtree
            .root_in(Domain::TENANT, tenant.count, &leaves)
            .map_err(|e| at(format!("subtree proof: {e}")))?;
        if computed != subroot {
            return Err(at(format!(
                "the rows, the boundary leaves and the subtree nodes give subroot {}, the file states {} (a row's seq, time or hash, a boundary leaf or a node was altered)",
                computed.to_hex(),
                tenant.subroot
            )));
        }
        let path = to_multiproof(&tenant.tenants_path).map_err(&at)?;
        let open = path
            .proven_seqs(tenant.tenants_size, 1)
            .map_err(|e| at(format!("tenants path: {e}")))?;
        if open != [tenant.tenant_position] {
            return Err(at(format!(
                "the tenants path leaves {open:?} open, not the tenant's position {}",
                tenant.tenant_position
            )));
        }
        let leaf = tenant_leaf(&tag, tenant.count, &subroot);
        path.root_in(
            Domain::TENANTS,
            tenant.tenants_size,
            &[(tenant.tenant_position, leaf)],
        )
        .map_err(|e| at(format!("tenants path: {e}")))
    }

    /// The first row (by index) whose seq is not the one the proof
    /// vouches for at that place, explained.
    fn first_membership_gap(&self, proven: &[u64]) -> Option<(usize, String)> {
        let place = |s: &Seen| format!("line {} (row {}, seq {})", s.line, s.row, s.seq);
        for (i, seen) in self.seen.iter().enumerate() {
            let Some(&want) = proven.get(i) else {
                return Some((
                    i,
                    format!(
                        "{}: the proof does not vouch for this row (a row was added)",
                        place(seen)
                    ),
                ));
            };
            if seen.seq > want {
                return Some((
                    i,
                    format!(
                        "{}: the proof vouches for seq {want} before this row, and no row has it (a row was dropped)",
                        place(seen)
                    ),
                ));
            }
            if seen.seq < want {
                return Some((
                    i,
                    format!(
                        "{}: the proof does not vouch for seq {} here, it expects seq {want} (a row was added or moved)",
                        place(seen),
                        seen.seq
                    ),
                ));
            }
        }
        proven.get(self.seen.len()).map(|&want| {
            let after = self
                .seen
                .last()
                .map_or("the opening line".to_owned(), place);
            (
                self.seen.len(),
                format!(
                    "after {after}: the proof vouches for seq {want}, and no row has it (a row was dropped from the end)"
                ),
            )
        })
    }
}

/// Labelled nodes of a tenant's subtree or of the tenants tree.
fn to_multiproof(nodes: &[LeafNode]) -> Result<MultiProof, String> {
    let nodes = nodes
        .iter()
        .enumerate()
        .map(|(index, n)| {
            let hash = parse_hash(&n.hash)
                .ok_or_else(|| format!("node {index}: hash `{}` is not 64 hex digits", n.hash))?;
            Ok(ProofNode {
                first_seq: n.first,
                last_seq: n.last,
                hash,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(MultiProof { nodes })
}

/// The seqs the proof vouches for; a bad node is named by its line.
fn proven_seqs(
    proof: &MultiProof,
    size: u64,
    max: usize,
    node_line: impl Fn(usize) -> u64,
) -> Result<Vec<u64>, VerifyExportError> {
    proof.proven_seqs(size, max).map_err(|e| {
        let index = match &e {
            ProofError::OutOfTree { index, .. }
            | ProofError::Unordered { index, .. }
            | ProofError::Misshapen { index, .. } => *index,
            _ => proof.nodes.len(),
        };
        Failed(format!("line {}: {e}", node_line(index)))
    })
}

fn event_category(event: &Event) -> Option<usize> {
    match event {
        Event::CostIncurred { category, .. } => Some(category.index()),
        _ => None,
    }
}

fn show(value: Option<i64>) -> String {
    value.map_or("nothing".to_owned(), |v| v.to_string())
}

fn quote(value: Option<&str>) -> String {
    value.map_or("nothing".to_owned(), |v| format!("`{v}`"))
}

/// The first field where two totals differ, explained.
fn diff_totals(computed: &TotalsView, stated: &TotalsView) -> Option<String> {
    let scalars = [
        (
            "budget_micros",
            computed.budget_micros,
            stated.budget_micros,
        ),
        ("spent_micros", computed.spent_micros, stated.spent_micros),
        (
            "reserved_micros",
            computed.reserved_micros,
            stated.reserved_micros,
        ),
        (
            "overrun_micros",
            computed.overrun_micros,
            stated.overrun_micros,
        ),
    ];
    for (field, want, found) in scalars {
        if want != found {
            return Some(format!(
                "{field}: the file says {found}, the rows give {want}"
            ));
        }
    }
    if computed.period != stated.period {
        return Some(format!(
            "period: the file says {}, the rows give {}",
            stated.period, computed.period
        ));
    }
    if computed.spent_by_category != stated.spent_by_category {
        return Some(format!(
            "spent_by_category: the file says {:?}, the rows give {:?}",
            stated.spent_by_category, computed.spent_by_category
        ));
    }
    if computed.open_reservations != stated.open_reservations {
        return Some(format!(
            "open_reservations: the file says {:?}, the rows give {:?}",
            stated.open_reservations, computed.open_reservations
        ));
    }
    None
}
