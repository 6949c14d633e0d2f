//! Predict requests: the evaluator also serves the durable consumer `predictors`, so a
//! deployment segments new scans without the CLI. A `PredictRequest` names a model bundle and
//! scans already in the store; each scan is segmented exactly as `segtune predict` does it
//! (the same `engine::predict::Predictor`, the same NIfTI encoder), its mask written to
//! `predictions/<request>/<case>.nii.gz`, and one `Predicted` answer, with every input either
//! done or failed with its reason, is published on `segtune.predictions.<request>`
//! (`Nats-Msg-Id` = request id). Evaluations and predictions of one replica take turns on its
//! cores (`App::compute`).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use async_nats::jetstream;
use engine::{
    JobError,
    bundle::{Bundle, BundleError},
    predict::{PredictOptions, Predictor},
};
use protocol::{CaseError, PredictRequest, Predicted, PredictedCase, SCHEMA_VERSION, subjects};
use runtime::worker::{DeadLetters, Handler, Verdict};

use crate::App;

/// The predict side of an evaluator replica (a second [`Handler`] over the same [`App`]).
pub struct PredictWork<'a>(pub &'a App);

/// An answered request, as [`runtime::worker::handle_next`] reports it.
#[derive(Debug, PartialEq)]
pub struct Answered {
    pub request_id: String,
    pub outputs: usize,
    pub errors: usize,
}

impl Handler for PredictWork<'_> {
    type Job = PredictRequest;
    type Worked = Result<Predicted, JobError>;
    type Done = Answered;
    const ROLE: &'static str = "predictor";
    const DURABLE: &'static str = subjects::durable::PREDICTORS;
    const DEAD_LETTERS: DeadLetters = DeadLetters::Subject(subjects::DEADLETTER_PREDICT);

    fn js(&self) -> &jetstream::Context {
        &self.0.js
    }
    fn worker(&self) -> &str {
        &self.0.worker
    }
    fn key(job: &PredictRequest) -> (&str, &str) {
        ("", &job.request_id)
    }

    async fn work(
        &self,
        job: &PredictRequest,
        _: u64,
        cancel: Arc<AtomicBool>,
    ) -> Result<Predicted, JobError> {
        let _turn = self.0.compute.lock().await;
        tracing::info!(request = %job.request_id, inputs = job.inputs.len(), "predicting");
        predict_request(self.0, job, cancel).await
    }

    async fn finish(
        &self,
        job: &PredictRequest,
        _: u64,
        worked: Result<Predicted, JobError>,
    ) -> anyhow::Result<Verdict<Answered>> {
        let answer = match worked {
            Ok(answer) => answer,
            Err(JobError::Permanent(reason)) => return Ok(Verdict::Permanent(reason)),
            Err(JobError::Transient(reason)) => return Ok(Verdict::Transient(reason)),
            Err(JobError::Cancelled) => return Ok(Verdict::Interrupted),
        };
        runtime::publish(
            &self.0.js,
            subjects::predictions(&job.request_id),
            Some(&job.request_id),
            protocol::encode(&answer)?,
        )
        .await
        .context("publishing Predicted")?;
        let outcome = Answered {
            request_id: job.request_id.clone(),
            outputs: answer.outputs.len(),
            errors: answer.errors.len(),
        };
        tracing::info!(
            request = %job.request_id,
            outputs = outcome.outputs,
            errors = outcome.errors,
            "prediction published"
        );
        if answer.outputs.is_empty() && !answer.errors.is_empty() {
            // Nothing could be segmented: the answer says why, a dead letter records it.
            let reason = answer
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.file, e.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Verdict::Answered { outcome, reason });
        }
        Ok(Verdict::Done(outcome))
    }
}

/// The case name of a store key: its last segment without `.nii`/`.nii.gz`.
pub fn case_of_key(key: &str) -> Option<&str> {
    engine::predict::case_name(key.rsplit('/').next()?)
}

fn store_failure(what: &str, e: storage::StorageError) -> Result<String, JobError> {
    if e.is_transient() {
        Err(JobError::Transient(format!("{what}: {e}")))
    } else {
        Ok(e.to_string())
    }
}

async fn predict_request(
    app: &App,
    req: &PredictRequest,
    cancel: Arc<AtomicBool>,
) -> Result<Predicted, JobError> {
    let started = Instant::now();
    // The answer's subject and the output keys are built from the id: one that cannot be
    // either can never be answered.
    subjects::check_token("request_id", &req.request_id)
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    storage::keys::check_name("predict request", &req.request_id)
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let mut answer = Predicted {
        schema: SCHEMA_VERSION,
        request_id: req.request_id.clone(),
        model: req.model.clone(),
        outputs: Vec::new(),
        errors: Vec::new(),
        worker: app.worker.clone(),
        seconds: 0.0,
    };
    let whole_request_fails = |answer: &mut Predicted, file: &str, reason: String| {
        answer.errors.push(CaseError {
            case: String::new(),
            file: file.to_string(),
            reason,
        });
    };
    if req.inputs.is_empty() {
        whole_request_fails(
            &mut answer,
            "",
            "no inputs: expected store keys of .nii/.nii.gz scans".into(),
        );
        return Ok(answer);
    }
    if let Some(o) = req.overlap
        && !(0.0..1.0).contains(&o)
    {
        whole_request_fails(
            &mut answer,
            "",
            format!("overlap {o}, expected a value in [0, 1)"),
        );
        return Ok(answer);
    }
    let model = req.model.trim_end_matches('/');
    let bundle = match Bundle::read_store(&app.store, model).await {
        Ok(b) => b,
        Err(BundleError::Store {
            transient: true,
            key,
            message,
        }) => return Err(JobError::Transient(format!("{key}: {message}"))),
        Err(e) => {
            whole_request_fails(&mut answer, model, e.to_string());
            return Ok(answer);
        }
    };
    let device = app.device.clone();
    let predictor = match tokio::task::spawn_blocking(move || Predictor::new(&bundle, &device))
        .await
        .map_err(|e| JobError::Transient(format!("loading the model: {e}")))?
    {
        Ok(p) => Arc::new(p),
        Err(e) => {
            whole_request_fails(&mut answer, model, e);
            return Ok(answer);
        }
    };
    let opts = PredictOptions {
        overlap: req.overlap,
        tta: req.tta,
        batch: 2,
        probabilities: req.save_probabilities,
    };
    let mut seen = HashSet::new();
    for input in &req.inputs {
        if cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        let fail = |answer: &mut Predicted, case: &str, reason: String| {
            answer.errors.push(CaseError {
                case: case.to_string(),
                file: input.clone(),
                reason,
            });
        };
        let Some(case) = case_of_key(input) else {
            fail(
                &mut answer,
                "",
                "expected the key of a .nii or .nii.gz file".into(),
            );
            continue;
        };
        let (mask_key, prob_key) = match (
            storage::keys::prediction(&req.request_id, &format!("{case}.nii.gz")),
            storage::keys::prediction(&req.request_id, &format!("{case}_probabilities.nii.gz")),
        ) {
            (Ok(m), Ok(p)) => (m, p),
            (Err(e), _) | (_, Err(e)) => {
                fail(&mut answer, case, e.to_string());
                continue;
            }
        };
        if !seen.insert(case.to_string()) {
            fail(
                &mut answer,
                case,
                format!(
                    "another input of this request is also case {case:?}; case names must be unique"
                ),
            );
            continue;
        }
        let bytes = match storage::get(&app.store, input).await {
            Ok(b) => b,
            Err(e) => {
                let reason = store_failure(input, e)?;
                fail(&mut answer, case, reason);
                continue;
            }
        };
        let predictor = predictor.clone();
        let name = input.clone();
        let probabilities = req.save_probabilities;
        let case_started = Instant::now();
        let encoded = tokio::task::spawn_blocking(move || {
            encode_prediction(&predictor, &bytes, &name, &opts, probabilities)
        })
        .await
        .map_err(|e| JobError::Transient(format!("prediction task: {e}")))?;
        let (mask, probs, dims) = match encoded {
            Ok(x) => x,
            Err(reason) => {
                fail(&mut answer, case, reason);
                continue;
            }
        };
        // Probabilities first: a mask is only ever there with the probabilities asked for.
        if let Some(p) = probs {
            storage::put(&app.store, &prob_key, p)
                .await
                .map_err(|e| JobError::Transient(format!("{prob_key}: {e}")))?;
        }
        storage::put(&app.store, &mask_key, mask)
            .await
            .map_err(|e| JobError::Transient(format!("{mask_key}: {e}")))?;
        answer.outputs.push(PredictedCase {
            input: input.clone(),
            case: case.to_string(),
            mask_key,
            probabilities_key: probabilities.then_some(prob_key),
            dims,
            seconds: case_started.elapsed().as_secs_f64(),
        });
    }
    answer.seconds = started.elapsed().as_secs_f64();
    Ok(answer)
}

type Encoded = (Vec<u8>, Option<Vec<u8>>, [u32; 3]);

/// Segments one scan given as file bytes and encodes its mask (and probabilities) as the
/// `.nii.gz` files `segtune predict` writes.
fn encode_prediction(
    predictor: &Predictor,
    bytes: &[u8],
    name: &str,
    opts: &PredictOptions,
    probabilities: bool,
) -> Result<Encoded, String> {
    let img = volume::read_nifti_bytes(bytes, name, &volume::ReadLimits::default())
        .map_err(|e| e.to_string())?;
    let pred = predictor.predict(&img.volume, opts, &mut |_, _| {})?;
    let mask = volume::nifti::write_nifti_like_bytes(name, &pred.mask, &img.spatial)
        .map_err(|e| e.to_string())?;
    let probs = match (&pred.probabilities, probabilities) {
        (Some(p), true) => Some(
            volume::nifti::write_nifti_like_bytes(name, p, &img.spatial)
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let [x, y, z] = img.volume.dims;
    Ok((mask, probs, [x as u32, y as u32, z as u32]))
}

#[cfg(test)]
mod tests {
    use super::case_of_key;

    #[test]
    fn the_case_of_a_key_is_its_file_name_without_the_nifti_extension() {
        assert_eq!(case_of_key("scans/a/ct_01.nii.gz"), Some("ct_01"));
        assert_eq!(case_of_key("b.NII"), Some("b"));
        assert_eq!(case_of_key("x/notes.txt"), None);
        assert_eq!(case_of_key("x/.nii.gz"), None);
    }
}
