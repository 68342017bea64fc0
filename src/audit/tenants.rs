//! The per-tenant commitment that makes an export provably complete.
//!
//! Beside the tree over every record hash (`audit::merkle`), a checkpoint
//! commits to each tenant's export rows, in the spirit of certificate
//! transparency's sorted Merkle maps. Same RFC 6962 shape, other tags:
//!
//! ```text
//! tenant subtree  over the tenant's export rows in seq order (position p
//!                 is its p-th row, 1-based), under Domain::TENANT:
//!                 leaf = H_t(0x00 ‖ seq ‖ recorded_at_micros ‖ record_hash)
//! tag(tenant)     = blake3("runledger.tenant-tag.v1\0" ‖ len(ledger_id)
//!                          ‖ ledger_id ‖ tenant id)        (len: u64 LE)
//! tenants tree    over the tenants with at least one row, sorted by tag,
//!                 under Domain::TENANTS:
//!                 leaf = H_T(0x00 ‖ tag ‖ count ‖ tenant subroot)
//! checkpoint root = H_records(0x02 ‖ records_root ‖ tenants_root)
//! ```
//!
//! Integers are 8-byte little-endian (`recorded_at_micros` as i64). A
//! tenant leaf shows a row's seq and time, not its content; the tag hides
//! a tenant's id from whoever reads a file, but anyone who knows the
//! ledger id can test a guessed id against it.
//!
//! The rows are exactly those `export` lists for the tenant without date
//! filters: its money events ([`is_money_event`] with the tenant named),
//! plus every `task_skipped` of a task it submitted earlier. The rule is
//! [`row_owner`] here, used by both `export` and the commitment, so the two
//! cannot disagree.
//!
//! Pure: records in, hashes out.

use rustc_hash::FxHashMap;

use super::merkle::{Accumulator, Domain, Tree};
use crate::domain::{Event, TaskId, TenantId};

/// Domain tag of a tenant's tag.
pub const TENANT_TAG: &[u8] = b"runledger.tenant-tag.v1\0";
/// The scheme's name as files state it.
pub const SCHEME: &str = "runledger.tenant.v1";

/// The tag of `tenant` in the ledger `ledger_id`.
pub fn tenant_tag(ledger_id: &str, tenant: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(TENANT_TAG);
    hasher.update(&(ledger_id.len() as u64).to_le_bytes());
    hasher.update(ledger_id.as_bytes());
    hasher.update(tenant.as_bytes());
    *hasher.finalize().as_bytes()
}

/// The leaf of one export row in its tenant's subtree.
pub fn row_leaf(seq: u64, recorded_at_micros: i64, record_hash: &blake3::Hash) -> blake3::Hash {
    Domain::TENANT.leaf(&[
        &seq.to_le_bytes(),
        &recorded_at_micros.to_le_bytes(),
        record_hash.as_bytes(),
    ])
}

/// The leaf of a tenant in the tenants tree.
pub fn tenant_leaf(tag: &[u8; 32], count: u64, subroot: &blake3::Hash) -> blake3::Hash {
    Domain::TENANTS.leaf(&[tag, &count.to_le_bytes(), subroot.as_bytes()])
}

/// Whether `event` belongs in the cost history of the tenant it names
/// (a `task_skipped` names none: the caller checks whose task it is).
pub fn is_money_event(event: &Event) -> bool {
    match event {
        Event::TenantUpdated {
            budget_micros,
            budget_period,
            ..
        } => budget_micros.is_some() || budget_period.is_some(),
        Event::TenantRegistered { .. }
        | Event::TaskSubmitted { .. }
        | Event::CostReserved { .. }
        | Event::CostIncurred { .. }
        | Event::ReservationReleased { .. }
        | Event::BudgetOverrun { .. }
        | Event::BudgetStatusChanged { .. }
        | Event::BudgetPeriodReset { .. }
        | Event::AdmissionDenied { .. }
        | Event::DegradationDecided { .. }
        | Event::TaskSkipped { .. } => true,
        _ => false,
    }
}

/// Whose export row a record is, from its event alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowOwner<'a> {
    /// Not a row of any tenant.
    Nobody,
    /// A money event naming this tenant (a submission also makes the task
    /// the tenant's, for later skips).
    Tenant(&'a TenantId),
    /// A `task_skipped`: a row of every tenant that submitted the task
    /// earlier.
    SkippedTask(&'a TaskId),
}

/// The one rule for which records are a tenant's export rows.
pub fn row_owner(event: &Event) -> RowOwner<'_> {
    match event {
        Event::TaskSkipped { task, .. } => RowOwner::SkippedTask(task),
        other if is_money_event(other) => other.tenant().map_or(RowOwner::Nobody, RowOwner::Tenant),
        _ => RowOwner::Nobody,
    }
}

/// What a worker thread extracts from one record for the commitment: the
/// owner reduced to its tag (no allocation but for task ids), and the
/// record's tenant leaf, hashed off the sink thread.
#[derive(Clone, Debug)]
pub enum Owned {
    Nobody,
    Tenant {
        tag: [u8; 32],
        leaf: blake3::Hash,
    },
    Submitted {
        tag: [u8; 32],
        task: TaskId,
        leaf: blake3::Hash,
    },
    Skipped {
        task: TaskId,
        leaf: blake3::Hash,
    },
}

impl Owned {
    /// Extracts what [`Commitments::push`] needs from a decoded record.
    pub fn of(
        ledger_id: &str,
        seq: u64,
        recorded_at_micros: i64,
        hash: &blake3::Hash,
        event: &Event,
    ) -> Owned {
        let leaf = || row_leaf(seq, recorded_at_micros, hash);
        match (row_owner(event), event) {
            (RowOwner::Nobody, _) => Owned::Nobody,
            (RowOwner::SkippedTask(task), _) => Owned::Skipped {
                task: task.clone(),
                leaf: leaf(),
            },
            (RowOwner::Tenant(tenant), Event::TaskSubmitted { task, .. }) => Owned::Submitted {
                tag: tenant_tag(ledger_id, tenant.as_str()),
                task: task.clone(),
                leaf: leaf(),
            },
            (RowOwner::Tenant(tenant), _) => Owned::Tenant {
                tag: tenant_tag(ledger_id, tenant.as_str()),
                leaf: leaf(),
            },
        }
    }
}

/// One tenant's subtree, growing.
#[derive(Clone, Debug)]
struct Subtree {
    tree: Accumulator,
}

/// Every tenant's subtree, fed the records in seq order: O(log n) memory
/// per tenant, plus the map of every submitted task to the tenants that
/// submitted it (for `task_skipped`, which names only a task: about one
/// task id and one tag per submission — the price of the rule).
#[derive(Debug, Default)]
pub struct Commitments {
    subtrees: FxHashMap<[u8; 32], Subtree>,
    task_tenants: FxHashMap<TaskId, Vec<[u8; 32]>>,
}

/// One tenant's entry in the tenants tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantEntry {
    pub tag: [u8; 32],
    pub count: u64,
    pub subroot: blake3::Hash,
}

impl Commitments {
    /// Takes the next record (in seq order).
    pub fn push(&mut self, owned: Owned) {
        match owned {
            Owned::Nobody => {}
            Owned::Tenant { tag, leaf } => self.push_leaf(tag, leaf),
            Owned::Submitted { tag, task, leaf } => {
                self.push_leaf(tag, leaf);
                let tenants = self.task_tenants.entry(task).or_default();
                if !tenants.contains(&tag) {
                    tenants.push(tag);
                }
            }
            Owned::Skipped { task, leaf } => {
                let Some(tenants) = self.task_tenants.get(&task) else {
                    return;
                };
                for &tag in tenants {
                    let subtree = self.subtrees.entry(tag).or_insert_with(Subtree::new);
                    subtree.tree.push_leaf(leaf);
                }
            }
        }
    }

    fn push_leaf(&mut self, tag: [u8; 32], leaf: blake3::Hash) {
        let subtree = self.subtrees.entry(tag).or_insert_with(Subtree::new);
        subtree.tree.push_leaf(leaf);
    }

    /// The tenants so far, sorted by tag (the tenants tree's leaf order).
    pub fn entries(&self) -> Vec<TenantEntry> {
        let mut entries: Vec<TenantEntry> = self
            .subtrees
            .iter()
            .map(|(tag, s)| TenantEntry {
                tag: *tag,
                count: s.tree.size(),
                subroot: s.tree.root(),
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.tag);
        entries
    }

    /// The tenants root over the records so far.
    pub fn root(&self) -> blake3::Hash {
        tenants_tree(&self.entries()).root()
    }
}

impl Subtree {
    fn new() -> Subtree {
        Subtree {
            tree: Accumulator::new(Domain::TENANT),
        }
    }
}

/// The tenants tree over `entries` (sorted by tag).
pub fn tenants_tree(entries: &[TenantEntry]) -> Tree {
    debug_assert!(entries.windows(2).all(|w| w[0].tag < w[1].tag));
    let leaves = entries
        .iter()
        .map(|e| tenant_leaf(&e.tag, e.count, &e.subroot))
        .collect();
    Tree::from_leaves(Domain::TENANTS, leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Category, Micros};

    fn cost(tenant: &str) -> Event {
        Event::CostIncurred {
            tenant: TenantId(tenant.to_owned()),
            task: None,
            category: Category::ALL[0],
            amount_micros: Micros(1),
        }
    }

    #[test]
    fn tenants_root_ignores_other_records_and_depends_on_every_row() {
        let events = [cost("a"), cost("b"), cost("a")];
        let build = |events: &[Event]| {
            let mut c = Commitments::default();
            for (i, e) in events.iter().enumerate() {
                let hash = blake3::hash(&[i as u8]);
                c.push(Owned::of("L", i as u64 + 1, 7, &hash, e));
            }
            c
        };
        let all = build(&events);
        let entries = all.entries();
        assert_eq!(entries.len(), 2);
        let a = entries
            .iter()
            .find(|e| e.tag == tenant_tag("L", "a"))
            .unwrap();
        assert_eq!(a.count, 2);
        let mut acc = Accumulator::new(Domain::TENANT);
        acc.push_leaf(row_leaf(1, 7, &blake3::hash(&[0])));
        acc.push_leaf(row_leaf(3, 7, &blake3::hash(&[2])));
        assert_eq!(a.subroot, acc.root());
        assert_ne!(build(&events[..2]).root(), all.root());
        assert_ne!(tenant_tag("L", "a"), tenant_tag("M", "a"));
        assert_ne!(tenant_tag("L", "a"), tenant_tag("La", ""));
    }
}
