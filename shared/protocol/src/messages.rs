//! Every payload on the bus (who sends which: ARCHITECTURE.md, "Message flow"). All are MessagePack maps with named fields
//! and a `schema` version; see the README's "Reward stream" section for the field reference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DatasetSource, PreprocessParams, SCHEMA_VERSION};

fn schema() -> u32 {
    SCHEMA_VERSION
}

/// `segtune.preprocess.requests`: preprocess an MSD folder into the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessRequest {
    #[serde(default = "schema")]
    pub schema: u32,
    /// Chosen by the requester; echoed in the answer.
    pub request_id: String,
    pub source: DatasetSource,
    #[serde(default)]
    pub params: PreprocessParams,
}

/// `segtune.datasets.<dataset>`: the dataset is in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReady {
    #[serde(default = "schema")]
    pub schema: u32,
    pub request_id: String,
    pub dataset_id: String,
    pub manifest_key: String,
    pub train_cases: u32,
    pub validation_cases: u32,
    /// True when the store already held this dataset and nothing was recomputed.
    pub reused: bool,
}

/// One reason a dataset could not be preprocessed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseError {
    /// Case id, or empty for dataset-level problems (dataset.json).
    pub case: String,
    /// The file concerned (relative to the source folder).
    pub file: String,
    pub reason: String,
}

/// `segtune.datasets.<dataset>` (or `segtune.datasets.failed` when no id could be computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetFailed {
    #[serde(default = "schema")]
    pub schema: u32,
    pub request_id: String,
    pub dataset_id: Option<String>,
    pub source: DatasetSource,
    pub errors: Vec<CaseError>,
}

/// What a subscriber to `segtune.datasets.<dataset>` receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetEvent {
    Ready(DatasetReady),
    Failed(DatasetFailed),
}

/// How a search dimension maps [0, 1] to its real range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    #[default]
    Linear,
    Log,
}

/// One searched training knob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub scale: Scale,
}

/// Where a study's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetRef {
    /// An already preprocessed dataset id.
    Id { id: String },
    /// A raw MSD folder to preprocess first.
    Source {
        source: DatasetSource,
        #[serde(default)]
        params: PreprocessParams,
    },
}

/// Training settings shared by every job of a study (not searched unless also in the space).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    /// U-Net channels per level, e.g. `[8, 16, 32]`.
    pub channels: Vec<usize>,
    pub epochs: u32,
    pub patches_per_epoch: u32,
    pub batch_size: u32,
    /// Patch size (x, y, z).
    pub patch: [usize; 3],
    /// Sliding-window overlap at validation (fraction of the window).
    pub overlap: f64,
    /// Store key of a checkpoint to fine-tune from.
    #[serde(default)]
    pub init_checkpoint: Option<String>,
    /// Add cross-entropy to the Dice loss.
    #[serde(default)]
    pub dice_ce: bool,
    /// How the learning rate changes over the epochs. Absent on the wire when constant (the
    /// paper's, and what older peers assume).
    #[serde(default, skip_serializing_if = "LrSchedule::is_constant")]
    pub lr_schedule: LrSchedule,
    /// Validation averages the class probabilities of the 8 mirrorings of each case
    /// (nnU-Net's test-time augmentation, 8x the inference) before the argmax. Absent on the
    /// wire when off (what older peers assume).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tta: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The learning rate over a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The strategy's learning rate throughout.
    #[default]
    Constant,
    /// nnU-Net's polynomial decay: epoch `e` of `E` (0-based) uses `lr · (1 − e/E)^0.9`.
    Poly,
}

impl LrSchedule {
    pub fn is_constant(&self) -> bool {
        *self == LrSchedule::Constant
    }

    /// The learning rate of epoch `epoch` (1-based) of `epochs`, from the base rate `lr`.
    pub fn rate(self, lr: f64, epoch: u32, epochs: u32) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Poly => {
                let done = epoch.saturating_sub(1) as f64 / epochs.max(1) as f64;
                lr * (1.0 - done).max(0.0).powf(0.9)
            }
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            channels: vec![8, 16, 32],
            epochs: 10,
            patches_per_epoch: 16,
            batch_size: 2,
            patch: [32, 32, 32],
            overlap: 0.25,
            init_checkpoint: None,
            dice_ce: false,
            lr_schedule: LrSchedule::Constant,
            tta: false,
        }
    }
}

/// `segtune.submissions`: a study to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySpec {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub dataset: DatasetRef,
    pub space: Vec<Dimension>,
    /// `ppo-rnn`, `tpe`, `cmaes`, `hill-discrete`, `hill-continuous`, `random`, `fixed`.
    pub searcher: String,
    #[serde(default)]
    pub searcher_settings: BTreeMap<String, f64>,
    /// The paper's MAX_EPOCH: rewards to collect before the study is done.
    pub max_jobs: u32,
    /// The paper's n: jobs in flight.
    pub parallel: u32,
    /// Failed jobs tolerated before the study fails.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    pub training: TrainingConfig,
    pub seed: u64,
    /// Seed the searcher from this earlier study on the same space (its observations, or
    /// for `ppo-rnn` its policy). Absent (not encoded) for a cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<String>,
    /// Intermediate validation and the rule that stops weak jobs early (`[pruning]`).
    /// Absent (not encoded): no intermediate validation, every job trains to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruningSpec>,
}

fn default_max_failures() -> u32 {
    10
}

/// `[pruning]` of a study: when trainers validate the weights they have so far, and which
/// rule (`kind`) stops jobs whose intermediate Dice is weak. Only what the study file gave is
/// set; `search::prune` resolves the defaults and `study::validate_spec` checks every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PruningSpec {
    /// `none`, `median` (Optuna's median stopping rule) or `asha` (asynchronous successive
    /// halving).
    pub kind: String,
    /// Validate after every this many epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_every_epochs: Option<u32>,
    /// Validate at these fractions of `training.epochs` (each rounded up to a whole epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_at: Option<Vec<f64>>,
    /// Sliding-window overlap of the intermediate validations (default: `training.overlap`,
    /// the final evaluation's; lower is faster and coarser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<f64>,
    /// `median`: no job is stopped at an epoch below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u32>,
    /// `median`: no job is stopped before this many jobs completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_jobs: Option<u32>,
    /// `asha`: the reduction factor (the top 1/eta of a rung go on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u32>,
    /// `asha`: the first rung's epoch (rungs at r, r*eta, r*eta^2, ... below `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epochs: Option<u32>,
}

/// When a trainer validates a job's weights before the end (`TrainJob::validation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationPlan {
    /// Epochs (1-based, ascending, each below `training.epochs`) after which to validate.
    pub epochs: Vec<u32>,
    /// Sliding-window overlap of these validations.
    pub overlap: f64,
}

/// A training strategy: each searched knob in its real units and as its [0, 1] coordinate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Strategy {
    /// Real values by dimension name (probabilities, learning rate, ...).
    pub values: BTreeMap<String, f64>,
    /// The same dimensions in the searcher's [0, 1] coordinates.
    pub unit: BTreeMap<String, f64>,
}

/// `segtune.jobs.<study>`: train one model with one strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainJob {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    /// 1-based order in which the controller issued the job.
    pub index: u32,
    pub dataset_id: String,
    pub strategy: Strategy,
    pub training: TrainingConfig,
    /// Seeds patch sampling and augmentation.
    pub seed: u64,
    /// Set for a study's final model (`segtune study finalize`): the trainer also writes a
    /// model bundle. Absent on the wire otherwise (older trainers read jobs without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_model: Option<FinalModel>,
    /// Intermediate validations (a study with `[pruning]`); absent (not encoded): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationPlan>,
}

/// `segtune.submissions`, beside `StudySpec`s: train these jobs, which retrain a study's
/// strategies outside its search (`study finalize`: `<study>-final`; `study confirm`:
/// `<study>-confirm`). The CLI builds the jobs; the controller checks that they belong to
/// `source_study` (an existing study: same dataset, a job study id of its own, a final model's
/// bundle under the study's prefix) and publishes them, or dead-letters each one on
/// `segtune.deadletter.<job study>` with the reason. So the operator's role need not publish
/// jobs itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainRequest {
    #[serde(default = "schema")]
    pub schema: u32,
    /// The study whose strategies are retrained.
    pub source_study: String,
    pub jobs: Vec<TrainJob>,
}

/// What makes a [`TrainJob`] a study's final model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalModel {
    /// The study whose best strategy is trained.
    pub source_study: String,
    /// Store prefix of the model bundle the trainer writes (`bundle.json`,
    /// `model.safetensors`).
    pub bundle_prefix: String,
    /// Train on the training and validation cases together (the paper's final model).
    pub all_cases: bool,
}

/// `segtune.progress.<study>.<job>.validation` (stream VALIDATION, kept): the Dice of a job's
/// weights at an intermediate epoch, scored by the evaluator's code (sliding window, Dice,
/// small-component post-processing) with the plan's overlap. Published by the trainer with
/// `Nats-Msg-Id` `<job>-v<epoch>`, so a redelivered job's repeats are dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    pub index: u32,
    pub worker: String,
    /// JetStream delivery attempt of the job (1 = first).
    pub attempt: u64,
    /// Epoch just finished (the pruners' step), of `epochs`.
    pub epoch: u32,
    pub epochs: u32,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean validation Dice over cases and foreground classes.
    pub dice: f64,
    /// Mean over cases of each foreground class's Dice (index 0 = label 1).
    pub per_class: Vec<f64>,
    /// Wall seconds this attempt has trained so far, its validations included.
    pub train_seconds: f64,
    /// Wall seconds this validation took.
    pub validation_seconds: f64,
}

/// `segtune.stop.<study>.<job>` (stream STOPS): the controller's order to stop a job early.
/// The trainer holding the job stops at its next step boundary, stores the checkpoint and
/// publishes the job's pruned `Reward` (`mean` = `dice`, `epoch_reached` = `epoch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopJob {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    /// The intermediate report the decision was taken on.
    pub epoch: u32,
    pub dice: f64,
    /// The pruner's reason, for logs.
    pub reason: String,
}

/// `segtune.progress.<study>.<job>` (core NATS, best effort).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    pub worker: String,
    pub epoch: u32,
    pub epochs: u32,
    pub loss: f64,
    pub patches_per_sec: f64,
    /// JetStream delivery attempt of the job (1 = first).
    pub attempt: u64,
    /// Share of the epoch's wall time the trainer waited for augmented batches, in [0, 1]
    /// (0 from trainers older than the field).
    #[serde(default)]
    pub data_wait_fraction: f64,
}

/// `segtune.trained.<study>`: a checkpoint is stored and waits for evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    pub index: u32,
    pub dataset_id: String,
    pub strategy: Strategy,
    pub training: TrainingConfig,
    pub checkpoint_key: String,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub worker: String,
    pub attempt: u64,
}

/// Dice of one validation case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDice {
    pub case: String,
    /// Dice per foreground class (index 0 = label 1).
    pub per_class: Vec<f64>,
    pub mean: f64,
}

/// `segtune.rewards.<study>`: the validation Dice of one job; exactly one per job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    pub job_id: String,
    pub index: u32,
    pub strategy: Strategy,
    pub per_case: Vec<CaseDice>,
    /// Mean over cases of each foreground class's Dice.
    pub per_class: Vec<f64>,
    /// Mean Dice over cases and foreground classes: the reward.
    pub mean: f64,
    pub checkpoint_key: String,
    /// The trainer replica that trained the job (`Trained::worker`). This field and the four
    /// after it came after the first release: a reward from an older evaluator lacks them and
    /// reads as empty / 0, so `attempt == 0` marks "not reported".
    #[serde(default)]
    pub trainer: String,
    /// JetStream delivery attempt of the training job that produced the checkpoint (1 = first).
    #[serde(default)]
    pub attempt: u64,
    /// Wall seconds the trainer spent training (`Trained::train_seconds`).
    #[serde(default)]
    pub train_seconds: f64,
    /// Training loss of the last epoch (`Trained::final_loss`).
    #[serde(default)]
    pub final_loss: f64,
    /// Wall seconds the evaluator spent on the job: loading the dataset and the checkpoint,
    /// and the sliding-window inference over the validation cases.
    #[serde(default)]
    pub eval_seconds: f64,
    /// True when the job was stopped early by the study's pruner: `mean` is then its last
    /// intermediate Dice (the one the pruner judged), `per_case` is empty, and the trainer
    /// published the reward itself (no evaluation). False from older writers.
    #[serde(default)]
    pub pruned: bool,
    /// The epoch the job's training reached: `training.epochs` for a complete job, the epoch
    /// of the intermediate report it was stopped on for a pruned one; 0 = not reported.
    #[serde(default)]
    pub epoch_reached: u32,
}

/// `segtune.deadletter.<study>`: a job that will not be retried, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailed {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    /// Empty when the payload could not even be decoded.
    pub job_id: String,
    pub reason: String,
    /// Subject the job was consumed from.
    pub original_subject: String,
    pub deliveries: u64,
    pub worker: String,
}

/// `segtune.predict.requests`: segment scans already in the store with a model bundle in the
/// store (served by the evaluators; answered by a [`Predicted`] on
/// `segtune.predictions.<request>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictRequest {
    #[serde(default = "schema")]
    pub schema: u32,
    /// Chosen by the requester (a subject token); the outputs go under
    /// `predictions/<request_id>/` and the answer on `segtune.predictions.<request_id>`.
    pub request_id: String,
    /// The bundle's store prefix (`bundle.json` and `model.safetensors` under it), e.g. the
    /// `studies/<study>/final/bundle` that `study finalize` writes.
    pub model: String,
    /// Store keys of `.nii`/`.nii.gz` scans; each gives `<case>.nii.gz`, the case being the
    /// file name without its extension (unique within a request).
    pub inputs: Vec<String>,
    /// Sliding-window overlap; default: the bundle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<f64>,
    /// Average the 8 mirrorings of each scan (8x the work); default: as the bundle's
    /// validation did (its `network.tta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<bool>,
    /// Also write `<case>_probabilities.nii.gz` (float32, one volume per class).
    #[serde(default)]
    pub save_probabilities: bool,
}

/// One scan segmented by a [`PredictRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictedCase {
    /// The input's store key.
    pub input: String,
    pub case: String,
    /// `predictions/<request>/<case>.nii.gz`: a uint8 mask on the input's grid and header.
    pub mask_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities_key: Option<String>,
    /// The input's dimensions (x, y, z).
    pub dims: [u32; 3],
    pub seconds: f64,
}

/// `segtune.predictions.<request>`: what became of a [`PredictRequest`]. Every input is in
/// `outputs` or in `errors` (with `file` = its key; a problem with the whole request, such as
/// an unreadable bundle, has an empty `case` and fails every input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    #[serde(default = "schema")]
    pub schema: u32,
    pub request_id: String,
    pub model: String,
    pub outputs: Vec<PredictedCase>,
    pub errors: Vec<CaseError>,
    /// The evaluator replica that answered (the controller when every evaluator died on it).
    pub worker: String,
    pub seconds: f64,
}

/// `segtune.studies.<study>.events`: the study's public log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyEvent {
    #[serde(default = "schema")]
    pub schema: u32,
    pub study: String,
    /// Seconds since the Unix epoch.
    pub time_unix: f64,
    pub event: StudyEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StudyEventKind {
    Started {
        spec: Box<StudySpec>,
        dataset_id: String,
    },
    Issued {
        job_id: String,
        index: u32,
        strategy: Strategy,
    },
    Reward {
        job_id: String,
        index: u32,
        mean: f64,
        rewards_so_far: u32,
    },
    NewBest {
        job_id: String,
        mean: f64,
        strategy: Strategy,
    },
    JobFailed {
        job_id: String,
        reason: String,
    },
    Done {
        best_job_id: String,
        best_mean: f64,
        best_strategy: Strategy,
        rewards: u32,
    },
    Failed {
        reason: String,
    },
    /// A finished study continues (`segtune study extend`): `max_jobs` rewards now, where it
    /// was done at `previous_max_jobs`. `Done` comes again when they are in.
    Extended {
        max_jobs: u32,
        previous_max_jobs: u32,
    },
    /// The pruner stopped a job after its intermediate Dice at `epoch`; its pruned reward
    /// (a `reward` event) follows once the trainer has stopped, unless the job had already
    /// finished (then its full reward counts).
    Pruned {
        job_id: String,
        index: u32,
        epoch: u32,
        dice: f64,
        reason: String,
    },
}

/// `segtune.confirmations.<study>` (stream CONFIRMATIONS, kept): a study's top strategies
/// retrained with fresh seeds next to the same strategies with every augmentation off (the
/// ablation) and the routine strategy, all with the same seeds (`segtune study confirm`).
/// Published by the CLI with `Nats-Msg-Id` = `run_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(default = "schema")]
    pub schema: u32,
    /// The confirmed study.
    pub study: String,
    /// This confirmation's id; its jobs are `<run_id>-<arm code>-<seed index>`.
    pub run_id: String,
    /// The study id the jobs ran under (`<study>-confirm`; the controller ignores it).
    pub run_study: String,
    pub dataset_id: String,
    /// The seeds every arm trained with, in order (arm `dice[i]` used `seeds[i]`).
    pub seeds: Vec<u64>,
    /// Every arm's training budget (the study's).
    pub epochs: u32,
    pub patches_per_epoch: u32,
    pub arms: Vec<ConfirmArm>,
    /// Paired differences (same seed) of each winner against its ablation and the routine.
    pub comparisons: Vec<ConfirmComparison>,
    /// When the last job's result came in.
    pub time_unix: f64,
}

/// What an arm of a [`Confirmation`] trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmKind {
    /// One of the study's top strategies as the search found it.
    Winner,
    /// A winner with every augmentation probability 0 (same learning rate, magnitudes,
    /// budget).
    Ablation,
    /// The paper's routine strategy.
    Routine,
}

/// One arm of a [`Confirmation`]: a strategy trained once per seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmArm {
    /// `top1`, `top1-noaug`, ..., `routine`.
    pub name: String,
    pub kind: ArmKind,
    /// The study job whose strategy this is (winners and their ablations).
    pub source_job: Option<String>,
    /// That job's Dice in the search.
    pub search_dice: Option<f64>,
    pub strategy: Strategy,
    /// Job id per seed.
    pub job_ids: Vec<String>,
    /// Validation Dice per seed; nil where the job failed.
    pub dice: Vec<Option<f64>>,
    /// Mean and sample standard deviation (n − 1) of the Dice that came in (NaN: too few).
    pub mean: f64,
    pub sd: f64,
}

/// `arm − baseline` over the seeds where both have a Dice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmComparison {
    pub arm: String,
    pub baseline: String,
    /// Per shared seed, in seed order.
    pub diffs: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
    /// 95 % Student-t interval of the mean difference (n − 1 degrees of freedom); NaN ends
    /// with fewer than two pairs.
    pub ci95: [f64; 2],
}
