//! Every subject, stream and durable consumer name. Ids that go into a subject token
//! (study, job, dataset) must pass [`check_token`].

pub const PREFIX: &str = "segtune";

pub const PREPROCESS_REQUESTS: &str = "segtune.preprocess.requests";
pub const SUBMISSIONS: &str = "segtune.submissions";
/// `PredictRequest`s, served by the evaluators.
pub const PREDICT_REQUESTS: &str = "segtune.predict.requests";
/// Subject for a `DatasetFailed` whose id could not be computed (e.g. unreadable dataset.json).
pub const DATASETS_UNKNOWN: &str = "segtune.datasets._unknown";

pub fn dataset(dataset_id: &str) -> String {
    format!("segtune.datasets.{dataset_id}")
}
pub fn jobs(study: &str) -> String {
    format!("segtune.jobs.{study}")
}
pub fn progress(study: &str, job: &str) -> String {
    format!("segtune.progress.{study}.{job}")
}
pub fn progress_all(study: &str) -> String {
    format!("segtune.progress.{study}.*")
}
/// A job's intermediate validation reports (`ValidationReport`, stream VALIDATION). Four
/// tokens, so `segtune.progress.<study>.*` (the per-epoch `Progress`) does not match it.
pub fn validation(study: &str, job: &str) -> String {
    format!("segtune.progress.{study}.{job}.validation")
}
/// Every validation report of a study (the controller's per-study consumer filter).
pub fn validation_all(study: &str) -> String {
    format!("segtune.progress.{study}.*.validation")
}
/// The controller's stop for one job (`StopJob`, stream STOPS).
pub fn stop(study: &str, job: &str) -> String {
    format!("segtune.stop.{study}.{job}")
}
pub fn trained(study: &str) -> String {
    format!("segtune.trained.{study}")
}
pub fn rewards(study: &str) -> String {
    format!("segtune.rewards.{study}")
}
pub fn study_events(study: &str) -> String {
    format!("segtune.studies.{study}.events")
}
/// The answer (`Predicted`) to the predict request `request`.
pub fn predictions(request: &str) -> String {
    format!("segtune.predictions.{request}")
}
pub fn deadletter(study: &str) -> String {
    format!("segtune.deadletter.{study}")
}
/// A study's confirmations (`Confirmation`, stream CONFIRMATIONS), published by the CLI.
pub fn confirmations(study: &str) -> String {
    format!("segtune.confirmations.{study}")
}

/// Dead letters of preprocess requests (no study owns them): a `JobFailed` whose `job_id` is
/// the request id, next to the `DatasetFailed` answer that lists every error.
pub const DEADLETTER_PREPROCESS: &str = "segtune.deadletter._preprocess";
/// Dead letters of predict requests, next to the `Predicted` answer that names every error.
pub const DEADLETTER_PREDICT: &str = "segtune.deadletter._predict";

/// Stream names.
pub mod stream {
    pub const PREPROCESS: &str = "PREPROCESS";
    pub const DATASETS: &str = "DATASETS";
    pub const SUBMISSIONS: &str = "SUBMISSIONS";
    pub const JOBS: &str = "JOBS";
    pub const TRAINED: &str = "TRAINED";
    pub const REWARDS: &str = "REWARDS";
    pub const EVENTS: &str = "EVENTS";
    pub const DEADLETTER: &str = "DEADLETTER";
    /// Intermediate validation reports.
    pub const VALIDATION: &str = "VALIDATION";
    /// Stops for jobs the pruner ended early.
    pub const STOPS: &str = "STOPS";
    /// Predict requests (work queue) and their answers (kept).
    pub const PREDICT: &str = "PREDICT";
    pub const PREDICTIONS: &str = "PREDICTIONS";
    /// nats-server's max-deliveries advisories, kept for the controller.
    pub const ADVISORIES: &str = "ADVISORIES";
    /// `segtune study confirm`'s results.
    pub const CONFIRMATIONS: &str = "CONFIRMATIONS";
}

/// Durable consumer names.
pub mod durable {
    pub const PREPROCESSORS: &str = "preprocessors";
    pub const CONTROLLER_SUBMISSIONS: &str = "controller";
    pub const TRAINERS: &str = "trainers";
    pub const EVALUATORS: &str = "evaluators";
    /// The evaluators' consumer of predict requests.
    pub const PREDICTORS: &str = "predictors";
    pub const CONTROLLER_REWARDS: &str = "controller-rewards";
    pub const CONTROLLER_DEADLETTER: &str = "controller-deadletter";
    pub const CONTROLLER_VALIDATION: &str = "controller-validation";
    /// The controller's reader of `ADVISORIES` (see `controller::max_deliveries`).
    pub const CONTROLLER_MAX_DELIVERIES: &str = "controller-max-deliveries";

    /// The controller's consumer of one study's rewards.
    pub fn rewards(study: &str) -> String {
        format!("{CONTROLLER_REWARDS}-{study}")
    }
    /// The controller's consumer of one study's dead letters.
    pub fn deadletter(study: &str) -> String {
        format!("{CONTROLLER_DEADLETTER}-{study}")
    }
    /// The controller's consumer of one study's validation reports (a study with pruning).
    pub fn validation(study: &str) -> String {
        format!("{CONTROLLER_VALIDATION}-{study}")
    }
}

/// Where nats-server announces that a consumer delivered a message MaxDeliver times without
/// an ack (`.<stream>.<consumer>` follows); not published by segtune.
pub const MAX_DELIVERIES_ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";

/// `Nats-Msg-Id` of a job's validation report at `epoch`: one per job and epoch, so the
/// reports of a redelivered job (it trains again from the start) are dropped as duplicates.
pub fn validation_msg_id(job: &str, epoch: u32) -> String {
    format!("{job}-v{epoch}")
}

/// `Nats-Msg-Id` of a job's stop: the controller may republish it (outbox), never twice.
pub fn stop_msg_id(job: &str) -> String {
    format!("stop-{job}")
}

/// Header carrying a job's id on every publish that must not duplicate.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {value:?} cannot be used in a NATS subject: use 1..=64 characters from \
     a-z, A-Z, 0-9, '-' and '_'"
)]
pub struct TokenError {
    pub what: &'static str,
    pub value: String,
}

/// Ids become single subject tokens: no dots, wildcards or spaces.
pub fn check_token(what: &'static str, value: &str) -> Result<(), TokenError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TokenError {
            what,
            value: value.to_string(),
        })
    }
}

/// Turns any name into a valid token (lowercase, other characters become '-').
pub fn sanitize_token(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() { "dataset".into() } else { s }
}
