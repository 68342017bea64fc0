//! A tenant's cost history as a file an auditor can verify offline:
//! `runledger export` writes it, [`super::verify_export`] checks it.
//!
//! The file (JSONL, one object a line; or CSV with the same objects):
//!
//! ```text
//! opening     format, tenant, filters, the totals before the first row
//! row × k     one per money record of the tenant, in seq order: seq, time,
//!             run, task, kind, category, amount, running totals, and the
//!             record's hash, prev_hash and canonical event bytes (hex)
//! proof_node  the Merkle multi-proof (see `audit::merkle`), left to right
//! tenant      the tenant's commitment (see `audit::tenants`): its tag,
//!             row count and subtree root, the leaves just outside the
//!             rows (date filters), the subtree's proof nodes, and the
//!             tenant leaf's path in the tenants tree
//! proof       tree size, the records, tenants and checkpoint roots, head
//!             seq and hash, row count, closing totals
//! ```
//!
//! The rows are the records that move or judge the tenant's money:
//! registration and budget updates, task submissions (their ceilings, and
//! so every task's run), reservations, costs by category, releases,
//! overruns, period resets, status changes, admission denials, degradation
//! verdicts and skipped nodes. Running totals follow the budget projection
//! of `domain::budget` (spend is per budget period, reset by
//! `budget_period_reset`) and are folded from seq 1 whatever the filters.
//!
//! Nothing of another tenant reaches the file: other records appear only
//! as Merkle nodes, hashes of hashes (and other tenants as nodes of the
//! tenants tree).

use std::collections::BTreeMap;
use std::io::Write;

use chrono::NaiveDate;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::merkle::{Domain, MultiProof, ProofNode, SCHEME, Tree, checkpoint_root};
use super::tenants::{self, Commitments, Owned, RowOwner, row_leaf, row_owner, tenants_tree};
use crate::domain::{
    BudgetPeriod, Category, Decision, Event, Micros, RunId, TaskId, TenantId, Timestamp,
};
use crate::log::codec::decode_event;
use crate::log::record::RawRecord;
use crate::log::store::{Store, WalkError};

/// The `format` an export's opening line names.
pub const FORMAT: &str = "runledger-export/2";

/// The CSV header. Rows of kind `opening`, `proof_node`, `tenant` and `proof` leave
/// every column empty but `kind` and `detail`, which holds the same JSON
/// object as the JSONL line of that kind.
pub const CSV_COLUMNS: [&str; 21] = [
    "row",
    "seq",
    "recorded_at",
    "recorded_at_micros",
    "run",
    "task",
    "kind",
    "category",
    "amount",
    "amount_micros",
    "budget_micros",
    "spent",
    "spent_micros",
    "reserved",
    "reserved_micros",
    "category_spent_micros",
    "period",
    "detail",
    "hash",
    "prev_hash",
    "event_hex",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub tenant: TenantId,
    /// First row recorded at or after this time.
    pub from: Option<Timestamp>,
    /// Last row recorded before this time.
    pub to: Option<Timestamp>,
    /// Prove against the published checkpoint at this seq instead of the
    /// head (rows after it are left out).
    pub checkpoint: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("the ledger is empty")]
    Empty,
    #[error("tenant `{0}` is not in the ledger")]
    UnknownTenant(TenantId),
    #[error("no published checkpoint at seq {0} (see `runledger checkpoint`)")]
    NoCheckpoint(u64),
    #[error("seq {seq}: {what}")]
    Damaged { seq: u64, what: String },
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_date(text: &str) -> Result<Timestamp, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
        return midnight
            .map(Timestamp)
            .ok_or_else(|| format!("date `{text}` is out of range"));
    }
    Timestamp::parse(text)
        .map_err(|_| format!("invalid date `{text}` (expected YYYY-MM-DD or RFC 3339)"))
}

/// What a row says about its record, derived from the event alone (the
/// run of a task-only event comes from the task's submission).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub kind: &'static str,
    pub run: Option<String>,
    pub task: Option<String>,
    pub category: Option<Category>,
    pub amount_micros: Option<i64>,
    pub detail: String,
}

fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::None => "none",
        BudgetPeriod::Daily => "daily",
        BudgetPeriod::Monthly => "monthly",
    }
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Continue => "continue",
        Decision::Degrade => "degrade",
        Decision::Terminate => "terminate",
    }
}

/// The facts of a money event; `task_run` is the run of its task.
pub fn facts(event: &Event, task_run: Option<&RunId>) -> Facts {
    let mut facts = Facts {
        kind: event.kind(),
        run: event.run().or(task_run).map(|r| r.0.clone()),
        task: event.task().map(|t| t.0.clone()),
        category: None,
        amount_micros: None,
        detail: String::new(),
    };
    match event {
        Event::TenantRegistered {
            budget_micros,
            budget_period,
            ..
        } => {
            facts.amount_micros = Some(budget_micros.0);
            facts.detail = format!("budget period {}", period_name(*budget_period));
        }
        Event::TenantUpdated {
            budget_micros,
            budget_period,
            ..
        } => {
            facts.amount_micros = budget_micros.map(|b| b.0);
            if let Some(period) = budget_period {
                facts.detail = format!("budget period {}", period_name(*period));
            }
        }
        Event::TaskSubmitted {
            cost_ceiling_micros,
            ..
        } => facts.amount_micros = Some(cost_ceiling_micros.0),
        Event::CostReserved { amount_micros, .. }
        | Event::ReservationReleased { amount_micros, .. }
        | Event::BudgetOverrun { amount_micros, .. } => {
            facts.amount_micros = Some(amount_micros.0);
        }
        Event::CostIncurred {
            category,
            amount_micros,
            ..
        } => {
            facts.category = Some(*category);
            facts.amount_micros = Some(amount_micros.0);
        }
        Event::BudgetStatusChanged { from, to, .. } => {
            facts.detail = format!("{} -> {}", from.name(), to.name());
        }
        Event::AdmissionDenied { reason, .. } | Event::TaskSkipped { reason, .. } => {
            facts.detail = reason.clone();
        }
        Event::DegradationDecided {
            decision, reason, ..
        } => facts.detail = format!("{}: {reason}", decision_name(*decision)),
        _ => {}
    }
    facts
}

/// A tenant's money at one point of its history, as the budget projection
/// folds it: spend of the current period by category, open reservations
/// (in total and per task), the budget, overruns, and the period number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub budget_micros: i64,
    pub spent_by_category: [i64; 6],
    pub reserved_micros: i64,
    /// Overrun over all periods (the projection keeps it across resets).
    pub overrun_micros: i64,
    /// Budget periods ended so far (`budget_period_reset` count).
    pub period: u64,
    pub open_reservations: BTreeMap<String, i64>,
}

fn add(a: i64, b: i64, field: &str) -> Result<i64, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{field} overflows i64 micros"))
}

fn sub(a: i64, b: i64, field: &str) -> Result<i64, String> {
    a.checked_sub(b)
        .ok_or_else(|| format!("{field} overflows i64 micros"))
}

impl Totals {
    pub fn spent_micros(&self) -> Result<i64, String> {
        self.spent_by_category
            .iter()
            .try_fold(0i64, |sum, &s| add(sum, s, "spent_micros"))
    }

    /// Applies one money event of the tenant, like `Tenants::evolve`.
    /// Checked arithmetic: the events may come from an untrusted file.
    pub fn apply(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::TenantRegistered { budget_micros, .. } => self.budget_micros = budget_micros.0,
            Event::TenantUpdated {
                budget_micros: Some(budget),
                ..
            } => self.budget_micros = budget.0,
            Event::CostReserved {
                task,
                amount_micros,
                ..
            } => {
                self.reserved_micros = add(self.reserved_micros, amount_micros.0, "reserved")?;
                self.move_reservation(task, amount_micros.0)?;
            }
            Event::CostIncurred {
                task,
                category,
                amount_micros,
                ..
            } => {
                let spent = &mut self.spent_by_category[category.index()];
                *spent = add(*spent, amount_micros.0, "spent")?;
                // Posting a task's cost consumes its reservation first.
                if let Some(task) = task {
                    let open = self.open_reservations.get(task.as_str()).copied();
                    let consumed = amount_micros.0.min(open.unwrap_or(0));
                    self.reserved_micros = sub(self.reserved_micros, consumed, "reserved")?;
                    self.move_reservation(task, -consumed)?;
                }
            }
            Event::ReservationReleased {
                task,
                amount_micros,
                ..
            } => {
                self.reserved_micros = sub(self.reserved_micros, amount_micros.0, "reserved")?;
                self.move_reservation(task, -amount_micros.0)?;
            }
            Event::BudgetOverrun { amount_micros, .. } => {
                self.overrun_micros = add(self.overrun_micros, amount_micros.0, "overrun")?;
            }
            Event::BudgetPeriodReset { .. } => {
                self.spent_by_category = [0; 6];
                self.period += 1;
            }
            _ => {}
        }
        Ok(())
    }

    fn move_reservation(&mut self, task: &TaskId, delta: i64) -> Result<(), String> {
        if delta == 0 {
            return Ok(());
        }
        let open = self
            .open_reservations
            .get(task.as_str())
            .copied()
            .unwrap_or(0);
        let now = add(open, delta, "a task's reservation")?;
        if now == 0 {
            self.open_reservations.remove(task.as_str());
        } else {
            self.open_reservations.insert(task.0.clone(), now);
        }
        Ok(())
    }

    pub fn view(&self) -> Result<TotalsView, String> {
        Ok(TotalsView {
            budget_micros: self.budget_micros,
            spent_micros: self.spent_micros()?,
            reserved_micros: self.reserved_micros,
            overrun_micros: self.overrun_micros,
            period: self.period,
            spent_by_category: Category::ALL
                .iter()
                .map(|c| (c.name().to_owned(), self.spent_by_category[c.index()]))
                .collect(),
            open_reservations: self.open_reservations.clone(),
        })
    }

    /// The totals a view states (for the opening line of a file).
    pub fn from_view(view: &TotalsView) -> Result<Totals, String> {
        let mut spent_by_category = [0i64; 6];
        for (name, micros) in &view.spent_by_category {
            let category = Category::ALL
                .iter()
                .find(|c| c.name() == name)
                .ok_or_else(|| format!("unknown category `{name}`"))?;
            spent_by_category[category.index()] = *micros;
        }
        Ok(Totals {
            budget_micros: view.budget_micros,
            spent_by_category,
            reserved_micros: view.reserved_micros,
            overrun_micros: view.overrun_micros,
            period: view.period,
            open_reservations: view.open_reservations.clone(),
        })
    }
}

/// Totals as files state them. Maps are sorted (BTreeMap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalsView {
    pub budget_micros: i64,
    pub spent_micros: i64,
    pub reserved_micros: i64,
    pub overrun_micros: i64,
    pub period: u64,
    pub spent_by_category: BTreeMap<String, i64>,
    /// Reservations still open, per task (only tasks with one).
    pub open_reservations: BTreeMap<String, i64>,
}

/// The first line of a file (the `detail` of the first CSV row).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningLine {
    pub kind: String,
    pub format: String,
    pub tenant: String,
    pub ledger_id: String,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub checkpoint_seq: Option<u64>,
    /// The totals before the first row, folded from seq 1.
    pub totals: TotalsView,
}

/// One record of the tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowLine {
    pub kind: String,
    pub row: u64,
    pub seq: u64,
    pub recorded_at: String,
    pub recorded_at_micros: i64,
    pub run: Option<String>,
    pub task: Option<String>,
    pub category: Option<String>,
    pub amount_micros: Option<i64>,
    pub budget_micros: i64,
    pub spent_micros: i64,
    pub reserved_micros: i64,
    /// Spend of the row's category this period, after the row.
    pub category_spent_micros: Option<i64>,
    pub period: u64,
    pub detail: String,
    pub hash: String,
    pub prev_hash: String,
    pub event_hex: String,
}

/// One node of the multi-proof: the root of seqs `first_seq..=last_seq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLine {
    pub kind: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub hash: String,
}

/// A leaf of the tenant's subtree just outside the rows (the file states
/// what the leaf is hashed from, so a verifier sees its seq and time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundaryLeaf {
    /// Position in the tenant's subtree (1-based).
    pub leaf: u64,
    pub seq: u64,
    pub recorded_at_micros: i64,
    pub hash: String,
}

/// A node of the tenant subtree or of the tenants tree: the root of the
/// leaves at positions `first..=last` (1-based).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafNode {
    pub first: u64,
    pub last: u64,
    pub hash: String,
}

/// The tenant's commitment: the line before the proof.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLine {
    pub kind: String,
    pub scheme: String,
    /// `tenant_tag(ledger_id, tenant)`, hex.
    pub tag: String,
    /// Leaves of the tenant's subtree: its rows without date filters.
    pub count: u64,
    pub subroot: String,
    /// The leaf just before the rows (only with `--from`).
    pub left: Option<BoundaryLeaf>,
    /// The leaf just after the rows (only with `--to`; the subtree ends at
    /// the proof's tree size).
    pub right: Option<BoundaryLeaf>,
    /// The subtree's multi-proof of the boundary leaves and the rows.
    pub nodes: Vec<LeafNode>,
    /// Leaves of the tenants tree, and this tenant's position (1-based).
    pub tenants_size: u64,
    pub tenant_position: u64,
    /// The tenant leaf's inclusion proof: the tenants tree's multi-proof
    /// of that one leaf (its sibling path, left to right).
    pub tenants_path: Vec<LeafNode>,
}

/// The last line of a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofLine {
    pub kind: String,
    pub scheme: String,
    pub tree_size: u64,
    /// Root of the tree over every record hash.
    pub records_root: String,
    /// Root of the tenants tree.
    pub tenants_root: String,
    /// The checkpoint root: `H(0x02 ‖ records_root ‖ tenants_root)`.
    pub root: String,
    pub head_seq: u64,
    pub head_hash: String,
    pub rows: u64,
    /// Whether the head record is the last row (else the proof takes the
    /// head's leaf from `head_hash`).
    pub head_in_rows: bool,
    /// The totals after the last row.
    pub totals: TotalsView,
}

/// A finished export, ready to be written in either format. Rows are
/// rendered as they are written (never all at once: a million rows of
/// strings would cost more than the whole chain read).
pub struct Export {
    pub opening: OpeningLine,
    /// The records of the rows, with the totals after each.
    records: Vec<(Box<Candidate>, Running)>,
    task_runs: FxHashMap<TaskId, RunId>,
    pub nodes: Vec<NodeLine>,
    pub tenant: TenantLine,
    pub proof: ProofLine,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// A money record of the tenant, collected while the chain is read.
struct Candidate {
    seq: u64,
    recorded_at: Timestamp,
    prev_hash: blake3::Hash,
    hash: blake3::Hash,
    bytes: Vec<u8>,
    event: Event,
}

/// What a worker hands back per record: its hash, what the tenants
/// commitment needs of it, and the record itself when it may be the
/// tenant's.
type Read = (blake3::Hash, Owned, Option<Box<Candidate>>);

fn read_record(raw: RawRecord<'_>, tenant: &TenantId, ledger_id: &str) -> Result<Read, String> {
    let event =
        decode_event(raw.event_bytes).map_err(|what| format!("event cannot be decoded: {what}"))?;
    let at = raw.recorded_at.as_micros();
    let owned = Owned::of(ledger_id, raw.seq, at, &raw.hash, &event);
    let ours = match row_owner(&event) {
        // Whose task was skipped is known only in seq order.
        RowOwner::SkippedTask(_) => true,
        RowOwner::Tenant(owner) => owner == tenant,
        RowOwner::Nobody => false,
    };
    let candidate = ours.then(|| {
        Box::new(Candidate {
            seq: raw.seq,
            recorded_at: raw.recorded_at,
            prev_hash: raw.prev_hash,
            hash: raw.hash,
            bytes: raw.event_bytes.to_vec(),
            event,
        })
    });
    Ok((raw.hash, owned, candidate))
}

/// The totals after one row, as the row states them.
struct Running {
    budget_micros: i64,
    spent_micros: i64,
    reserved_micros: i64,
    spent_by_category: [i64; 6],
    period: u64,
}

fn render_row(row: u64, c: &Candidate, totals: &Running, facts: Facts) -> RowLine {
    RowLine {
        kind: facts.kind.to_owned(),
        row,
        seq: c.seq,
        recorded_at: c.recorded_at.to_string(),
        recorded_at_micros: c.recorded_at.as_micros(),
        run: facts.run,
        task: facts.task,
        category: facts.category.map(|c| c.name().to_owned()),
        amount_micros: facts.amount_micros,
        budget_micros: totals.budget_micros,
        spent_micros: totals.spent_micros,
        reserved_micros: totals.reserved_micros,
        category_spent_micros: facts.category.map(|c| totals.spent_by_category[c.index()]),
        period: totals.period,
        detail: facts.detail,
        hash: c.hash.to_hex().to_string(),
        prev_hash: c.prev_hash.to_hex().to_string(),
        event_hex: hex(&c.bytes),
    }
}

/// Reads the whole chain (every hash checked) and builds the export of
/// `options.tenant`.
pub fn export(store: &Store, options: &ExportOptions) -> Result<Export, ExportError> {
    let published = match options.checkpoint {
        Some(seq) => {
            let all = store.published().map_err(|b| ExportError::Damaged {
                seq: b.seq,
                what: b.what,
            })?;
            let found = all.into_iter().find(|p| p.seq == seq);
            Some(found.ok_or(ExportError::NoCheckpoint(seq))?)
        }
        None => None,
    };
    let limit = published.map_or(u64::MAX, |p| p.seq);
    let tenant = &options.tenant;
    let ledger_id = store.ledger_id();

    // The head from the last frame's header sizes the hash list (a hint
    // only: the walk below is what is trusted).
    let expected = store.head().map_or(0, |h| h.seq).min(limit);
    let mut record_hashes: Vec<blake3::Hash> =
        Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut candidates: Vec<Box<Candidate>> = Vec::new();
    // The tenant's tasks and their runs, for skips and task-only events.
    let mut task_runs: FxHashMap<TaskId, RunId> = FxHashMap::default();
    let mut registered = false;
    // Every tenant's subtree, for the tenants root.
    let mut commitments = Commitments::default();
    store.read_chain(
        |raw| read_record(raw, tenant, &ledger_id),
        |frames| {
            for (hash, owned, candidate) in frames.into_iter().flatten() {
                if record_hashes.len() as u64 >= limit {
                    return;
                }
                record_hashes.push(hash);
                commitments.push(owned);
                let Some(candidate) = candidate else { continue };
                match &candidate.event {
                    Event::TaskSkipped { task, .. } if !task_runs.contains_key(task) => continue,
                    Event::TaskSubmitted { task, run, .. } => {
                        task_runs.insert(task.clone(), run.clone());
                    }
                    Event::TenantRegistered { .. } => registered = true,
                    _ => {}
                }
                candidates.push(candidate);
            }
        },
    )?;
    let Some(&head_hash) = record_hashes.last() else {
        return Err(ExportError::Empty);
    };
    if !registered {
        return Err(ExportError::UnknownTenant(tenant.clone()));
    }
    let size = record_hashes.len() as u64;
    if let Some(p) = published {
        if size < p.seq {
            return Err(ExportError::Damaged {
                seq: size + 1,
                what: format!(
                    "the ledger was truncated: published checkpoint {} is past its end",
                    p.seq
                ),
            });
        }
        if head_hash.as_bytes() != &p.head {
            return Err(ExportError::Damaged {
                seq: p.seq,
                what: "the chain does not match the published checkpoint at this seq".to_owned(),
            });
        }
    }
    let tree = Tree::new(&record_hashes);
    drop(record_hashes);

    // The tenant's subtree over all its rows (the same leaves the
    // commitment accumulated), and its place in the tenants tree.
    let tag = tenants::tenant_tag(&ledger_id, tenant.as_str());
    let leaves: Vec<blake3::Hash> = candidates
        .par_iter()
        .map(|c| row_leaf(c.seq, c.recorded_at.as_micros(), &c.hash))
        .collect();
    let subtree = Tree::from_leaves(Domain::TENANT, leaves);
    let entries = commitments.entries();
    drop(commitments);
    let position = entries.partition_point(|e| e.tag < tag);
    let entry = entries.get(position).filter(|e| e.tag == tag);
    // Two computations of one subtree: they agree, or the code is wrong.
    assert!(entry.is_some(), "the tenant has rows but no commitment");
    assert_eq!(entry.map(|e| e.count), Some(subtree.size()));
    assert_eq!(entry.map(|e| e.subroot), Some(subtree.root()));
    let tenants = tenants_tree(&entries);
    let tenants_path = tenants.prove(&[position as u64 + 1]);
    let records_root = tree.root();
    let tenants_root = tenants.root();
    let root = checkpoint_root(&records_root, &tenants_root);
    if let Some(p) = published {
        let roots = [
            ("records", records_root, &p.records_root),
            ("tenants", tenants_root, &p.tenants_root),
            ("checkpoint", root, &p.root),
        ];
        for (what, computed, stored) in roots {
            if computed.as_bytes() != stored {
                return Err(ExportError::Damaged {
                    seq: p.seq,
                    what: format!("the {what} root does not match the published checkpoint"),
                });
            }
        }
    }

    // The window: from the first row recorded at or after `from` to the
    // last recorded before `to`, everything between kept (so the running
    // totals stay checkable even if imported times went backwards).
    let in_window = |at: Timestamp| {
        options.from.is_none_or(|from| at >= from) && options.to.is_none_or(|to| at < to)
    };
    let first = candidates.iter().position(|c| in_window(c.recorded_at));
    let last = candidates.iter().rposition(|c| in_window(c.recorded_at));
    let (mut start, mut end) = match (first, last) {
        (Some(first), Some(last)) => (first, last + 1),
        // No row: the rows would stand before the first record at or
        // after `from` (which is then at or after `to`).
        _ => {
            let at = candidates
                .iter()
                .position(|c| options.from.is_none_or(|from| c.recorded_at >= from));
            let at = at.unwrap_or(candidates.len());
            (at, at)
        }
    };
    // The leaves just outside the rows must be outside the window as a
    // verifier checks it (the one before recorded before `from`, the one
    // after at or after `to`); where recorded times went back, the rows
    // grow until they are.
    let before_from = |c: &Candidate| options.from.is_some_and(|from| c.recorded_at < from);
    let at_or_after_to = |c: &Candidate| options.to.is_some_and(|to| c.recorded_at >= to);
    while start > 0 && !before_from(&candidates[start - 1]) {
        start -= 1;
    }
    while end < candidates.len() && !at_or_after_to(&candidates[end]) {
        end += 1;
    }
    let window = start..end;
    // The subtree proof: the boundary leaves and the rows (positions are
    // 1-based: candidate i is leaf i + 1).
    let boundary = |index: usize| {
        let c = &candidates[index];
        BoundaryLeaf {
            leaf: index as u64 + 1,
            seq: c.seq,
            recorded_at_micros: c.recorded_at.as_micros(),
            hash: c.hash.to_hex().to_string(),
        }
    };
    let left = (start > 0).then(|| boundary(start - 1));
    let right = (end < candidates.len()).then(|| boundary(end));
    let proven_lo = start.saturating_sub(1);
    let proven_hi = (end + 1).min(candidates.len());
    let proven_leaves: Vec<u64> = (proven_lo as u64 + 1..=proven_hi as u64).collect();
    let subtree_proof = subtree.prove(&proven_leaves);
    let leaf_nodes = |proof: MultiProof| -> Vec<LeafNode> {
        proof
            .nodes
            .into_iter()
            .map(|n: ProofNode| LeafNode {
                first: n.first_seq,
                last: n.last_seq,
                hash: n.hash.to_hex().to_string(),
            })
            .collect()
    };
    let tenant_line = TenantLine {
        kind: "tenant".to_owned(),
        scheme: tenants::SCHEME.to_owned(),
        tag: hex(&tag),
        count: subtree.size(),
        subroot: subtree.root().to_hex().to_string(),
        left,
        right,
        nodes: leaf_nodes(subtree_proof),
        tenants_size: entries.len() as u64,
        tenant_position: position as u64 + 1,
        tenants_path: leaf_nodes(tenants_path),
    };
    drop(subtree);

    let damaged = |seq: u64| move |what: String| ExportError::Damaged { seq, what };
    let mut totals = Totals::default();
    for c in &candidates[..window.start] {
        totals.apply(&c.event).map_err(damaged(c.seq))?;
    }
    let opening_totals = totals.view().map_err(damaged(0))?;
    // The fold is sequential and cheap; rendering the rows (hex, times,
    // strings) is neither, and runs on all cores.
    let mut running = Vec::with_capacity(window.len());
    for c in &candidates[window.clone()] {
        totals.apply(&c.event).map_err(damaged(c.seq))?;
        running.push(Running {
            budget_micros: totals.budget_micros,
            spent_micros: totals.spent_micros().map_err(damaged(c.seq))?,
            reserved_micros: totals.reserved_micros,
            spent_by_category: totals.spent_by_category,
            period: totals.period,
        });
    }
    let records: Vec<(Box<Candidate>, Running)> = candidates.drain(window).zip(running).collect();
    let closing_totals = totals.view().map_err(damaged(size))?;

    let head_in_rows = records.last().is_some_and(|(c, _)| c.seq == size);
    let mut proven: Vec<u64> = records.iter().map(|(c, _)| c.seq).collect();
    if !head_in_rows {
        proven.push(size);
    }
    let MultiProof { nodes } = tree.prove(&proven);
    Ok(Export {
        opening: OpeningLine {
            kind: "opening".to_owned(),
            format: FORMAT.to_owned(),
            tenant: tenant.0.clone(),
            ledger_id: store.ledger_id(),
            from: options.from,
            to: options.to,
            checkpoint_seq: options.checkpoint,
            totals: opening_totals,
        },
        nodes: nodes
            .into_iter()
            .map(|n| NodeLine {
                kind: "proof_node".to_owned(),
                first_seq: n.first_seq,
                last_seq: n.last_seq,
                hash: n.hash.to_hex().to_string(),
            })
            .collect(),
        proof: ProofLine {
            kind: "proof".to_owned(),
            scheme: SCHEME.to_owned(),
            tree_size: size,
            records_root: records_root.to_hex().to_string(),
            tenants_root: tenants_root.to_hex().to_string(),
            root: root.to_hex().to_string(),
            head_seq: size,
            head_hash: head_hash.to_hex().to_string(),
            rows: records.len() as u64,
            head_in_rows,
            totals: closing_totals,
        },
        tenant: tenant_line,
        records,
        task_runs,
    })
}

impl Export {
    pub fn row_count(&self) -> usize {
        self.records.len()
    }

    fn render(&self, index: usize) -> RowLine {
        let (candidate, totals) = &self.records[index];
        let task_run = candidate.event.task().and_then(|t| self.task_runs.get(t));
        let facts = facts(&candidate.event, task_run);
        render_row(index as u64 + 1, candidate, totals, facts)
    }

    /// Every row, rendered.
    pub fn rows(&self) -> Vec<RowLine> {
        (0..self.records.len()).map(|i| self.render(i)).collect()
    }

    pub fn write(&self, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
        match format {
            Format::Jsonl => self.write_jsonl(out),
            Format::Csv => self.write_csv(out),
        }
    }

    fn write_jsonl(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
        write_json_line(&mut out, &self.opening)?;
        // Rows are serialized on all cores, a bounded batch at a time, and
        // written in order.
        let count = self.records.len();
        for batch in (0..count).step_by(WRITE_BATCH_ROWS) {
            let parts: Vec<Vec<u8>> = (batch..count.min(batch + WRITE_BATCH_ROWS))
                .step_by(WRITE_CHUNK_ROWS)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|chunk| {
                    let rows = chunk..count.min(chunk + WRITE_CHUNK_ROWS);
                    let mut buf = Vec::with_capacity(rows.len() * 800);
                    for index in rows {
                        write_json_line(&mut buf, &self.render(index))?;
                    }
                    Ok(buf)
                })
                .collect::<std::io::Result<_>>()?;
            for part in parts {
                out.write_all(&part)?;
            }
        }
        for node in &self.nodes {
            write_json_line(&mut out, node)?;
        }
        write_json_line(&mut out, &self.tenant)?;
        write_json_line(&mut out, &self.proof)?;
        out.flush()
    }

    fn write_csv(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut csv = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 16, out));
        csv.write_record(CSV_COLUMNS)?;
        let meta = |csv: &mut csv::Writer<_>, kind: &str, json: String| {
            let mut record = [""; CSV_COLUMNS.len()];
            record[6] = kind;
            record[17] = &json;
            csv.write_record(record)
        };
        meta(&mut csv, "opening", to_json(&self.opening)?)?;
        for index in 0..self.records.len() {
            csv.write_record(csv_row(&self.render(index)))?;
        }
        for node in &self.nodes {
            meta(&mut csv, "proof_node", to_json(node)?)?;
        }
        meta(&mut csv, "tenant", to_json(&self.tenant)?)?;
        meta(&mut csv, "proof", to_json(&self.proof)?)?;
        csv.flush()
    }
}

/// Rows serialized per parallel task, and per batch held in memory.
const WRITE_CHUNK_ROWS: usize = 2_048;
const WRITE_BATCH_ROWS: usize = 65_536;

fn write_json_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

fn to_json(value: &impl Serialize) -> std::io::Result<String> {
    serde_json::to_string(value).map_err(std::io::Error::other)
}

/// Amounts in currency units, exact (`1.234567`).
pub fn units(micros: i64) -> String {
    Micros(micros).to_string()
}

/// The CSV cells of a row, in [`CSV_COLUMNS`] order.
pub fn csv_row(row: &RowLine) -> Vec<String> {
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    vec![
        row.row.to_string(),
        row.seq.to_string(),
        row.recorded_at.clone(),
        row.recorded_at_micros.to_string(),
        row.run.clone().unwrap_or_default(),
        row.task.clone().unwrap_or_default(),
        row.kind.clone(),
        row.category.clone().unwrap_or_default(),
        row.amount_micros.map(units).unwrap_or_default(),
        opt(row.amount_micros),
        row.budget_micros.to_string(),
        units(row.spent_micros),
        row.spent_micros.to_string(),
        units(row.reserved_micros),
        row.reserved_micros.to_string(),
        opt(row.category_spent_micros),
        row.period.to_string(),
        row.detail.clone(),
        row.hash.clone(),
        row.prev_hash.clone(),
        row.event_hex.clone(),
    ]
}
