//! Wire tests: every message round-trips, decodes as a map with field names (what Python's
//! `msgpack.unpackb` gives), and matches checked-in golden bytes so a wire change is noticed.
//! Set `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change.

use std::collections::BTreeMap;

use protocol::*;

fn strategy() -> Strategy {
    Strategy {
        values: BTreeMap::from([("learning_rate".into(), 1e-3), ("p_noise".into(), 0.25)]),
        unit: BTreeMap::from([("learning_rate".into(), 0.5), ("p_noise".into(), 0.25)]),
    }
}

fn spec() -> StudySpec {
    StudySpec {
        schema: SCHEMA_VERSION,
        study: "demo".into(),
        dataset: DatasetRef::Source {
            source: DatasetSource::Local {
                path: "/data/Task09".into(),
            },
            params: PreprocessParams::default(),
        },
        space: vec![Dimension {
            name: "learning_rate".into(),
            min: 1e-4,
            max: 1e-2,
            scale: Scale::Log,
        }],
        searcher: "ppo-rnn".into(),
        searcher_settings: BTreeMap::from([("kappa".into(), 20.0)]),
        max_jobs: 20,
        parallel: 4,
        max_failures: 10,
        training: TrainingConfig::default(),
        seed: 7,
    }
}

fn reward() -> Reward {
    Reward {
        schema: SCHEMA_VERSION,
        study: "demo".into(),
        job_id: "demo-0003".into(),
        index: 3,
        strategy: strategy(),
        per_case: vec![CaseDice {
            case: "ct_1".into(),
            per_class: vec![0.9, 0.5],
            mean: 0.7,
        }],
        per_class: vec![0.9, 0.5],
        mean: 0.7,
        checkpoint_key: "studies/demo/jobs/demo-0003/model.safetensors".into(),
        trainer: "trainer-2".into(),
        attempt: 2,
        train_seconds: 41.5,
        final_loss: 0.3125,
        eval_seconds: 6.25,
    }
}

fn check<T>(name: &str, value: T, fields: &[&str])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(&value).unwrap();
    let back: T = decode(&bytes).unwrap();
    assert_eq!(back, value, "{name} round trip");

    let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    let map = v
        .as_map()
        .unwrap_or_else(|| panic!("{name} is not a map: {v}"));
    let keys: Vec<&str> = map.iter().filter_map(|(k, _)| k.as_str()).collect();
    for f in fields {
        assert!(keys.contains(f), "{name}: field {f} missing from {keys:?}");
    }

    let golden = format!("{}/tests/golden/{name}.msgpack", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &bytes).unwrap();
    }
    let want = std::fs::read(&golden).unwrap_or_else(|e| panic!("{golden}: {e}"));
    assert_eq!(
        bytes, want,
        "{name}: wire bytes changed (UPDATE_GOLDEN=1 if intended)"
    );
}

#[test]
fn every_message_round_trips_as_named_map() {
    check(
        "preprocess_request",
        PreprocessRequest {
            schema: SCHEMA_VERSION,
            request_id: "r1".into(),
            source: DatasetSource::Store {
                prefix: "raw/Task09".into(),
            },
            params: PreprocessParams::default(),
        },
        &["schema", "request_id", "source", "params"],
    );
    check(
        "dataset_ready",
        DatasetEvent::Ready(DatasetReady {
            schema: SCHEMA_VERSION,
            request_id: "r1".into(),
            dataset_id: "task09-0123456789abcdef".into(),
            manifest_key: "datasets/task09-0123456789abcdef/manifest.msgpack".into(),
            train_cases: 6,
            validation_cases: 2,
            reused: false,
        }),
        &["kind", "schema", "dataset_id", "manifest_key"],
    );
    check(
        "dataset_failed",
        DatasetEvent::Failed(DatasetFailed {
            schema: SCHEMA_VERSION,
            request_id: "r1".into(),
            dataset_id: None,
            source: DatasetSource::Local { path: "/x".into() },
            errors: vec![CaseError {
                case: "ct_1".into(),
                file: "imagesTr/ct_1.nii.gz".into(),
                reason: "truncated".into(),
            }],
        }),
        &["kind", "errors", "source"],
    );
    check(
        "study_spec",
        spec(),
        &[
            "schema", "study", "dataset", "space", "searcher", "max_jobs", "parallel", "training",
            "seed",
        ],
    );
    check(
        "train_job",
        TrainJob {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            index: 3,
            dataset_id: "d".into(),
            strategy: strategy(),
            training: TrainingConfig::default(),
            seed: 11,
        },
        &["schema", "study", "job_id", "strategy", "training", "seed"],
    );
    check(
        "progress",
        Progress {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            worker: "w1".into(),
            epoch: 2,
            epochs: 10,
            loss: 0.5,
            patches_per_sec: 12.5,
            attempt: 1,
        },
        &["epoch", "loss", "patches_per_sec"],
    );
    check(
        "trained",
        Trained {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            index: 3,
            dataset_id: "d".into(),
            strategy: strategy(),
            training: TrainingConfig::default(),
            checkpoint_key: "k".into(),
            final_loss: 0.2,
            train_seconds: 10.0,
            worker: "w1".into(),
            attempt: 1,
        },
        &["checkpoint_key", "strategy"],
    );
    check(
        "reward",
        reward(),
        &[
            "study",
            "job_id",
            "strategy",
            "per_case",
            "per_class",
            "mean",
            "trainer",
            "attempt",
            "train_seconds",
            "final_loss",
            "eval_seconds",
        ],
    );
    check(
        "job_failed",
        JobFailed {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            reason: "dataset missing".into(),
            original_subject: "segtune.jobs.demo".into(),
            deliveries: 1,
            worker: "w1".into(),
        },
        &["reason", "original_subject", "deliveries"],
    );
    check(
        "study_event",
        StudyEvent {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            time_unix: 1.5,
            event: StudyEventKind::NewBest {
                job_id: "demo-0003".into(),
                mean: 0.7,
                strategy: strategy(),
            },
        },
        &["study", "time_unix", "event"],
    );
    check(
        "manifest",
        Manifest {
            schema: SCHEMA_VERSION,
            dataset_id: "d".into(),
            name: "Synth".into(),
            source: DatasetSource::Local { path: "/x".into() },
            params: PreprocessParams::default(),
            modalities: vec![Modality::Ct],
            labels: vec!["background".into(), "organ".into()],
            normalization: vec![ChannelNormalization {
                channel: 0,
                modality: Modality::Ct,
                low: Some(-1000.0),
                high: Some(1000.0),
            }],
            split_origin: "dataset.json".into(),
            cases: vec![CaseEntry {
                id: "ct_1".into(),
                split: Split::Validation,
                image_key: "datasets/d/cases/ct_1/image.nii".into(),
                label_key: "datasets/d/cases/ct_1/label.nii".into(),
                shape: [32, 32, 30],
                channels: 1,
                source_spacing: [0.7, 0.7, 2.5],
                source_shape: [45, 45, 12],
                label_counts: vec![100, 20],
                windows: vec![[-1000.0, 1000.0]],
            }],
            created_unix: 0,
            segtune_version: "0.1.0".into(),
        },
        &["dataset_id", "cases", "modalities", "normalization"],
    );
}

#[test]
fn study_event_kind_is_a_tagged_map() {
    let ev = StudyEvent {
        schema: SCHEMA_VERSION,
        study: "s".into(),
        time_unix: 0.0,
        event: StudyEventKind::Done {
            best_job_id: "s-1".into(),
            best_mean: 0.9,
            best_strategy: strategy(),
            rewards: 10,
        },
    };
    let v: rmpv::Value = rmpv::decode::read_value(&mut &encode(&ev).unwrap()[..]).unwrap();
    let event = v
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("event"))
        .unwrap()
        .1
        .clone();
    let kind = event
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("kind"))
        .map(|(_, v)| v.as_str().unwrap().to_string());
    assert_eq!(kind.as_deref(), Some("done"));
}

#[test]
fn old_messages_without_new_fields_still_decode() {
    // A PreprocessRequest from a minimal producer: only the required fields.
    #[derive(serde::Serialize)]
    struct Minimal<'a> {
        request_id: &'a str,
        source: DatasetSource,
    }
    let bytes = rmp_serde::to_vec_named(&Minimal {
        request_id: "r",
        source: DatasetSource::Local { path: "/d".into() },
    })
    .unwrap();
    let req: PreprocessRequest = decode(&bytes).unwrap();
    assert_eq!(req.schema, SCHEMA_VERSION);
    assert_eq!(req.params, PreprocessParams::default());
}

/// A reward from an evaluator older than `trainer`, `attempt`, `train_seconds`, `final_loss`
/// and `eval_seconds` still decodes, with those fields at their defaults. The golden file is
/// the exact `reward.msgpack` checked in before the fields were added, not re-encoded.
#[test]
fn rewards_from_an_older_evaluator_still_decode() {
    let path = format!(
        "{}/tests/golden/reward_before_run_fields.msgpack",
        env!("CARGO_MANIFEST_DIR")
    );
    let old_bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: rmpv::Value = rmpv::decode::read_value(&mut &old_bytes[..]).unwrap();
    let keys: Vec<&str> = v
        .as_map()
        .unwrap()
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    assert!(
        !keys.contains(&"trainer") && !keys.contains(&"eval_seconds"),
        "{keys:?}"
    );

    let r: Reward = decode(&old_bytes).unwrap();
    let want = Reward {
        trainer: String::new(),
        attempt: 0,
        train_seconds: 0.0,
        final_loss: 0.0,
        eval_seconds: 0.0,
        ..reward()
    };
    assert_eq!(r, want);

    // The same from a minimal writer that only knows the original fields.
    #[derive(serde::Serialize)]
    struct OldReward<'a> {
        study: &'a str,
        job_id: &'a str,
        index: u32,
        strategy: Strategy,
        per_case: Vec<CaseDice>,
        per_class: Vec<f64>,
        mean: f64,
        checkpoint_key: &'a str,
    }
    let bytes = rmp_serde::to_vec_named(&OldReward {
        study: "demo",
        job_id: "demo-0001",
        index: 1,
        strategy: strategy(),
        per_case: Vec::new(),
        per_class: vec![0.5],
        mean: 0.5,
        checkpoint_key: "k",
    })
    .unwrap();
    let r: Reward = decode(&bytes).unwrap();
    assert_eq!(r.schema, SCHEMA_VERSION);
    assert_eq!((r.trainer.as_str(), r.attempt), ("", 0));
    assert_eq!(
        (r.train_seconds, r.final_loss, r.eval_seconds),
        (0.0, 0.0, 0.0)
    );
}

#[test]
fn garbage_gives_a_decode_error_naming_the_type() {
    let err = decode::<TrainJob>(b"\xc1garbage").unwrap_err().to_string();
    assert!(err.contains("TrainJob"), "{err}");
}

#[test]
fn subject_tokens_are_checked() {
    use protocol::subjects::*;
    assert!(check_token("study", "demo_1-a").is_ok());
    for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
        let err = check_token("study", bad).unwrap_err().to_string();
        assert!(err.contains("study"), "{err}");
    }
    assert_eq!(sanitize_token("Task09 Spleen.v2"), "task09-spleen-v2");
    assert_eq!(jobs("demo"), "segtune.jobs.demo");
    assert_eq!(progress("demo", "j1"), "segtune.progress.demo.j1");
    assert_eq!(study_events("demo"), "segtune.studies.demo.events");
}

#[test]
fn every_stream_subject_is_covered_and_consumers_reference_streams() {
    use protocol::streams::*;
    for c in CONSUMERS {
        let s = stream_spec(c.stream).expect("consumer's stream exists");
        assert!(s.subjects.contains(&c.filter_subject), "{}", c.durable);
        // -1 (unlimited) only for the controller's advisories, which must never be dropped.
        let unlimited = c.max_deliver == -1 && c.stream == protocol::subjects::stream::ADVISORIES;
        assert!((c.max_deliver > 0 || unlimited) && c.ack_wait.as_secs() >= 10);
    }
    let wildcard = |pat: &str, subj: &str| {
        let p: Vec<_> = pat.split('.').collect();
        let s: Vec<_> = subj.split('.').collect();
        p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
    };
    for subj in [
        protocol::subjects::PREPROCESS_REQUESTS.to_string(),
        protocol::subjects::SUBMISSIONS.to_string(),
        protocol::subjects::dataset("d"),
        protocol::subjects::jobs("s"),
        protocol::subjects::trained("s"),
        protocol::subjects::rewards("s"),
        protocol::subjects::study_events("s"),
        protocol::subjects::deadletter("s"),
    ] {
        let n = STREAMS
            .iter()
            .filter(|st| st.subjects.iter().any(|p| wildcard(p, &subj)))
            .count();
        assert_eq!(n, 1, "{subj} must be in exactly one stream");
    }
}
