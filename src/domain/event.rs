//! The event vocabulary: every state change the engine records.
//!
//! An [`Event`] is a fact, named in the past tense. Its JSON form is the
//! ingest format (`{"type": "task_acked", "task": "t1", "worker": "w1"}`,
//! snake_case type and enum values); its binary form is the bincode
//! encoding used inside the versioned envelope of `log::codec`. This file
//! knows nothing of sled, tokio or the hash chain.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{PipelineId, RunId, TaskId, TenantId, WorkerId};
use super::money::Micros;
use super::time::Timestamp;

/// Scheduling priority, highest first; FIFO within one priority.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Batch,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ["critical", "high", "normal", "low", "batch"][self.index()]
    }
}

/// What a cost was spent on.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Llm,
    Retrieval,
    Rerank,
    Storage,
    Tool,
    Other,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Llm,
        Category::Retrieval,
        Category::Rerank,
        Category::Storage,
        Category::Tool,
        Category::Other,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ["llm", "retrieval", "rerank", "storage", "tool", "other"][self.index()]
    }
}

/// A tenant's budget health: HEALTHY below 80 % of budget spent, WARNING from
/// 80 %, CRITICAL from 90 % up to 100 %, EXCEEDED only after a recorded
/// `budget_overrun`.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum BudgetStatus {
    #[default]
    Healthy,
    Warning,
    Critical,
    Exceeded,
}

impl BudgetStatus {
    pub fn name(self) -> &'static str {
        ["healthy", "warning", "critical", "exceeded"][self as usize]
    }
}

/// How much of its budget a tenant lets the learning policy explore with:
/// 5 / 10 / 20 %.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum LearningIntensity {
    Conservative,
    #[default]
    Balanced,
    Aggressive,
}

impl LearningIntensity {
    /// The share of budget reserved for exploration, in basis points.
    pub fn exploration_bp(self) -> u32 {
        match self {
            LearningIntensity::Conservative => 500,
            LearningIntensity::Balanced => 1_000,
            LearningIntensity::Aggressive => 2_000,
        }
    }

    pub fn name(self) -> &'static str {
        ["conservative", "balanced", "aggressive"][self as usize]
    }
}

/// When a tenant's spend starts again from zero.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    #[default]
    None,
    Daily,
    Monthly,
}

/// The cost agent's verdict for a pipeline.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Encode, Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Continue,
    Degrade,
    Terminate,
}

/// Free-form JSON carried by an event (handler params, outputs, plans),
/// kept as canonical compact JSON (object keys sorted) so that equal values
/// always encode to equal bytes. JSON `null` is held as an empty string, so
/// the common case allocates nothing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Params(String);

impl Params {
    pub fn null() -> Self {
        Params(String::new())
    }

    pub fn from_value(value: &serde_json::Value) -> Self {
        if value.is_null() {
            return Params::null();
        }
        // serde_json's map is a BTreeMap (no `preserve_order`), so keys come
        // out sorted: the text is canonical.
        Params(value.to_string())
    }

    /// Params from JSON text the caller knows is canonical (compact, object
    /// keys sorted), such as a struct whose fields are declared in name
    /// order serialized with serde_json: no parse, no re-serialization.
    pub fn from_canonical_json(text: String) -> Self {
        if text == "null" {
            return Params::null();
        }
        Params(text)
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_json()).unwrap_or(serde_json::Value::Null)
    }

    /// The canonical JSON text (`null` for none).
    pub fn as_json(&self) -> &str {
        if self.0.is_empty() { "null" } else { &self.0 }
    }

    pub fn is_null(&self) -> bool {
        self.0.is_empty()
    }
}

impl Encode for Params {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.as_json().encode(encoder)
    }
}

impl<Context> Decode<Context> for Params {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = String::decode(decoder)?;
        Ok(if text == "null" {
            Params::null()
        } else {
            Params(text)
        })
    }
}
bincode::impl_borrow_decode!(Params);

impl Serialize for Params {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::value::RawValue::from_string(self.as_json().to_owned()) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(Params::from_value(&value))
    }
}

/// Why a node's params do not fit its handler's schema: where inside
/// `params` (`step`, `learn.model`; empty for the whole value) and what is
/// wrong. Shown as `params.<key>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub key: String,
    pub message: String,
}

impl ParamError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "params: {}", self.message)
        } else {
            write!(f, "params.{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ParamError {}

fn default_max_attempts() -> u32 {
    3
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One recorded fact. The JSON `type` of each variant is its snake_case name.
///
/// New variants go at the end (the binary codec numbers variants in order);
/// a change to an existing variant's fields needs a new envelope version in
/// `log::codec`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    TenantRegistered {
        tenant: TenantId,
        budget_micros: Micros,
        max_concurrent_runs: u32,
        #[serde(default)]
        learning_intensity: LearningIntensity,
        #[serde(default)]
        meta_learning: bool,
        #[serde(default)]
        budget_period: BudgetPeriod,
    },
    TenantUpdated {
        tenant: TenantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_micros: Option<Micros>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_concurrent_runs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        learning_intensity: Option<LearningIntensity>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta_learning: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_period: Option<BudgetPeriod>,
    },
    RunStarted {
        run: RunId,
        seed: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        config_hash: String,
    },
    RunFinished {
        run: RunId,
    },
    TaskSubmitted {
        run: RunId,
        task: TaskId,
        tenant: TenantId,
        priority: Priority,
        #[serde(default)]
        deps: Vec<TaskId>,
        /// The pipeline instance the task belongs to; a task without one is
        /// a pipeline of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pipeline: Option<PipelineId>,
        #[serde(default, skip_serializing_if = "is_default")]
        cost_ceiling_micros: Micros,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        handler: String,
        #[serde(default, skip_serializing_if = "Params::is_null")]
        params: Params,
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
        #[serde(default, skip_serializing_if = "is_default")]
        optional: bool,
    },
    TaskDequeued {
        task: TaskId,
        worker: WorkerId,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_deadline: Option<Timestamp>,
    },
    TaskAcked {
        task: TaskId,
        worker: WorkerId,
        #[serde(default, skip_serializing_if = "Params::is_null")]
        output: Params,
    },
    TaskNacked {
        task: TaskId,
        worker: WorkerId,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "is_default")]
        timed_out: bool,
    },
    TaskDeadLettered {
        task: TaskId,
        #[serde(default)]
        reason: String,
    },
    LeaseExpired {
        task: TaskId,
        worker: WorkerId,
    },
    TaskCancelled {
        task: TaskId,
        #[serde(default)]
        reason: String,
    },
    CostReserved {
        tenant: TenantId,
        task: TaskId,
        amount_micros: Micros,
    },
    CostIncurred {
        tenant: TenantId,
        /// Absent for costs imported from outside (e.g. an LLM gateway's
        /// spend log): they count against the budget without a reservation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        category: Category,
        amount_micros: Micros,
    },
    ReservationReleased {
        tenant: TenantId,
        task: TaskId,
        amount_micros: Micros,
    },
    BudgetOverrun {
        tenant: TenantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        /// How far past its ceiling (or the budget) the cost went.
        amount_micros: Micros,
    },
    BudgetStatusChanged {
        tenant: TenantId,
        from: BudgetStatus,
        to: BudgetStatus,
    },
    BudgetPeriodReset {
        tenant: TenantId,
    },
    AdmissionDenied {
        tenant: TenantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        reason: String,
    },
    BackpressureEngaged {
        run: RunId,
        running: u32,
        threshold: u32,
    },
    BackpressureReleased {
        run: RunId,
        running: u32,
        threshold: u32,
    },
    DegradationDecided {
        tenant: TenantId,
        run: RunId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        decision: Decision,
        #[serde(default)]
        reason: String,
        /// The decision's inputs and plan.
        #[serde(default, skip_serializing_if = "Params::is_null")]
        details: Params,
    },
    LearningOutcome {
        tenant: TenantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
        /// The choice that was tried (a model, a retrieval depth, ...).
        arm: String,
        reward_bp: i32,
        #[serde(default, skip_serializing_if = "is_default")]
        cost_micros: Micros,
    },
    LearningProfileAdjusted {
        tenant: TenantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intensity: Option<LearningIntensity>,
        exploration_bp: u32,
        #[serde(default)]
        reason: String,
    },
    /// The workload a run executes, kept so that `resume` can finish the
    /// run from the ledger alone.
    WorkloadRecorded {
        run: RunId,
        /// `toml`.
        format: String,
        text: String,
    },
    /// An optional node a degradation plan skipped: it ends without running
    /// and its dependants go on.
    TaskSkipped {
        task: TaskId,
        #[serde(default)]
        reason: String,
    },
    /// The learning policy's choice for a node about to run: the value of
    /// one of its params (an arm) and whether it explores.
    LearningArmChosen {
        tenant: TenantId,
        task: TaskId,
        /// The param chosen for, e.g. `model`.
        param: String,
        /// The value chosen, e.g. `small`.
        arm: String,
        #[serde(default, skip_serializing_if = "is_default")]
        explored: bool,
        #[serde(default)]
        reason: String,
    },
}

impl Event {
    /// The JSON `type` name, e.g. `task_acked`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TenantRegistered { .. } => "tenant_registered",
            Event::TenantUpdated { .. } => "tenant_updated",
            Event::RunStarted { .. } => "run_started",
            Event::RunFinished { .. } => "run_finished",
            Event::TaskSubmitted { .. } => "task_submitted",
            Event::TaskDequeued { .. } => "task_dequeued",
            Event::TaskAcked { .. } => "task_acked",
            Event::TaskNacked { .. } => "task_nacked",
            Event::TaskDeadLettered { .. } => "task_dead_lettered",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::TaskCancelled { .. } => "task_cancelled",
            Event::CostReserved { .. } => "cost_reserved",
            Event::CostIncurred { .. } => "cost_incurred",
            Event::ReservationReleased { .. } => "reservation_released",
            Event::BudgetOverrun { .. } => "budget_overrun",
            Event::BudgetStatusChanged { .. } => "budget_status_changed",
            Event::BudgetPeriodReset { .. } => "budget_period_reset",
            Event::AdmissionDenied { .. } => "admission_denied",
            Event::BackpressureEngaged { .. } => "backpressure_engaged",
            Event::BackpressureReleased { .. } => "backpressure_released",
            Event::DegradationDecided { .. } => "degradation_decided",
            Event::LearningOutcome { .. } => "learning_outcome",
            Event::LearningProfileAdjusted { .. } => "learning_profile_adjusted",
            Event::WorkloadRecorded { .. } => "workload_recorded",
            Event::TaskSkipped { .. } => "task_skipped",
            Event::LearningArmChosen { .. } => "learning_arm_chosen",
        }
    }

    /// The task this event is about, if any.
    pub fn task(&self) -> Option<&TaskId> {
        match self {
            Event::TaskSubmitted { task, .. }
            | Event::TaskDequeued { task, .. }
            | Event::TaskAcked { task, .. }
            | Event::TaskNacked { task, .. }
            | Event::TaskDeadLettered { task, .. }
            | Event::LeaseExpired { task, .. }
            | Event::TaskCancelled { task, .. }
            | Event::TaskSkipped { task, .. }
            | Event::LearningArmChosen { task, .. }
            | Event::CostReserved { task, .. }
            | Event::ReservationReleased { task, .. } => Some(task),
            Event::CostIncurred { task, .. }
            | Event::BudgetOverrun { task, .. }
            | Event::AdmissionDenied { task, .. }
            | Event::DegradationDecided { task, .. }
            | Event::LearningOutcome { task, .. } => task.as_ref(),
            _ => None,
        }
    }

    /// The tenant named by the event itself (not through its task).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Event::TenantRegistered { tenant, .. }
            | Event::TenantUpdated { tenant, .. }
            | Event::TaskSubmitted { tenant, .. }
            | Event::CostReserved { tenant, .. }
            | Event::CostIncurred { tenant, .. }
            | Event::ReservationReleased { tenant, .. }
            | Event::BudgetOverrun { tenant, .. }
            | Event::BudgetStatusChanged { tenant, .. }
            | Event::BudgetPeriodReset { tenant, .. }
            | Event::AdmissionDenied { tenant, .. }
            | Event::DegradationDecided { tenant, .. }
            | Event::LearningOutcome { tenant, .. }
            | Event::LearningArmChosen { tenant, .. }
            | Event::LearningProfileAdjusted { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The run named by the event itself (not through its task).
    pub fn run(&self) -> Option<&RunId> {
        match self {
            Event::RunStarted { run, .. }
            | Event::RunFinished { run }
            | Event::TaskSubmitted { run, .. }
            | Event::BackpressureEngaged { run, .. }
            | Event::BackpressureReleased { run, .. }
            | Event::DegradationDecided { run, .. }
            | Event::WorkloadRecorded { run, .. } => Some(run),
            _ => None,
        }
    }
}

impl fmt::Display for Event {
    /// The ingest JSON of the event.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(json) => f.write_str(&json),
            Err(_) => f.write_str(self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_uses_snake_case_type_and_enum_values() {
        let ev: Event = serde_json::from_str(
            r#"{"type":"cost_incurred","tenant":"acme","task":"t1","category":"llm","amount_micros":1200}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            Event::CostIncurred {
                tenant: "acme".into(),
                task: Some("t1".into()),
                category: Category::Llm,
                amount_micros: Micros(1200),
            }
        );
        let back = serde_json::to_value(&ev).unwrap();
        assert_eq!(back["type"], "cost_incurred");
        assert_eq!(back["category"], "llm");
    }

    #[test]
    fn event_json_rejects_unknown_fields_and_types() {
        let unknown_field =
            serde_json::from_str::<Event>(r#"{"type":"run_finished","run":"r1","color":"red"}"#);
        assert!(unknown_field.unwrap_err().to_string().contains("color"));
        let unknown_type = serde_json::from_str::<Event>(r#"{"type":"run_paused","run":"r1"}"#);
        assert!(unknown_type.unwrap_err().to_string().contains("run_paused"));
    }

    #[test]
    fn params_are_canonical_json() {
        let a: Params = serde_json::from_str(r#"{"b": 1, "a": [true, null]}"#).unwrap();
        let b: Params = serde_json::from_str(r#"{"a":[true,null],"b":1}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_json(), r#"{"a":[true,null],"b":1}"#);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"a":[true,null],"b":1}"#
        );
    }

    #[test]
    fn task_submitted_defaults_optional_fields() {
        let ev: Event = serde_json::from_str(
            r#"{"type":"task_submitted","run":"r","task":"t","tenant":"x","priority":"batch","deps":[]}"#,
        )
        .unwrap();
        match ev {
            Event::TaskSubmitted {
                priority,
                max_attempts,
                params,
                ..
            } => {
                assert_eq!(priority, Priority::Batch);
                assert_eq!(max_attempts, 3);
                assert!(params.is_null());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
