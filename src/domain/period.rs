//! Budget periods: which period an instant falls in (the UTC day or the
//! calendar month), when the period it falls in ends, and [`Periods`], when
//! each tenant's current period began and the tenants ordered by when it
//! ends — so that finding the resets due at a step reads the few tenants
//! whose period is over, not every tenant.
//!
//! Pure: times arrive as values; checked arithmetic, no floats. `Periods`
//! is derived from the log by `State::evolve` and lies outside the digests.
//! The decision built on it is `governance::period_resets`.

use std::collections::BTreeMap;
use std::ops::Bound;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rustc_hash::FxHashMap;

use super::event::BudgetPeriod;
use super::ids::TenantId;
use super::journal::{Journaled, Undo};
use super::time::Timestamp;

const DAY_MICROS: i64 = 86_400_000_000;

/// Which budget period `at` falls in: the UTC day or calendar month since
/// the epoch; `None` for tenants without a period.
pub fn period_index(period: BudgetPeriod, at: Timestamp) -> Option<i64> {
    match period {
        BudgetPeriod::None => None,
        BudgetPeriod::Daily => Some(at.0.div_euclid(DAY_MICROS)),
        BudgetPeriod::Monthly => {
            let dt = DateTime::<Utc>::from_timestamp_micros(at.0)?;
            Some(i64::from(dt.year()) * 12 + i64::from(dt.month0()))
        }
    }
}

/// The first instant of the period after the one `at` falls in (the next
/// UTC midnight, or the first of the next month at midnight UTC): every
/// later instant whose period [`period_index`] names falls in a later
/// period from there on. `None` for tenants without a period, for an `at`
/// whose period has no index, and where that instant is past what a
/// `Timestamp` (or, monthly, the calendar) holds — then no instant falls
/// in a later period.
pub fn period_end(period: BudgetPeriod, at: Timestamp) -> Option<Timestamp> {
    match period {
        BudgetPeriod::None => None,
        BudgetPeriod::Daily => {
            at.0.div_euclid(DAY_MICROS)
                .checked_add(1)?
                .checked_mul(DAY_MICROS)
                .map(Timestamp)
        }
        BudgetPeriod::Monthly => {
            let dt = DateTime::<Utc>::from_timestamp_micros(at.0)?;
            let (year, month) = match dt.month() {
                12 => (dt.year().checked_add(1)?, 1),
                month => (dt.year(), month + 1),
            };
            let first = NaiveDate::from_ymd_opt(year, month, 1)?.and_hms_opt(0, 0, 0)?;
            Some(Timestamp(first.and_utc().timestamp_micros()))
        }
    }
}

/// Whether `now` falls in a later `period` than `started` — so a period
/// that began at `started` is over. Periods only move forward: an earlier
/// `now` (a run whose clock is behind the ledger's latest reset) is not.
pub fn period_over(period: BudgetPeriod, started: Timestamp, now: Timestamp) -> bool {
    match (period_index(period, started), period_index(period, now)) {
        (Some(began), Some(current)) => current > began,
        _ => false,
    }
}

/// When each tenant's current budget period began (its registration, a
/// change of its period kind, or its last reset) and, for each tenant
/// whose period can end, `(end, tenant)` ordered by end: the tenants whose
/// period is over at `now` are a prefix of it.
///
/// Invariant: `ends` holds exactly `(period_end(kind, started), tenant)`
/// for each registered tenant with a `started`, `kind` its period kind,
/// where that end exists. A tenant's kind changes only together with a
/// [`Periods::begin`] (registration, update to another kind), so `begin`
/// keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Periods {
    started: Journaled<FxHashMap<TenantId, Timestamp>>,
    ends: Journaled<BTreeMap<(Timestamp, TenantId), ()>>,
}

impl Undo for Periods {
    fn record(&mut self, on: bool) {
        self.started.record(on);
        self.ends.record(on);
    }
    fn mark(&mut self) {
        self.started.mark();
        self.ends.mark();
    }
    fn undo(&mut self) {
        self.started.undo();
        self.ends.undo();
    }
}

impl Periods {
    /// When `tenant`'s current period began.
    pub fn started(&self, tenant: &TenantId) -> Option<Timestamp> {
        self.started.get(tenant).copied()
    }

    /// `tenant`'s period begins at `at`. `was` is the kind it had just
    /// before (`BudgetPeriod::None` if it was not registered), `kind` the
    /// kind it has from now on (the same for a not registered one).
    pub fn begin(
        &mut self,
        tenant: &TenantId,
        at: Timestamp,
        was: BudgetPeriod,
        kind: BudgetPeriod,
    ) {
        let before = match self.started.get_mut(tenant) {
            Some(started) => Some(std::mem::replace(started, at)),
            None => {
                self.started.insert(tenant.clone(), at);
                None
            }
        };
        let mut id = None;
        if let Some(end) = before.and_then(|started| period_end(was, started)) {
            // Reuses the stored id for the new entry.
            id = self
                .ends
                .remove_entry(&(end, tenant.clone()))
                .map(|((_, stored), ())| stored);
            debug_assert!(id.is_some(), "`{tenant}` had no period end at {end}");
        }
        if let Some(end) = period_end(kind, at) {
            self.ends
                .insert((end, id.unwrap_or_else(|| tenant.clone())), ());
        }
    }

    /// The tenants whose current period ends at or before `now`, in the
    /// order their periods end, each with when its period began.
    pub fn ended_by(&self, now: Timestamp) -> impl Iterator<Item = (&TenantId, Timestamp)> {
        // The empty id is the least: everything before `(now + 1, "")`.
        let upper = match now.0.checked_add(1) {
            Some(next) => Bound::Excluded((Timestamp(next), TenantId(String::new()))),
            None => Bound::Unbounded,
        };
        self.ends
            .range((Bound::Unbounded, upper))
            .filter_map(|((_, tenant), ())| Some((tenant, self.started(tenant)?)))
    }

    /// The ends the invariant asks for, given each tenant's kind (`None`
    /// for unregistered tenants): what `ends` must equal.
    #[cfg(test)]
    fn expected_ends(
        &self,
        kind_of: impl Fn(&TenantId) -> Option<BudgetPeriod>,
    ) -> BTreeMap<(Timestamp, TenantId), ()> {
        self.started
            .iter()
            .filter_map(|(tenant, &started)| {
                let end = period_end(kind_of(tenant)?, started)?;
                Some(((end, tenant.clone()), ()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::governance::period_resets;
    use crate::domain::{BudgetStatus, Event, LearningIntensity, Micros, State};

    fn t(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// The latest instant chrono's calendar holds, in micros.
    fn calendar_max() -> i64 {
        NaiveDate::MAX
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .unwrap()
            .and_utc()
            .timestamp_micros()
    }

    #[test]
    fn period_end_is_the_next_midnight_or_first_of_the_month() {
        use BudgetPeriod::{Daily, Monthly, None};
        let end = |kind, at| period_end(kind, t(at)).map(|e| e.to_string());
        let at = |s: &str| Some(s.to_owned());
        assert_eq!(end(None, "2026-01-01T09:00:00Z"), Option::None);
        assert_eq!(
            end(Daily, "2026-01-01T00:00:00Z"),
            at("2026-01-02T00:00:00.000000Z")
        );
        assert_eq!(
            end(Daily, "2026-01-01T23:59:59.999999Z"),
            at("2026-01-02T00:00:00.000000Z")
        );
        assert_eq!(
            end(Daily, "1969-12-31T12:00:00Z"),
            at("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            end(Monthly, "2026-01-31T23:00:00Z"),
            at("2026-02-01T00:00:00.000000Z")
        );
        assert_eq!(
            end(Monthly, "2028-02-29T12:00:00Z"),
            at("2028-03-01T00:00:00.000000Z")
        );
        assert_eq!(
            end(Monthly, "2026-12-15T00:00:00Z"),
            at("2027-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            end(Monthly, "1969-12-31T23:59:59Z"),
            at("1970-01-01T00:00:00.000000Z")
        );
        // Past what a timestamp or the calendar holds: no end.
        assert_eq!(period_end(Daily, Timestamp(i64::MAX)), Option::None);
        assert_eq!(period_end(Monthly, Timestamp(calendar_max())), Option::None);
        assert_eq!(period_end(Monthly, Timestamp(i64::MAX)), Option::None);
        assert_eq!(
            period_end(Daily, Timestamp(i64::MIN)),
            Some(Timestamp(
                (i64::MIN.div_euclid(DAY_MICROS) + 1) * DAY_MICROS
            ))
        );
    }

    /// Times where periods turn or stop being named, and ordinary ones.
    fn instant() -> impl Strategy<Value = i64> {
        let base = t("2026-01-01T00:00:00Z").0;
        let hour = 3_600_000_000i64;
        prop_oneof![
            6 => (0i64..24 * 120).prop_map(move |h| base + h * hour),
            2 => (-3i64..=3, 0i64..120).prop_map(move |(d, day)| base + day * DAY_MICROS + d),
            1 => any::<i64>(),
            1 => (-3i64..=3, 0i64..64).prop_map(|(d, day)| calendar_max() - day * DAY_MICROS + d),
            1 => (-3i64..=3, 0i64..64).prop_map(|(d, day)| -calendar_max() + day * DAY_MICROS + d),
            1 => (0i64..3).prop_map(|d| i64::MAX - d),
            1 => (0i64..3).prop_map(|d| i64::MIN + d),
        ]
    }

    fn kind() -> impl Strategy<Value = BudgetPeriod> {
        prop_oneof![
            Just(BudgetPeriod::None),
            Just(BudgetPeriod::Daily),
            Just(BudgetPeriod::Monthly),
        ]
    }

    proptest! {
        /// `period_end` is the first instant of a later period: the instant
        /// before it is in `at`'s period, it and what follows are later.
        #[test]
        fn period_end_is_where_the_index_moves(kind in kind(), at in instant()) {
            let at = Timestamp(at);
            match period_end(kind, at) {
                Some(end) => {
                    prop_assert!(end > at);
                    prop_assert!(period_over(kind, at, end));
                    prop_assert!(!period_over(kind, at, Timestamp(end.0 - 1)));
                    prop_assert_eq!(
                        period_index(kind, Timestamp(end.0 - 1)),
                        period_index(kind, at)
                    );
                }
                None => {
                    // No later instant is in a later period.
                    prop_assert!(!period_over(kind, at, Timestamp(i64::MAX)));
                    prop_assert!(!period_over(kind, at, Timestamp(calendar_max())));
                }
            }
        }
    }

    /// The resets due at `now` as they were found before the index: a walk
    /// of every tenant in id order. The oracle of the property below.
    fn period_resets_walk(state: &State, now: Timestamp) -> Vec<Event> {
        let mut events = Vec::new();
        for t in state.tenants.sorted() {
            let Some(started) = state.period_started(&t.tenant) else {
                continue;
            };
            let (Some(a), Some(b)) = (
                period_index(t.budget_period, started),
                period_index(t.budget_period, now),
            ) else {
                continue;
            };
            if b <= a {
                continue;
            }
            events.push(Event::BudgetPeriodReset {
                tenant: t.tenant.clone(),
            });
            if t.recorded_status != BudgetStatus::Healthy {
                events.push(Event::BudgetStatusChanged {
                    tenant: t.tenant.clone(),
                    from: t.recorded_status,
                    to: BudgetStatus::Healthy,
                });
            }
        }
        events
    }

    /// What happens to a few tenants, and when, or a look for resets.
    #[derive(Clone, Debug)]
    enum Step {
        Register(u8, BudgetPeriod, i64),
        Update(u8, Option<BudgetPeriod>, i64),
        Reset(u8, i64),
        Status(u8, BudgetStatus),
        /// The resets due at this time.
        Look(i64),
        /// The resets due around the end of a tenant's period.
        LookAtEnd(u8, i64),
        /// Every reset due now applied, as an executor step does.
        Turn(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let tenant = 0u8..6;
        let status = prop_oneof![
            Just(BudgetStatus::Healthy),
            Just(BudgetStatus::Warning),
            Just(BudgetStatus::Critical),
            Just(BudgetStatus::Exceeded),
        ];
        prop_oneof![
            3 => (tenant.clone(), kind(), instant()).prop_map(|(k, p, at)| Step::Register(k, p, at)),
            2 => (tenant.clone(), proptest::option::of(kind()), instant())
                .prop_map(|(k, p, at)| Step::Update(k, p, at)),
            1 => (tenant.clone(), instant()).prop_map(|(k, at)| Step::Reset(k, at)),
            1 => (tenant.clone(), status).prop_map(|(k, s)| Step::Status(k, s)),
            3 => instant().prop_map(Step::Look),
            3 => (tenant.clone(), -1i64..=1).prop_map(|(k, d)| Step::LookAtEnd(k, d)),
            2 => instant().prop_map(Step::Turn),
        ]
    }

    fn tenant_id(k: u8) -> TenantId {
        // Names whose order is not the order of registration.
        TenantId(format!("{}-tenant", (b'f' - k) as char))
    }

    /// Checks the index against what its invariant asks for, and the
    /// resets due at `now` against the walk of every tenant.
    fn same_resets(state: &State, now: Timestamp) -> Result<(), TestCaseError> {
        let periods = state.periods();
        let expected = periods.expected_ends(|t| state.tenants.get(t).map(|t| t.budget_period));
        prop_assert_eq!(&*periods.ends, &expected);
        prop_assert_eq!(
            period_resets(state, now),
            period_resets_walk(state, now),
            "at {}",
            now
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The resets read from the index are those of the walk of every
        /// tenant, in the same order, whatever happened before: events
        /// folded without validation (a tenant registered twice, updated
        /// before it exists, reset while unknown), times out of order or
        /// past the calendar, looks at and around each period's end.
        #[test]
        fn period_resets_match_the_walk_of_every_tenant(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let mut state = State::new();
            let mut seq = 0u64;
            let mut fold = |state: &mut State, at: i64, event: Event| {
                seq += 1;
                state.evolve(seq, Timestamp(at), event);
            };
            let mut last_at = 0i64;
            for step in steps {
                match step {
                    Step::Register(k, budget_period, at) => {
                        last_at = at;
                        fold(&mut state, at, Event::TenantRegistered {
                            tenant: tenant_id(k),
                            budget_micros: Micros(100),
                            max_concurrent_runs: 1,
                            learning_intensity: LearningIntensity::Balanced,
                            meta_learning: false,
                            budget_period,
                        });
                    }
                    Step::Update(k, budget_period, at) => {
                        last_at = at;
                        fold(&mut state, at, Event::TenantUpdated {
                            tenant: tenant_id(k),
                            budget_micros: None,
                            max_concurrent_runs: None,
                            learning_intensity: None,
                            meta_learning: None,
                            budget_period,
                        });
                    }
                    Step::Reset(k, at) => {
                        last_at = at;
                        fold(&mut state, at, Event::BudgetPeriodReset { tenant: tenant_id(k) });
                    }
                    Step::Status(k, to) => {
                        let tenant = tenant_id(k);
                        if let Some(t) = state.tenants.get(&tenant) {
                            let from = t.recorded_status;
                            fold(&mut state, last_at, Event::BudgetStatusChanged { tenant, from, to });
                        }
                    }
                    Step::Look(now) => same_resets(&state, Timestamp(now))?,
                    Step::LookAtEnd(k, delta) => {
                        let tenant = tenant_id(k);
                        let end = state.tenants.get(&tenant).and_then(|t| {
                            period_end(t.budget_period, state.period_started(&tenant)?)
                        });
                        if let Some(now) = end.and_then(|e| e.0.checked_add(delta)) {
                            same_resets(&state, Timestamp(now))?;
                        }
                    }
                    Step::Turn(now) => {
                        same_resets(&state, Timestamp(now))?;
                        last_at = now;
                        for event in period_resets(&state, Timestamp(now)) {
                            fold(&mut state, now, event);
                        }
                        // Nothing is due again at the same time.
                        prop_assert!(period_resets(&state, Timestamp(now)).is_empty());
                    }
                }
            }
            same_resets(&state, Timestamp(last_at))?;
        }
    }
}
