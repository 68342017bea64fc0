//! Events for given / when / then tests, built from what a test names and
//! defaults for the rest: [`tenant`] and [`submit`] return builders whose
//! methods change one field each, [`run_started`] the event itself;
//! [`given`] folds a list into a `State`.

use runledger::domain::{
    BudgetPeriod, Event, LearningIntensity, Micros, Params, Priority, State, TaskId, Timestamp,
};

/// A `tenant_registered`: at most 4 concurrent runs, balanced learning,
/// no meta-learning, no budget period unless changed.
pub fn tenant(id: &str, budget_micros: i64) -> Tenant {
    Tenant {
        id: id.to_owned(),
        budget_micros,
        max_concurrent_runs: 4,
        learning_intensity: LearningIntensity::Balanced,
        meta_learning: false,
        budget_period: BudgetPeriod::None,
    }
}

/// A `tenant_registered` being built (see [`tenant`]).
pub struct Tenant {
    id: String,
    budget_micros: i64,
    max_concurrent_runs: u32,
    learning_intensity: LearningIntensity,
    meta_learning: bool,
    budget_period: BudgetPeriod,
}

impl Tenant {
    pub fn max_runs(mut self, max_concurrent_runs: u32) -> Self {
        self.max_concurrent_runs = max_concurrent_runs;
        self
    }

    pub fn intensity(mut self, learning_intensity: LearningIntensity) -> Self {
        self.learning_intensity = learning_intensity;
        self
    }

    pub fn meta(mut self, meta_learning: bool) -> Self {
        self.meta_learning = meta_learning;
        self
    }

    pub fn period(mut self, budget_period: BudgetPeriod) -> Self {
        self.budget_period = budget_period;
        self
    }
}

impl From<Tenant> for Event {
    fn from(t: Tenant) -> Event {
        Event::TenantRegistered {
            tenant: t.id.into(),
            budget_micros: Micros(t.budget_micros),
            max_concurrent_runs: t.max_concurrent_runs,
            learning_intensity: t.learning_intensity,
            meta_learning: t.meta_learning,
            budget_period: t.budget_period,
        }
    }
}

/// A `run_started` with an empty config hash.
pub fn run_started(run: &str, seed: u64) -> Event {
    Event::RunStarted {
        run: run.into(),
        seed,
        config_hash: String::new(),
    }
}

/// A `task_submitted` of `task` for `tenant`: run `r`, normal priority, no
/// dependencies, no pipeline, a zero ceiling, the `sim` handler with null
/// params, one attempt, not optional, unless changed.
pub fn submit(task: &str, tenant: &str) -> Submit {
    Submit {
        run: "r".to_owned(),
        task: task.to_owned(),
        tenant: tenant.to_owned(),
        priority: Priority::Normal,
        deps: Vec::new(),
        pipeline: None,
        ceiling_micros: 0,
        handler: "sim".to_owned(),
        params: Params::null(),
        max_attempts: 1,
        optional: false,
    }
}

/// A `task_submitted` being built (see [`submit`]).
pub struct Submit {
    run: String,
    task: String,
    tenant: String,
    priority: Priority,
    deps: Vec<TaskId>,
    pipeline: Option<String>,
    ceiling_micros: i64,
    handler: String,
    params: Params,
    max_attempts: u32,
    optional: bool,
}

impl Submit {
    pub fn run(mut self, run: &str) -> Self {
        self.run = run.to_owned();
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn deps<D: Into<TaskId>>(mut self, deps: impl IntoIterator<Item = D>) -> Self {
        self.deps = deps.into_iter().map(Into::into).collect();
        self
    }

    pub fn pipeline(mut self, pipeline: &str) -> Self {
        self.pipeline = Some(pipeline.to_owned());
        self
    }

    pub fn ceiling(mut self, ceiling_micros: i64) -> Self {
        self.ceiling_micros = ceiling_micros;
        self
    }

    pub fn handler(mut self, handler: &str) -> Self {
        self.handler = handler.to_owned();
        self
    }

    pub fn params(mut self, params: &serde_json::Value) -> Self {
        self.params = Params::from_value(params);
        self
    }

    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    pub fn optional(mut self, optional: bool) -> Self {
        self.optional = optional;
        self
    }
}

impl From<Submit> for Event {
    fn from(s: Submit) -> Event {
        Event::TaskSubmitted {
            run: s.run.into(),
            task: s.task.into(),
            tenant: s.tenant.into(),
            priority: s.priority,
            deps: s.deps,
            pipeline: s.pipeline.map(Into::into),
            cost_ceiling_micros: Micros(s.ceiling_micros),
            handler: s.handler,
            params: s.params,
            max_attempts: s.max_attempts,
            optional: s.optional,
        }
    }
}

/// The state after `events`, each applied at seq 1, 2, ... and time 0;
/// a rejected one fails the test, naming it.
pub fn given(events: &[Event]) -> State {
    let mut state = State::new();
    for e in events {
        state
            .apply(state.seq + 1, Timestamp(0), e)
            .unwrap_or_else(|r| panic!("given {e}: {r}"));
    }
    state
}
