//! Retraining a study's strategies outside its search: `study finalize` (the final model)
//! and `study confirm` (fresh seeds and ablations) train ordinary jobs under study ids of
//! their own, `<study>-final` and `<study>-confirm`, so the study's own rewards, watch and
//! report keep exactly the search's jobs. The CLI builds the jobs and sends them to the
//! controller as a `RetrainRequest`; [`check_retrain`] is what the controller accepts.

use protocol::{RetrainRequest, subjects};

/// The suffixes of retraining study ids.
pub const FINAL: &str = "final";
pub const CONFIRM: &str = "confirm";

/// `<source>-<suffix>`: the study id the retraining jobs of `source` run under.
pub fn retrain_study_id(source: &str, suffix: &str) -> String {
    format!("{source}-{suffix}")
}

/// Why `req` cannot be trained for the study `req.source_study`, whose dataset is
/// `dataset_id` and whose final model goes under `final_bundle` (the store prefix).
pub fn check_retrain(
    req: &RetrainRequest,
    dataset_id: &str,
    final_bundle: &str,
) -> Result<(), String> {
    let source = &req.source_study;
    if req.jobs.is_empty() {
        return Err("no jobs to train".into());
    }
    let allowed = [
        retrain_study_id(source, FINAL),
        retrain_study_id(source, CONFIRM),
    ];
    for job in &req.jobs {
        let id = &job.job_id;
        if !allowed.contains(&job.study) {
            return Err(format!(
                "job {id}: study {:?}, expected {} or {}",
                job.study, allowed[0], allowed[1]
            ));
        }
        subjects::check_token("study", &job.study).map_err(|e| e.to_string())?;
        subjects::check_token("job id", id).map_err(|e| e.to_string())?;
        if !id.starts_with(&format!("{}-", job.study)) {
            return Err(format!(
                "job {id}: its id must start with its study id {}-",
                job.study
            ));
        }
        if job.dataset_id != dataset_id {
            return Err(format!(
                "job {id}: dataset {}, but study {source} trains on {dataset_id}",
                job.dataset_id
            ));
        }
        if job.validation.is_some() {
            return Err(format!(
                "job {id}: a retraining job has no intermediate validation (nothing prunes it)"
            ));
        }
        if let Some(f) = &job.final_model {
            if job.study != allowed[0] {
                return Err(format!(
                    "job {id}: only a {} job writes a final model",
                    allowed[0]
                ));
            }
            if f.source_study != *source || f.bundle_prefix != final_bundle {
                return Err(format!(
                    "job {id}: final model of study {} under {}, expected study {source} \
                     under {final_bundle}",
                    f.source_study, f.bundle_prefix
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use protocol::{FinalModel, SCHEMA_VERSION, Strategy, TrainJob, TrainingConfig};

    use super::*;

    fn job(study: &str, id: &str) -> TrainJob {
        TrainJob {
            schema: SCHEMA_VERSION,
            study: study.into(),
            job_id: id.into(),
            index: 1,
            dataset_id: "ds-1".into(),
            strategy: Strategy::default(),
            training: TrainingConfig::default(),
            seed: 0,
            final_model: None,
            validation: None,
        }
    }

    fn req(jobs: Vec<TrainJob>) -> RetrainRequest {
        RetrainRequest {
            schema: SCHEMA_VERSION,
            source_study: "demo".into(),
            jobs,
        }
    }

    const BUNDLE: &str = "studies/demo/final/bundle";

    #[test]
    fn final_and_confirm_jobs_of_the_study_are_accepted() {
        let mut f = job("demo-final", "demo-final-1");
        f.final_model = Some(FinalModel {
            source_study: "demo".into(),
            bundle_prefix: BUNDLE.into(),
            all_cases: false,
        });
        let c = job("demo-confirm", "demo-confirm-0001");
        assert_eq!(check_retrain(&req(vec![f, c]), "ds-1", BUNDLE), Ok(()));
    }

    #[test]
    fn jobs_that_are_not_the_studys_retraining_are_refused() {
        let cases = [
            (req(vec![]), "no jobs"),
            (
                req(vec![job("demo", "demo-0001")]),
                "expected demo-final or demo-confirm",
            ),
            (
                req(vec![job("other-final", "other-final-1")]),
                "expected demo-final",
            ),
            (
                req(vec![job("demo-final", "x-1")]),
                "must start with its study id",
            ),
            (
                req(vec![TrainJob {
                    dataset_id: "ds-2".into(),
                    ..job("demo-final", "demo-final-1")
                }]),
                "dataset ds-2, but study demo trains on ds-1",
            ),
            (
                req(vec![TrainJob {
                    final_model: Some(FinalModel {
                        source_study: "demo".into(),
                        bundle_prefix: "datasets/x".into(),
                        all_cases: false,
                    }),
                    ..job("demo-final", "demo-final-1")
                }]),
                "expected study demo under studies/demo/final/bundle",
            ),
            (
                req(vec![TrainJob {
                    final_model: Some(FinalModel {
                        source_study: "demo".into(),
                        bundle_prefix: BUNDLE.into(),
                        all_cases: false,
                    }),
                    ..job("demo-confirm", "demo-confirm-1")
                }]),
                "only a demo-final job writes a final model",
            ),
        ];
        for (r, want) in cases {
            let err = check_retrain(&r, "ds-1", BUNDLE).unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
