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
        warm_start: None,
        pruning: None,
    }
}

fn pruning() -> PruningSpec {
    PruningSpec {
        kind: "asha".into(),
        report_every_epochs: None,
        report_at: Some(vec![0.5]),
        overlap: Some(0.0),
        warmup_steps: None,
        min_jobs: None,
        eta: Some(3),
        min_epochs: Some(1),
    }
}

fn validation_report() -> ValidationReport {
    ValidationReport {
        schema: SCHEMA_VERSION,
        study: "demo".into(),
        job_id: "demo-0003".into(),
        index: 3,
        worker: "trainer-1".into(),
        attempt: 1,
        epoch: 3,
        epochs: 9,
        step: 36,
        dice: 0.5,
        per_class: vec![0.75, 0.25],
        train_seconds: 12.5,
        validation_seconds: 0.75,
    }
}

fn stop_job() -> StopJob {
    StopJob {
        schema: SCHEMA_VERSION,
        study: "demo".into(),
        job_id: "demo-0003".into(),
        epoch: 3,
        dice: 0.5,
        reason: "asha rung 1".into(),
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
        pruned: false,
        epoch_reached: 10,
    }
}

fn confirmation() -> Confirmation {
    let arm = |name: &str, kind, dice: Vec<Option<f64>>| ConfirmArm {
        name: name.into(),
        kind,
        source_job: (kind != ArmKind::Routine).then(|| "demo-0003".into()),
        search_dice: (kind != ArmKind::Routine).then_some(0.7),
        strategy: strategy(),
        job_ids: vec![
            format!("demo-confirm-1-{name}-0"),
            format!("demo-confirm-1-{name}-1"),
        ],
        dice,
        mean: 0.75,
        sd: 0.125,
    };
    Confirmation {
        schema: SCHEMA_VERSION,
        study: "demo".into(),
        run_id: "demo-confirm-1".into(),
        run_study: "demo-confirm".into(),
        dataset_id: "synth-ct-0123".into(),
        seeds: vec![11, 12],
        epochs: 10,
        patches_per_epoch: 16,
        arms: vec![
            arm("top1", ArmKind::Winner, vec![Some(0.875), Some(0.625)]),
            arm("top1-noaug", ArmKind::Ablation, vec![Some(0.75), Some(0.5)]),
            arm("routine", ArmKind::Routine, vec![Some(0.5), None]),
        ],
        comparisons: vec![ConfirmComparison {
            arm: "top1".into(),
            baseline: "top1-noaug".into(),
            diffs: vec![0.125, 0.125],
            mean: 0.125,
            sd: 0.0,
            ci95: [0.125, 0.125],
        }],
        time_unix: 1.5,
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
        "predict_request",
        PredictRequest {
            schema: SCHEMA_VERSION,
            request_id: "scan-batch-7".into(),
            model: "studies/demo/final/bundle".into(),
            inputs: vec!["scans/ct_01.nii.gz".into(), "scans/ct_02.nii".into()],
            overlap: Some(0.5),
            tta: Some(true),
            save_probabilities: false,
        },
        &[
            "schema",
            "request_id",
            "model",
            "inputs",
            "overlap",
            "tta",
            "save_probabilities",
        ],
    );
    check(
        "predicted",
        Predicted {
            schema: SCHEMA_VERSION,
            request_id: "scan-batch-7".into(),
            model: "studies/demo/final/bundle".into(),
            outputs: vec![PredictedCase {
                input: "scans/ct_01.nii.gz".into(),
                case: "ct_01".into(),
                mask_key: "predictions/scan-batch-7/ct_01.nii.gz".into(),
                probabilities_key: None,
                dims: [512, 512, 120],
                seconds: 41.5,
            }],
            errors: vec![CaseError {
                case: "ct_02".into(),
                file: "scans/ct_02.nii".into(),
                reason: "has 2 channel(s), the model takes 1 (CT)".into(),
            }],
            worker: "evaluator-1".into(),
            seconds: 43.0,
        },
        &[
            "schema",
            "request_id",
            "model",
            "outputs",
            "errors",
            "worker",
            "seconds",
        ],
    );
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
            final_model: None,
            validation: None,
        },
        &["schema", "study", "job_id", "strategy", "training", "seed"],
    );
    check(
        "train_job_with_validation",
        TrainJob {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            index: 3,
            dataset_id: "d".into(),
            strategy: strategy(),
            training: TrainingConfig::default(),
            seed: 11,
            final_model: None,
            validation: Some(ValidationPlan {
                epochs: vec![1, 3],
                overlap: 0.25,
            }),
        },
        &["validation"],
    );
    check(
        "train_job_final_model",
        TrainJob {
            schema: SCHEMA_VERSION,
            study: "demo-final".into(),
            job_id: "demo-final-1765000000".into(),
            index: 1,
            dataset_id: "d".into(),
            strategy: strategy(),
            training: TrainingConfig {
                lr_schedule: LrSchedule::Poly,
                ..TrainingConfig::default()
            },
            seed: 0,
            final_model: Some(FinalModel {
                source_study: "demo".into(),
                bundle_prefix: "studies/demo/final/bundle".into(),
                all_cases: true,
            }),
            validation: None,
        },
        &["final_model"],
    );
    check(
        "study_spec_with_pruning",
        StudySpec {
            pruning: Some(pruning()),
            ..spec()
        },
        &["pruning"],
    );
    check(
        "validation_report",
        validation_report(),
        &[
            "schema",
            "study",
            "job_id",
            "epoch",
            "step",
            "dice",
            "train_seconds",
        ],
    );
    check(
        "stop_job",
        stop_job(),
        &["schema", "study", "job_id", "epoch", "dice", "reason"],
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
            data_wait_fraction: 0.25,
        },
        &["epoch", "loss", "patches_per_sec", "data_wait_fraction"],
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
            "pruned",
            "epoch_reached",
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
                image_blake3: None,
                label_blake3: None,
            }],
            created_unix: 0,
            segtune_version: "0.1.0".into(),
        },
        &["dataset_id", "cases", "modalities", "normalization"],
    );
}

#[test]
fn a_confirmation_round_trips_as_named_map() {
    check(
        "confirmation",
        confirmation(),
        &["study", "run_id", "seeds", "arms", "comparisons"],
    );
    // Its arm kinds are plain strings, its failed seeds nil.
    let v = value_of(&confirmation());
    let arms = field(&v, "arms").as_array().unwrap();
    assert_eq!(field(&arms[2], "kind").as_str(), Some("routine"));
    assert!(field(&arms[2], "dice").as_array().unwrap()[1].is_nil());
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
        pruned: false,
        epoch_reached: 0,
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

/// A reward from an evaluator older than `pruned` and `epoch_reached` still decodes, with
/// them at false and 0. The golden file is the exact `reward.msgpack` checked in before the
/// fields were added, not re-encoded.
#[test]
fn rewards_from_before_pruning_still_decode() {
    let path = format!(
        "{}/tests/golden/reward_before_pruning.msgpack",
        env!("CARGO_MANIFEST_DIR")
    );
    let old_bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: rmpv::Value = rmpv::decode::read_value(&mut &old_bytes[..]).unwrap();
    assert!(
        v.as_map()
            .unwrap()
            .iter()
            .all(|(k, _)| k.as_str() != Some("pruned")),
        "{v}"
    );
    let r: Reward = decode(&old_bytes).unwrap();
    assert_eq!(
        r,
        Reward {
            pruned: false,
            epoch_reached: 0,
            ..reward()
        }
    );
    // A job without a validation plan and a spec without pruning encode as before.
    let job: TrainJob = decode(
        &std::fs::read(format!(
            "{}/tests/golden/train_job.msgpack",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(job.validation, None);
}

/// Progress from a trainer older than `data_wait_fraction` still decodes, with the field at
/// 0. The golden file is the exact `progress.msgpack` checked in before the field was added,
/// not re-encoded.
#[test]
fn progress_from_an_older_trainer_still_decodes() {
    let path = format!(
        "{}/tests/golden/progress_before_data_wait.msgpack",
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
    assert!(!keys.contains(&"data_wait_fraction"), "{keys:?}");
    let p: Progress = decode(&old_bytes).unwrap();
    assert_eq!(
        p,
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
            data_wait_fraction: 0.0,
        }
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
    // Live per-study consumers carry these names: a rename would orphan them.
    assert_eq!(durable::rewards("demo"), "controller-rewards-demo");
    assert_eq!(durable::deadletter("demo"), "controller-deadletter-demo");
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
        protocol::subjects::validation("s", "s-0001"),
        protocol::subjects::stop("s", "s-0001"),
        protocol::subjects::confirmations("s"),
    ] {
        let n = STREAMS
            .iter()
            .filter(|st| st.subjects.iter().any(|p| wildcard(p, &subj)))
            .count();
        assert_eq!(n, 1, "{subj} must be in exactly one stream");
    }
    // Per-epoch progress stays core NATS: no stream takes it.
    let progress = protocol::subjects::progress("s", "s-0001");
    assert!(
        STREAMS
            .iter()
            .all(|st| !st.subjects.iter().any(|p| wildcard(p, &progress))),
        "{progress} must not be stored"
    );
}

// docs/reward-stream.md documents the public messages field by field. These tests encode a
// sample of each documented type and compare its keys, in order, with the doc's table, so a
// field added, renamed or reordered in `messages.rs` fails here until the doc says so too.

const DOC: &str = include_str!("../../../docs/reward-stream.md");

/// The doc's `## `Name`` / `### `Name`` sections, by name.
fn doc_sections() -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in DOC.lines() {
        let heading = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
            .and_then(|h| h.strip_prefix('`'))
            .and_then(|h| h.strip_suffix('`'));
        if line.starts_with("## ") || line.starts_with("### ") {
            if let Some((name, text)) = current.take() {
                sections.insert(name, text);
            }
            current = heading.map(|h| (h.to_string(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((name, text)) = current {
        sections.insert(name, text);
    }
    sections
}

fn section(name: &str) -> String {
    doc_sections()
        .remove(name)
        .unwrap_or_else(|| panic!("docs/reward-stream.md has no section `{name}`"))
}

/// Every `code` span of `text`, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `name` of every "`name`:" in `text` (field lists written inline), in order.
fn inline_fields(text: &str) -> Vec<String> {
    let parts: Vec<&str> = text.split('`').collect();
    (1..parts.len())
        .step_by(2)
        .filter(|&i| parts.get(i + 1).is_some_and(|rest| rest.starts_with(':')))
        .map(|i| parts[i].to_string())
        .collect()
}

/// The rows (cells trimmed) of the table whose header row starts with `| {first} |`.
fn table(text: &str, first: &str) -> Vec<Vec<String>> {
    let header = format!("| {first} |");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&header));
    assert!(lines.next().is_some(), "no table `{header}` in:\n{text}");
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The documented fields of a section's `| field |` table, in order (a row may name several,
/// "`min`, `max`").
fn doc_fields(name: &str) -> Vec<String> {
    table(&section(name), "field")
        .iter()
        .flat_map(|row| backticked(&row[0]))
        .collect()
}

/// The notes cell of `field` in section `name`'s table.
fn doc_notes(name: &str, field: &str) -> String {
    table(&section(name), "field")
        .into_iter()
        .find(|row| backticked(&row[0]).iter().any(|f| f == field))
        .unwrap_or_else(|| panic!("`{name}` documents no field `{field}`"))
        .last()
        .cloned()
        .unwrap()
}

fn value_of<T: serde::Serialize>(v: &T) -> rmpv::Value {
    rmpv::decode::read_value(&mut &encode(v).unwrap()[..]).unwrap()
}

/// The keys of a named map, in wire order.
fn keys(v: &rmpv::Value) -> Vec<String> {
    v.as_map()
        .unwrap_or_else(|| panic!("not a map: {v}"))
        .iter()
        .map(|(k, _)| k.as_str().expect("string keys").to_string())
        .collect()
}

fn field<'a>(v: &'a rmpv::Value, name: &str) -> &'a rmpv::Value {
    v.as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key {name} in {v}"))
}

#[track_caller]
fn assert_documented(name: &str, encoded: &rmpv::Value) {
    assert_eq!(
        keys(encoded),
        doc_fields(name),
        "`{name}`: the encoded keys (left) and docs/reward-stream.md's table (right) differ"
    );
}

/// Every variant of the event, with the `kind` it is written as. The match has no wildcard:
/// a new variant does not compile until it is sampled here (and then documented).
fn event_kinds() -> Vec<(&'static str, StudyEventKind)> {
    let all = vec![
        StudyEventKind::Started {
            spec: Box::new(spec()),
            dataset_id: "d".into(),
        },
        StudyEventKind::Issued {
            job_id: "demo-0001".into(),
            index: 1,
            strategy: strategy(),
        },
        StudyEventKind::Reward {
            job_id: "demo-0001".into(),
            index: 1,
            mean: 0.5,
            rewards_so_far: 1,
        },
        StudyEventKind::NewBest {
            job_id: "demo-0001".into(),
            mean: 0.5,
            strategy: strategy(),
        },
        StudyEventKind::JobFailed {
            job_id: "demo-0002".into(),
            reason: "r".into(),
        },
        StudyEventKind::Done {
            best_job_id: "demo-0001".into(),
            best_mean: 0.5,
            best_strategy: strategy(),
            rewards: 1,
        },
        StudyEventKind::Failed { reason: "r".into() },
        StudyEventKind::Extended {
            max_jobs: 30,
            previous_max_jobs: 20,
        },
        StudyEventKind::Pruned {
            job_id: "demo-0002".into(),
            index: 2,
            epoch: 3,
            dice: 0.25,
            reason: "r".into(),
        },
    ];
    all.into_iter()
        .map(|k| {
            let kind = match &k {
                StudyEventKind::Started { .. } => "started",
                StudyEventKind::Issued { .. } => "issued",
                StudyEventKind::Reward { .. } => "reward",
                StudyEventKind::NewBest { .. } => "new_best",
                StudyEventKind::JobFailed { .. } => "job_failed",
                StudyEventKind::Done { .. } => "done",
                StudyEventKind::Failed { .. } => "failed",
                StudyEventKind::Extended { .. } => "extended",
                StudyEventKind::Pruned { .. } => "pruned",
            };
            (kind, k)
        })
        .collect()
}

#[test]
fn reward_stream_doc_lists_exactly_the_encoded_fields() {
    let r = value_of(&reward());
    assert_documented("Reward", &r);
    assert_documented("Strategy", field(&r, "strategy"));
    let case = &field(&r, "per_case").as_array().unwrap()[0];
    assert_documented("CaseDice", case);

    // `warm_start`, `pruning` and a non-constant `lr_schedule` and `tta` are encoded only when set.
    let s = value_of(&StudySpec {
        warm_start: Some("earlier".into()),
        pruning: Some(pruning()),
        training: TrainingConfig {
            lr_schedule: LrSchedule::Poly,
            tta: true,
            ..TrainingConfig::default()
        },
        ..spec()
    });
    assert_documented("StudySpec", &s);
    assert_documented("Dimension", &field(&s, "space").as_array().unwrap()[0]);
    assert_documented("TrainingConfig", field(&s, "training"));
    // PreprocessParams is a paragraph ("`name`: type; ..."), not a table.
    let params = field(field(&s, "dataset"), "params");
    assert_eq!(
        keys(params),
        inline_fields(&section("PreprocessParams")),
        "`PreprocessParams`: encoded keys vs the doc"
    );

    assert_documented(
        "Progress",
        &value_of(&Progress {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            worker: "w1".into(),
            epoch: 2,
            epochs: 10,
            loss: 0.5,
            patches_per_sec: 12.5,
            attempt: 1,
            data_wait_fraction: 0.25,
        }),
    );
    assert_documented(
        "JobFailed",
        &value_of(&JobFailed {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: "demo-0003".into(),
            reason: "dataset missing".into(),
            original_subject: "segtune.jobs.demo".into(),
            deliveries: 1,
            worker: "w1".into(),
        }),
    );

    // Every section with a field table is one of the above (a newly documented message gets
    // a check here).
    let tabled: Vec<String> = doc_sections()
        .into_iter()
        .filter(|(_, text)| text.lines().any(|l| l.starts_with("| field |")))
        .map(|(name, _)| name)
        .collect();
    assert_documented("ValidationReport", &value_of(&validation_report()));
    assert_documented("StopJob", &value_of(&stop_job()));
    let c = value_of(&confirmation());
    assert_documented("Confirmation", &c);
    assert_documented("ConfirmArm", &field(&c, "arms").as_array().unwrap()[0]);
    assert_documented(
        "ConfirmComparison",
        &field(&c, "comparisons").as_array().unwrap()[0],
    );
    // Every optional key of `[pruning]` set, so every one is checked against the doc.
    let all = PruningSpec {
        report_every_epochs: Some(2),
        warmup_steps: Some(1),
        min_jobs: Some(5),
        ..pruning()
    };
    assert_documented("PruningSpec", &value_of(&all));
    let s = value_of(&StudySpec {
        warm_start: Some("earlier".into()),
        pruning: Some(pruning()),
        ..spec()
    });
    assert_documented("StudySpec", &s);

    let checked = [
        "CaseDice",
        "ConfirmArm",
        "ConfirmComparison",
        "Confirmation",
        "Dimension",
        "JobFailed",
        "Progress",
        "PruningSpec",
        "Reward",
        "StopJob",
        "Strategy",
        "StudyEvent",
        "StudySpec",
        "TrainingConfig",
        "ValidationReport",
    ];
    assert_eq!(tabled, checked, "sections with a field table");
}

#[test]
fn reward_stream_doc_lists_every_study_event_kind_and_its_fields() {
    let doc_kinds: Vec<(String, Vec<String>)> = table(&section("StudyEvent"), "`kind`")
        .iter()
        .map(|row| {
            let kind = backticked(&row[0]);
            assert_eq!(kind.len(), 1, "{row:?}");
            (kind[0].clone(), inline_fields(&row[1]))
        })
        .collect();
    let samples = event_kinds();
    assert_eq!(
        samples.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        doc_kinds
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        "event kinds: encoded (left) vs docs/reward-stream.md (right)"
    );
    for ((kind, event), (_, documented)) in samples.into_iter().zip(&doc_kinds) {
        let ev = value_of(&StudyEvent {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            time_unix: 1.5,
            event,
        });
        assert_documented("StudyEvent", &ev);
        let inner = field(&ev, "event");
        assert_eq!(field(inner, "kind").as_str(), Some(kind));
        let fields: Vec<String> = keys(inner).into_iter().filter(|k| k != "kind").collect();
        assert_eq!(
            &fields, documented,
            "`{kind}` event: encoded vs documented fields"
        );
    }
}

/// The tagged and plain enums inside `StudySpec`: every key and name they are written with
/// appears in the notes that describe them.
#[test]
fn reward_stream_doc_names_the_spec_enums() {
    let dataset_notes = doc_notes("StudySpec", "dataset");
    let named = backticked(&dataset_notes);
    let refs = [
        DatasetRef::Id { id: "d".into() },
        DatasetRef::Source {
            source: DatasetSource::Local { path: "/x".into() },
            params: PreprocessParams::default(),
        },
        DatasetRef::Source {
            source: DatasetSource::Store {
                prefix: "raw".into(),
            },
            params: PreprocessParams::default(),
        },
    ];
    for r in &refs {
        let v = value_of(r);
        let mut words = keys(&v);
        words.push(field(&v, "kind").as_str().unwrap().to_string());
        if let DatasetRef::Source { .. } = r {
            let source = field(&v, "source");
            words.extend(keys(source));
            words.push(field(source, "kind").as_str().unwrap().to_string());
        }
        for w in words {
            assert!(
                named.contains(&w),
                "`{w}` of {r:?} not in the `dataset` notes: {dataset_notes}"
            );
        }
    }
    let scale_notes = backticked(&doc_notes("Dimension", "scale"));
    for s in [Scale::Linear, Scale::Log] {
        let v = value_of(&s);
        let name = v.as_str().unwrap();
        assert!(scale_notes.iter().any(|n| n == name), "scale `{name}`");
    }
    let params = backticked(&section("PreprocessParams"));
    for s in [PercentileScope::Overall, PercentileScope::PerVolume] {
        let v = value_of(&s);
        let name = v.as_str().unwrap();
        assert!(params.iter().any(|n| n == name), "mr_scope `{name}`");
    }
}
