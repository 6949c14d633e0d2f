//! A study's durable state, stored as MessagePack (named fields) at
//! `studies/<study>/controller/state.msgpack` after every change and before anything that
//! depends on it is published or acknowledged. A restarted controller rebuilds the study from
//! it alone; the bus only has to redeliver what was not acknowledged.

use std::collections::BTreeMap;

use bytes::Bytes;
use protocol::{Strategy, StudyEvent, StudySpec};
use serde::{Deserialize, Serialize};

/// Version of this layout; a controller refuses a state it does not know.
pub const STATE_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyState {
    pub schema: u32,
    pub spec: StudySpec,
    pub phase: Phase,
    /// `request_id` of the `PreprocessRequest` (for a `DatasetRef::Source` study).
    pub dataset_request: Option<String>,
    /// Set once the dataset is known to be in the store.
    pub dataset_id: Option<String>,
    /// `Searcher::save()`: the policy weights, optimizer state, baseline, random generator and
    /// outstanding tickets of the search.
    pub searcher: Bytes,
    /// `search::prune::Pruner::save()`: the pruner's record of intermediate values (empty in
    /// a state saved before pruning existed: the study's pruner is then built afresh).
    #[serde(default)]
    pub pruner: Bytes,
    /// Every job ever issued, by job id.
    pub jobs: BTreeMap<String, JobEntry>,
    /// Rewards counted, in the order they were counted (at most one per job id).
    pub rewards: Vec<RewardEntry>,
    /// Jobs that failed for good (dead-lettered, or a non-finite reward).
    pub failures: Vec<FailureEntry>,
    pub best: Option<Best>,
    /// Index (1-based) of the next job to issue.
    pub next_index: u32,
    /// Sequence number of the next study event (its `Nats-Msg-Id` is built from it).
    pub next_event: u64,
    /// Jobs and events decided but maybe not yet published: published (again, with the same
    /// message ids, so JetStream drops what it already has) after every save and on resume.
    pub outbox: Vec<Outgoing>,
    pub created_unix: f64,
    pub updated_unix: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the dataset to be preprocessed.
    Preparing,
    /// Jobs out, rewards coming in.
    Running,
    Done,
    Failed {
        reason: String,
    },
}

impl Phase {
    pub fn is_finished(&self) -> bool {
        matches!(self, Phase::Done | Phase::Failed { .. })
    }
}

/// One issued job: what the searcher needs back with its reward, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEntry {
    pub index: u32,
    pub seed: u64,
    pub proposal: search::Proposal,
    pub strategy: Strategy,
    pub status: JobStatus,
    /// Set when the pruner stopped the job: the report it was judged on. The job stays
    /// `Issued` until its (pruned, or already complete) reward or its dead letter arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopEntry>,
}

/// The intermediate report a job was stopped on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopEntry {
    pub epoch: u32,
    pub dice: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobStatus {
    /// Out for training; neither a reward nor a failure yet.
    Issued,
    Rewarded {
        mean: f64,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardEntry {
    pub job_id: String,
    pub index: u32,
    pub mean: f64,
    /// The reward is a pruned job's last intermediate Dice.
    #[serde(default)]
    pub pruned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureEntry {
    pub job_id: String,
    pub reason: String,
    pub worker: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub job_id: String,
    pub mean: f64,
    pub strategy: Strategy,
}

/// Something to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outgoing {
    /// The `TrainJob` of this job id (rebuilt from the ledger), message id = job id.
    Job { job_id: String },
    /// A study event, message id `<study>-event-<seq>`.
    Event { seq: u64, event: StudyEvent },
    /// The `StopJob` of this job id (rebuilt from its `stop`), message id `stop-<job>`.
    Stop { job_id: String },
}

impl StudyState {
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Self> {
        let state: StudyState = protocol::decode(bytes)?;
        anyhow::ensure!(
            state.schema == STATE_SCHEMA,
            "controller state schema {} (this controller reads {STATE_SCHEMA})",
            state.schema
        );
        Ok(state)
    }

    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(protocol::encode(self)?)
    }

    /// Jobs issued and not failed: what counts towards `max_jobs`.
    pub fn live_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| !matches!(j.status, JobStatus::Failed { .. }))
            .count()
    }

    /// Jobs out for training.
    pub fn outstanding(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.status == JobStatus::Issued)
            .count()
    }
}
