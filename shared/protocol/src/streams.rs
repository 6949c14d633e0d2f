//! The JetStream topology as data: `runtime::provision` turns these specs into streams and
//! consumers, so this table is the one place retention, AckWait, MaxDeliver and duplicate
//! windows are decided.

use std::time::Duration;

use crate::subjects::{durable, stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// A message is gone once its one consumer acks it.
    WorkQueue,
    /// Kept until limits (replayable history).
    Limits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
    pub retention: Retention,
    pub duplicate_window: Duration,
    /// 0 = unlimited.
    pub max_msgs: i64,
    /// 0 = unlimited.
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub durable: &'static str,
    pub filter_subject: &'static str,
    /// Redelivery deadline; long work extends it with in-progress acks every third of it.
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
}

/// Default AckWait of work consumers: short, so a dead worker's job comes back within a minute.
pub const WORK_ACK_WAIT: Duration = Duration::from_secs(60);

pub const STREAMS: &[StreamSpec] = &[
    StreamSpec {
        name: stream::PREPROCESS,
        subjects: &["segtune.preprocess.requests"],
        retention: Retention::WorkQueue,
        duplicate_window: Duration::from_secs(120),
        max_msgs: 10_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::DATASETS,
        subjects: &["segtune.datasets.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(120),
        max_msgs: 100_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::SUBMISSIONS,
        subjects: &["segtune.submissions"],
        retention: Retention::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        max_msgs: 10_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::JOBS,
        subjects: &["segtune.jobs.*"],
        retention: Retention::WorkQueue,
        // Longer than any controller retry horizon: a re-published job within it is dropped.
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 1_000_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::TRAINED,
        subjects: &["segtune.trained.*"],
        retention: Retention::WorkQueue,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 1_000_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::REWARDS,
        subjects: &["segtune.rewards.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 0,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::EVENTS,
        subjects: &["segtune.studies.*.events"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 0,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::DEADLETTER,
        subjects: &["segtune.deadletter.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 0,
        max_age: Duration::ZERO,
    },
    // Intermediate validation Dice of every job of a study that asks for it: kept like the
    // rewards, so the controller's per-study consumer survives its restarts and reports can
    // draw learning curves long after.
    StreamSpec {
        name: stream::VALIDATION,
        subjects: &["segtune.progress.*.*.validation"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 0,
        max_age: Duration::ZERO,
    },
    // Stops: a trainer that takes a job (first delivery or a redelivery after its trainer
    // died) reads its subject from the start, so a stop sent while nobody listened still
    // reaches whoever trains the job next. A week covers any job's life.
    StreamSpec {
        name: stream::STOPS,
        subjects: &["segtune.stop.*.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 1_000_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
    },
    // `segtune study confirm`'s results, kept like the rewards (the report reads them). Its
    // own stream, so the CLI's role may publish exactly these and nothing the services do.
    StreamSpec {
        name: stream::CONFIRMATIONS,
        subjects: &["segtune.confirmations.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(3600),
        max_msgs: 0,
        max_age: Duration::ZERO,
    },
    // A job whose worker dies on it every time is never answered by a worker: the server's
    // advisory is how the controller learns of it (and dead-letters it), even if the
    // controller was down when it was sent.
    StreamSpec {
        name: stream::ADVISORIES,
        subjects: &[crate::subjects::MAX_DELIVERIES_ADVISORIES],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(120),
        max_msgs: 100_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
    },
    // Predict requests are work like preprocess requests; their answers are kept a week so a
    // requester that reconnects (or looks later) still finds them.
    StreamSpec {
        name: stream::PREDICT,
        subjects: &["segtune.predict.requests"],
        retention: Retention::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        max_msgs: 10_000,
        max_age: Duration::ZERO,
    },
    StreamSpec {
        name: stream::PREDICTIONS,
        subjects: &["segtune.predictions.*"],
        retention: Retention::Limits,
        duplicate_window: Duration::from_secs(600),
        max_msgs: 100_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
    },
];

pub const CONSUMERS: &[ConsumerSpec] = &[
    ConsumerSpec {
        stream: stream::PREPROCESS,
        durable: durable::PREPROCESSORS,
        filter_subject: "segtune.preprocess.requests",
        ack_wait: WORK_ACK_WAIT,
        max_deliver: 3,
        max_ack_pending: 64,
    },
    ConsumerSpec {
        stream: stream::SUBMISSIONS,
        durable: durable::CONTROLLER_SUBMISSIONS,
        filter_subject: "segtune.submissions",
        ack_wait: WORK_ACK_WAIT,
        max_deliver: 5,
        max_ack_pending: 64,
    },
    ConsumerSpec {
        stream: stream::JOBS,
        durable: durable::TRAINERS,
        filter_subject: "segtune.jobs.*",
        ack_wait: WORK_ACK_WAIT,
        max_deliver: 3,
        max_ack_pending: 1024,
    },
    ConsumerSpec {
        stream: stream::TRAINED,
        durable: durable::EVALUATORS,
        filter_subject: "segtune.trained.*",
        ack_wait: WORK_ACK_WAIT,
        max_deliver: 3,
        max_ack_pending: 1024,
    },
    ConsumerSpec {
        stream: stream::PREDICT,
        durable: durable::PREDICTORS,
        filter_subject: "segtune.predict.requests",
        ack_wait: WORK_ACK_WAIT,
        max_deliver: 3,
        max_ack_pending: 64,
    },
    ConsumerSpec {
        stream: stream::ADVISORIES,
        durable: durable::CONTROLLER_MAX_DELIVERIES,
        filter_subject: crate::subjects::MAX_DELIVERIES_ADVISORIES,
        ack_wait: WORK_ACK_WAIT,
        // Retried until handled: a dropped advisory would leave its study waiting forever.
        max_deliver: -1,
        max_ack_pending: 64,
    },
];

pub fn stream_spec(name: &str) -> Option<&'static StreamSpec> {
    STREAMS.iter().find(|s| s.name == name)
}

pub fn consumer_spec(durable: &str) -> Option<&'static ConsumerSpec> {
    CONSUMERS.iter().find(|c| c.durable == durable)
}
