//! The governance benchmark behind `runledger bench governance`: how long
//! the budget admission check, the cost agent's decision and a step's look
//! for due budget-period resets take on a `State` holding many tenants, and
//! how much memory each tenant holds, beside a plain hash-map lookup of the
//! tenant measured in the same run.
//!
//! The `State` is built the way a replay builds one: synthetic events folded
//! through `State::evolve`. Every tenant gets a budget of one unit of
//! currency, imported spend that puts it in one of three bands (by tenant
//! index: 70 % below 80 % of budget, 20 % between 91 and 99 %, 10 % from
//! 99.5 % to 102 %), a budget period (daily for even indices, monthly for
//! odd ones: none has ended when the calls are timed) and one 4-node serial
//! pipeline of `sim` steps (draft → retrieve → rerank → evaluate, the last
//! two optional) whose nodes carry the cost ceilings the workload loader
//! gives `sim` steps. The bands are chosen so that the cost agent answers
//! CONTINUE, DEGRADE and TERMINATE; the report counts what it actually
//! answered.
//!
//! This is shell code (it reads the clock and `/proc`); it only calls the
//! pure deciders, never changes them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::domain::cost_agent;
use crate::domain::governance::{Admitter, period_resets, status_of};
use crate::domain::{
    BudgetPeriod, BudgetStatus, Category, Decision, Event, Micros, Params, PipelineId, Priority,
    RunId, State, TaskId, TenantId, Timestamp,
};

/// The most tenants `--tenants` accepts (each holds about 4.2 KB with its
/// pipeline, so this is about 21 GB of state).
pub const TENANTS_MAX: u32 = 5_000_000;
/// The seed of every random draw (spend within a band, which tenants are
/// picked), so two runs measure the same calls.
pub const SEED: u64 = 42;
/// DESIGN §12: a budget admission check takes less than 1 µs.
pub const ADMISSION_TARGET_NS: f64 = 1_000.0;
/// DESIGN §12: a cost-agent decision with its degradation plan takes less
/// than 10 µs.
pub const DECISION_TARGET_NS: f64 = 10_000.0;
/// What one timed sample of admission checks or baseline lookups should
/// span; see [`time_batches`].
const SAMPLE_SPAN_NS: f64 = 2_000.0;
/// The most calls one timed sample holds.
const BATCH_MAX: usize = 64;
/// Untimed calls before each measure (they also size its batches).
const WARMUP_CALLS: usize = 2_000;

/// Baseline and admission alternate in this many rounds, so that a noisy
/// neighbour slows both rather than one.
const ROUNDS: usize = 4;
const ADMISSION_CALLS_MIN: u64 = 100_000;
const ADMISSION_CALLS_MAX: u64 = 1_000_000;
const DECISION_CALLS_MIN: u64 = 20_000;
const DECISION_CALLS_MAX: u64 = 100_000;
/// `period_resets` is timed for about this long in all (at least
/// [`PERIOD_RESETS_CALLS_MIN`] calls), since one call may take from tens of
/// nanoseconds to a walk of every tenant.
const PERIOD_RESETS_SPAN_NS: f64 = 2e9;
const PERIOD_RESETS_CALLS_MIN: u64 = 5;
const PERIOD_RESETS_CALLS_MAX: u64 = 1_000_000;
const BUDGET_MICROS: i64 = 1_000_000;
const MAX_CONCURRENT_RUNS: u32 = 4;
const RUN: &str = "bench-governance";

#[derive(Clone, Debug, Serialize)]
pub struct GovernanceBenchReport {
    pub tenants: u32,
    pub tasks: u64,
    pub seed: u64,
    /// Events folded through `State::evolve` to build the state.
    pub fold_events: u64,
    pub fold_events_per_sec: f64,

    pub admission_calls: u64,
    /// Calls per timed sample (1: each call timed alone); the percentiles
    /// are over per-call means of samples.
    pub admission_batch: usize,
    pub admission_check_ns_p50: f64,
    pub admission_check_ns_p99: f64,
    pub admission_check_ns_mean: f64,
    pub admissions_admitted: u64,
    pub admissions_denied: u64,
    /// `state.tenants.get(tenant)`: the same map, the same tenants, the
    /// same method, in rounds alternating with the admission checks.
    pub baseline_batch: usize,
    pub baseline_lookup_ns_p50: f64,
    pub baseline_lookup_ns_p99: f64,
    pub baseline_lookup_ns_mean: f64,
    /// Admission mean over baseline mean.
    pub admission_to_baseline: f64,
    pub admission_target_ns: f64,
    /// Whether the admission p99 is under its target.
    pub admission_target_met: bool,

    pub decision_calls: u64,
    pub decision_ns_p50: f64,
    pub decision_ns_p99: f64,
    pub decision_ns_mean: f64,
    pub decision_ns_mean_continue: f64,
    pub decision_ns_mean_degrade: f64,
    pub decision_ns_mean_terminate: f64,
    pub decisions_continue: u64,
    pub decisions_degrade: u64,
    pub decisions_terminate: u64,
    /// Decision mean over baseline mean.
    pub decision_to_baseline: f64,
    pub decision_target_ns: f64,
    /// Whether the decision p99 is under its target.
    pub decision_target_met: bool,

    /// `period_resets(state, now)` at the time of the last event folded,
    /// when no tenant's budget period has ended: what every executor step
    /// pays to learn that no reset is due.
    pub period_resets_calls: u64,
    /// Calls per timed sample, as for admission.
    pub period_resets_batch: usize,
    pub period_resets_ns_p50: f64,
    pub period_resets_ns_p99: f64,
    pub period_resets_ns_mean: f64,
    /// Period-reset mean over baseline mean.
    pub period_resets_to_baseline: f64,
    /// What one `Instant::now()` + `elapsed()` pair costs here (median),
    /// included once in every timed sample, not subtracted.
    pub timer_overhead_ns: f64,

    /// Resident set growth per tenant while registering the tenants and
    /// their spend (no tasks); `None` where `/proc/self/status` is missing.
    pub bytes_per_tenant: Option<f64>,
    /// Resident set growth per tenant for the whole state: the tenant and
    /// its 4-task pipeline.
    pub bytes_per_tenant_with_pipeline: Option<f64>,
    /// Resident set growth for the whole state.
    pub state_bytes: Option<u64>,
}

/// One node of the benchmark pipeline.
struct Node {
    id: &'static str,
    params: Params,
    ceiling: Micros,
    optional: bool,
}

/// The 4-node serial pipeline every tenant runs: draft → retrieve →
/// rerank (optional) → evaluate (optional).
fn pipeline() -> Vec<Node> {
    use serde_json::json;
    [
        (
            "draft",
            json!({"step": "generate", "model": "large", "candidates": 3}),
            false,
        ),
        ("retrieve", json!({"step": "retrieve", "depth": 8}), false),
        ("rerank", json!({"step": "rerank", "depth": 8}), true),
        ("evaluate", json!({"step": "evaluate"}), true),
    ]
    .into_iter()
    .map(|(id, params, optional)| {
        let params = Params::from_value(&params);
        Node {
            id,
            ceiling: crate::domain::cost::cost_ceiling(&params),
            params,
            optional,
        }
    })
    .collect()
}

fn tenant_id(k: u32) -> TenantId {
    TenantId(format!("tenant-{k:07}"))
}

fn pipeline_id(k: u32) -> PipelineId {
    PipelineId(format!("tenant-{k:07}/rag#0"))
}

fn task_id(k: u32, node: &str) -> TaskId {
    TaskId(format!("{RUN}/tenant-{k:07}/rag#0/{node}"))
}

/// Spend of tenant `k` in basis points of its budget. With the pipeline
/// above (ceilings 89,980 micros in all, 6,060 degraded): below 8,000 the
/// pipeline fits (CONTINUE); from 9,100 to 9,899 utilisation passes 90 %
/// but the degraded pipeline fits (DEGRADE); from 9,950 not even the
/// degraded pipeline fits, or the budget is spent (TERMINATE).
fn spent_bp(k: u32, rng: &mut ChaCha8Rng) -> i64 {
    match k % 10 {
        0..=6 => rng.random_range(0..8_000),
        7 | 8 => rng.random_range(9_100..9_900),
        _ => rng.random_range(9_950..10_200),
    }
}

/// Tenant `k`'s budget period: daily or monthly, so that every tenant has
/// one that can end.
fn period_of(k: u32) -> BudgetPeriod {
    if k % 2 == 0 {
        BudgetPeriod::Daily
    } else {
        BudgetPeriod::Monthly
    }
}

/// Tenant `k` registered, its spend imported, and its status recorded.
fn tenant_events(k: u32, rng: &mut ChaCha8Rng) -> Vec<Event> {
    let tenant = tenant_id(k);
    let spent = BUDGET_MICROS * spent_bp(k, rng) / 10_000;
    let mut events = vec![Event::TenantRegistered {
        tenant: tenant.clone(),
        budget_micros: Micros(BUDGET_MICROS),
        max_concurrent_runs: MAX_CONCURRENT_RUNS,
        learning_intensity: Default::default(),
        meta_learning: false,
        budget_period: period_of(k),
    }];
    if spent > 0 {
        events.push(Event::CostIncurred {
            tenant: tenant.clone(),
            task: None,
            category: Category::Llm,
            amount_micros: Micros(spent),
        });
    }
    let status = status_of(spent, BUDGET_MICROS, false);
    if status != BudgetStatus::Healthy {
        events.push(Event::BudgetStatusChanged {
            tenant,
            from: BudgetStatus::Healthy,
            to: status,
        });
    }
    events
}

/// The `task_submitted` events of tenant `k`'s pipeline, each node
/// depending on the one before.
fn pipeline_events(k: u32, nodes: &[Node]) -> Vec<Event> {
    let run = RunId(RUN.to_owned());
    let tenant = tenant_id(k);
    let pipeline = pipeline_id(k);
    let mut parent: Option<TaskId> = None;
    nodes
        .iter()
        .map(|node| {
            let task = task_id(k, node.id);
            let deps = parent.replace(task.clone()).into_iter().collect();
            Event::TaskSubmitted {
                run: run.clone(),
                task,
                tenant: tenant.clone(),
                priority: Priority::Normal,
                deps,
                pipeline: Some(pipeline.clone()),
                cost_ceiling_micros: node.ceiling,
                handler: "sim".to_owned(),
                params: node.params.clone(),
                max_attempts: 3,
                optional: node.optional,
            }
        })
        .collect()
}

/// The resident set of this process, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The state, how it was built, and what it cost in resident memory.
struct Built {
    state: State,
    events: u64,
    elapsed: Duration,
    /// Resident set before, after the tenants, after their pipelines.
    resident: [Option<u64>; 3],
}

/// Folds every tenant's events, then every pipeline, through
/// `State::evolve`, one event at a time (no event vector is kept, so the
/// resident set grows by what the state holds, plus allocator slack).
fn build_state(tenants: u32, nodes: &[Node], rng: &mut ChaCha8Rng) -> Built {
    let before = resident_bytes();
    let start = Instant::now();
    let mut state = State::new();
    let mut seq = 0u64;
    let mut fold = |state: &mut State, event: Event| {
        seq += 1;
        state.evolve(seq, Timestamp::from_micros(seq as i64), event);
    };
    fold(
        &mut state,
        Event::RunStarted {
            run: RunId(RUN.to_owned()),
            seed: SEED,
            config_hash: String::new(),
        },
    );
    for k in 0..tenants {
        for event in tenant_events(k, rng) {
            fold(&mut state, event);
        }
    }
    let registered = resident_bytes();
    for k in 0..tenants {
        for event in pipeline_events(k, nodes) {
            fold(&mut state, event);
        }
    }
    let elapsed = start.elapsed();
    let after = resident_bytes();
    Built {
        state,
        events: seq,
        elapsed,
        resident: [before, registered, after],
    }
}

/// Per-call nanoseconds, one sample per timed batch, and the totals.
#[derive(Default)]
struct Samples {
    per_call_ns: Vec<f64>,
    total: Duration,
    calls: u64,
}

struct Summary {
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Samples {
    fn push(&mut self, elapsed: Duration, calls: usize) {
        self.per_call_ns
            .push(elapsed.as_nanos() as f64 / calls.max(1) as f64);
        self.total += elapsed;
        self.calls += calls as u64;
    }

    /// Percentiles of the samples (the sample at the rounded rank) and the
    /// mean over every call.
    fn summary(&mut self) -> Summary {
        self.per_call_ns.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| {
            let n = self.per_call_ns.len();
            if n == 0 {
                return 0.0;
            }
            let idx = ((n as f64 - 1.0) * p).round() as usize;
            self.per_call_ns[idx.min(n - 1)]
        };
        Summary {
            p50: at(0.50),
            p99: at(0.99),
            mean: self.total.as_nanos() as f64 / self.calls.max(1) as f64,
        }
    }
}

/// How many calls one timed sample holds so that it spans about
/// [`SAMPLE_SPAN_NS`], from the mean of [`WARMUP_CALLS`] untimed calls.
fn batch_size(picks: &[u32], mut call: impl FnMut(u32)) -> usize {
    let warmup = &picks[..picks.len().min(WARMUP_CALLS)];
    let start = Instant::now();
    for &k in warmup {
        call(k);
    }
    let per_call_ns = start.elapsed().as_nanos() as f64 / warmup.len().max(1) as f64;
    ((SAMPLE_SPAN_NS / per_call_ns.max(1.0)).ceil() as usize).clamp(1, BATCH_MAX)
}

/// Times `call` for each pick, `batch` consecutive calls (on as many random
/// tenants) per `Instant` pair, adding one per-call sample (sample time /
/// calls) per batch.
///
/// Method: reading the clock twice costs 20–40 ns with a TSC clock source
/// (far more on some virtual machines), about what a baseline lookup costs
/// on a small, cache-hot state; timing such calls one by one would mostly
/// measure the clock. Long batches have the opposite flaw on a shared
/// machine: one preemption (milliseconds) spoils every call of its batch,
/// so a 64-call batch makes a slow sample 64 times as likely and the p99
/// measures the neighbours. So each sample spans about 2 µs of calls: the
/// clock adds at most ~1.5 %, and calls that take 2 µs or more (admission
/// on a large state) are timed one at a time. The mean is total time /
/// calls; p50 and p99 are percentiles of the samples' per-call means.
fn time_batches(picks: &[u32], batch: usize, samples: &mut Samples, mut call: impl FnMut(u32)) {
    for chunk in picks.chunks(batch.max(1)) {
        let start = Instant::now();
        for &k in chunk {
            call(k);
        }
        samples.push(start.elapsed(), chunk.len());
    }
}

/// Median cost of one `Instant::now()` + `elapsed()` pair.
fn timer_overhead_ns() -> f64 {
    let mut samples = Samples::default();
    for _ in 0..10_001 {
        let start = black_box(Instant::now());
        samples.push(start.elapsed(), 1);
    }
    samples.summary().p50
}

fn random_picks(rng: &mut ChaCha8Rng, tenants: u32, calls: u64) -> Vec<u32> {
    (0..calls).map(|_| rng.random_range(0..tenants)).collect()
}

/// What the decision part measured.
struct Decisions {
    summary: Summary,
    /// Calls, total time, indexed by `Decision as usize`.
    by_kind: [(u64, Duration); 3],
}

/// Times `cost_agent::decide` on the first node of random tenants' pipelines,
/// one call per `Instant` pair.
///
/// Method: a decision sums the remaining DAG (remembered per node after
/// the first call on a pipeline, see `Queue::remaining`), builds its
/// projection and formats its reason — microseconds, so the
/// clock's 20–40 ns (reported as `timer_overhead_ns` and not subtracted)
/// is noise, and single-call timing gives a true per-call p99 and the time
/// by verdict. The verdict is dropped inside the timed region, as the
/// executors drop it after recording.
fn time_decisions(state: &State, first: &[TaskId], picks: &[u32]) -> anyhow::Result<Decisions> {
    let warmup = picks.len().min(WARMUP_CALLS);
    for &k in &picks[..warmup] {
        black_box(cost_agent::decide(state, &first[k as usize]));
    }
    let mut samples = Samples::default();
    let mut by_kind = [(0u64, Duration::ZERO); 3];
    for &k in picks {
        let task = &first[k as usize];
        let start = Instant::now();
        let decision = cost_agent::decide(black_box(state), task).map(|d| d.decision);
        let elapsed = start.elapsed();
        let Some(decision) = decision else {
            anyhow::bail!("the cost agent gave no verdict for `{task}`: is it governed?");
        };
        samples.push(elapsed, 1);
        let slot = &mut by_kind[decision as usize];
        slot.0 += 1;
        slot.1 += elapsed;
    }
    Ok(Decisions {
        summary: samples.summary(),
        by_kind,
    })
}

/// What the period-reset part measured.
struct PeriodResets {
    summary: Summary,
    calls: u64,
    batch: usize,
}

/// Times `period_resets(state, now)`, where no reset is due, for about
/// [`PERIOD_RESETS_SPAN_NS`]: one untimed call checks that none is due and
/// sizes the run, an untimed tenth of it sizes the samples (as
/// [`batch_size`] does).
fn time_period_resets(state: &State, now: Timestamp) -> anyhow::Result<PeriodResets> {
    let start = Instant::now();
    let due = period_resets(black_box(state), black_box(now));
    let first_ns = start.elapsed().as_nanos() as f64;
    anyhow::ensure!(
        due.is_empty(),
        "{} period reset events due at {now}: the bench times a step with none due",
        due.len()
    );
    let calls = ((PERIOD_RESETS_SPAN_NS / first_ns.max(1.0)) as u64)
        .clamp(PERIOD_RESETS_CALLS_MIN, PERIOD_RESETS_CALLS_MAX);
    // Warm up for a tenth of the calls; their mean (the first call is
    // cold) sizes the samples.
    let warmup = (calls / 10).max(1);
    let start = Instant::now();
    for _ in 0..warmup {
        black_box(period_resets(black_box(state), black_box(now)));
    }
    let per_call_ns = (start.elapsed().as_nanos() as f64 / warmup as f64).max(1.0);
    let batch = ((SAMPLE_SPAN_NS / per_call_ns).ceil() as usize).clamp(1, BATCH_MAX);
    let picks = vec![0u32; calls as usize];
    let mut samples = Samples::default();
    time_batches(&picks, batch, &mut samples, |_| {
        black_box(period_resets(black_box(state), black_box(now)));
    });
    Ok(PeriodResets {
        calls: samples.calls,
        summary: samples.summary(),
        batch,
    })
}

fn mean_ns((calls, total): (u64, Duration)) -> f64 {
    total.as_nanos() as f64 / calls.max(1) as f64
}

/// Builds the state of `tenants` tenants and measures admission, the
/// baseline lookup, decisions and memory. `progress` hears each phase.
pub fn run_governance_bench(
    tenants: u32,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<GovernanceBenchReport> {
    anyhow::ensure!(
        (1..=TENANTS_MAX).contains(&tenants),
        "--tenants must be from 1 to {TENANTS_MAX} (got {tenants})"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let nodes = pipeline();

    progress("building the state (folding synthetic events through State::evolve)");
    let built = build_state(tenants, &nodes, &mut rng);
    let state = &built.state;
    let n = u64::from(tenants);
    let growth = |from: Option<u64>, to: Option<u64>| Some(to?.saturating_sub(from?));
    let [before, registered, after] = built.resident;
    let tenant_bytes = growth(before, registered);
    let state_bytes = growth(before, after);

    // Ids of what the calls look up, made after the memory was measured.
    let tenant_ids: Vec<TenantId> = (0..tenants).map(tenant_id).collect();
    let first: Vec<TaskId> = (0..tenants).map(|k| task_id(k, nodes[0].id)).collect();

    progress("admission checks beside the baseline lookup");
    let admission_calls = n.clamp(ADMISSION_CALLS_MIN, ADMISSION_CALLS_MAX);
    let picks = random_picks(&mut rng, tenants, admission_calls);
    let lookup = |k: u32| {
        black_box(
            state
                .tenants
                .get(black_box(&tenant_ids[k as usize]))
                .map(|t| t.budget_micros),
        );
    };
    // A fresh `Admitter` per call, as `admit_task` makes: each call pays
    // for its reservation entry and its drop.
    let admit = |k: u32| {
        let verdict = Admitter::new(black_box(state)).admit(&first[k as usize]);
        black_box(verdict).is_ok()
    };
    let baseline_batch = batch_size(&picks, lookup);
    let admission_batch = batch_size(&picks, |k| {
        admit(k);
    });
    let mut baseline = Samples::default();
    let mut admission = Samples::default();
    let mut admitted = 0u64;
    let round = picks.len().div_ceil(ROUNDS).max(1);
    for picks in picks.chunks(round) {
        time_batches(picks, baseline_batch, &mut baseline, lookup);
        time_batches(picks, admission_batch, &mut admission, |k| {
            admitted += u64::from(admit(k));
        });
    }
    let baseline = baseline.summary();
    let admission_calls = admission.calls;
    let admission = admission.summary();

    progress("cost-agent decisions");
    let decision_calls = (n / 10).clamp(DECISION_CALLS_MIN, DECISION_CALLS_MAX);
    let picks = random_picks(&mut rng, tenants, decision_calls);
    let decisions = time_decisions(state, &first, &picks)?;
    let count = |d: Decision| decisions.by_kind[d as usize].0;

    progress("period resets (none due)");
    let resets = time_period_resets(state, state.last_at)?;
    let timer_overhead_ns = timer_overhead_ns();

    let tasks = state.queue.len() as u64;
    let report = GovernanceBenchReport {
        tenants,
        tasks,
        seed: SEED,
        fold_events: built.events,
        fold_events_per_sec: built.events as f64 / built.elapsed.as_secs_f64().max(1e-9),
        admission_calls,
        admission_batch,
        admission_check_ns_p50: admission.p50,
        admission_check_ns_p99: admission.p99,
        admission_check_ns_mean: admission.mean,
        admissions_admitted: admitted,
        admissions_denied: admission_calls - admitted,
        baseline_batch,
        baseline_lookup_ns_p50: baseline.p50,
        baseline_lookup_ns_p99: baseline.p99,
        baseline_lookup_ns_mean: baseline.mean,
        admission_to_baseline: admission.mean / baseline.mean.max(f64::MIN_POSITIVE),
        admission_target_ns: ADMISSION_TARGET_NS,
        admission_target_met: admission.p99 < ADMISSION_TARGET_NS,
        decision_calls,
        decision_ns_p50: decisions.summary.p50,
        decision_ns_p99: decisions.summary.p99,
        decision_ns_mean: decisions.summary.mean,
        decision_ns_mean_continue: mean_ns(decisions.by_kind[Decision::Continue as usize]),
        decision_ns_mean_degrade: mean_ns(decisions.by_kind[Decision::Degrade as usize]),
        decision_ns_mean_terminate: mean_ns(decisions.by_kind[Decision::Terminate as usize]),
        decisions_continue: count(Decision::Continue),
        decisions_degrade: count(Decision::Degrade),
        decisions_terminate: count(Decision::Terminate),
        decision_to_baseline: decisions.summary.mean / baseline.mean.max(f64::MIN_POSITIVE),
        decision_target_ns: DECISION_TARGET_NS,
        decision_target_met: decisions.summary.p99 < DECISION_TARGET_NS,
        period_resets_calls: resets.calls,
        period_resets_batch: resets.batch,
        period_resets_ns_p50: resets.summary.p50,
        period_resets_ns_p99: resets.summary.p99,
        period_resets_ns_mean: resets.summary.mean,
        period_resets_to_baseline: resets.summary.mean / baseline.mean.max(f64::MIN_POSITIVE),
        timer_overhead_ns,
        bytes_per_tenant: tenant_bytes.map(|b| b as f64 / n as f64),
        bytes_per_tenant_with_pipeline: state_bytes.map(|b| b as f64 / n as f64),
        state_bytes,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic events are ones the ledger would accept: every event
    /// passes `State::validate` in the order the bench folds them.
    #[test]
    fn governance_bench_events_are_valid() {
        let nodes = pipeline();
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        let mut state = State::new();
        let mut seq = 0;
        let mut apply = |state: &mut State, event: &Event| {
            seq += 1;
            state
                .apply(seq, Timestamp::EPOCH, event)
                .unwrap_or_else(|e| panic!("seq {seq}: {e}: {event:?}"));
        };
        apply(
            &mut state,
            &Event::RunStarted {
                run: RunId(RUN.to_owned()),
                seed: SEED,
                config_hash: String::new(),
            },
        );
        for k in 0..50 {
            for event in tenant_events(k, &mut rng) {
                apply(&mut state, &event);
            }
        }
        for k in 0..50 {
            for event in pipeline_events(k, &nodes) {
                apply(&mut state, &event);
            }
        }
        assert_eq!(state.tenants.len(), 50);
        assert_eq!(state.queue.len(), 200);
    }

    /// No budget period has ended when the calls are timed, and a day
    /// later every daily tenant's has: the period-reset measure times the
    /// look for due resets, with periods that can end.
    #[test]
    fn governance_bench_periods_end_after_the_timed_calls() {
        let nodes = pipeline();
        let built = build_state(20, &nodes, &mut ChaCha8Rng::seed_from_u64(SEED));
        let state = &built.state;
        assert!(period_resets(state, state.last_at).is_empty());
        let next_day = Timestamp::from_micros(86_400_000_000);
        let reset: Vec<_> = period_resets(state, next_day)
            .iter()
            .filter(|e| e.kind() == "budget_period_reset")
            .filter_map(|e| e.tenant().cloned())
            .collect();
        let daily: Vec<_> = (0..20).step_by(2).map(tenant_id).collect();
        assert_eq!(reset, daily);
    }

    /// Each band gets the verdict its comment promises.
    #[test]
    fn governance_bench_bands_give_each_verdict() {
        let nodes = pipeline();
        let built = build_state(20, &nodes, &mut ChaCha8Rng::seed_from_u64(SEED));
        for k in 0..20 {
            let verdict =
                cost_agent::decide(&built.state, &task_id(k, nodes[0].id)).map(|d| d.decision);
            let expected = match k % 10 {
                0..=6 => Decision::Continue,
                7 | 8 => Decision::Degrade,
                _ => Decision::Terminate,
            };
            assert_eq!(verdict, Some(expected), "tenant {k}");
        }
    }
}
