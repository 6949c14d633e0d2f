//! `segtune study finalize`: train a study's final model with its best strategy, as an
//! ordinary job over NATS (any trainer replica takes it, the evaluator scores it), and store
//! it as a model bundle that `segtune predict` reads.
//!
//! The final job runs under its own study id, `<study>-final`, so the study's reward stream,
//! watch and report keep exactly the search's jobs. The CLI builds the job and the controller
//! publishes it (a `RetrainRequest`), so the operator's role needs no right to publish jobs.
//! Submitting and collecting is `retrain`'s, shared with `segtune study confirm`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use protocol::{FinalModel, Reward, SCHEMA_VERSION, StudyEventKind, TrainJob, subjects};

use super::bus;

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// Study id (it must have at least one reward; its best strategy is trained).
    pub study: String,
    /// Epochs (default: the study's, at least 60).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Patches per epoch (default: the study's, at least as many patch voxels as the
    /// training cases hold).
    #[arg(long)]
    pub patches_per_epoch: Option<u32>,
    /// Train on the training and validation cases together, as the paper's final model
    /// (the Dice the evaluator then reports is not a held-out score).
    #[arg(long)]
    pub all_cases: bool,
    /// Validate the final model without mirror test-time augmentation (by default its Dice
    /// is measured on the mean of the 8 mirrorings of each validation case, as `segtune
    /// train` does, and `segtune predict` with its bundle mirrors too).
    #[arg(long)]
    pub no_tta: bool,
    /// Seed of the final training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also copy the bundle into this folder (for `segtune predict --model DIR`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Give up after this many seconds (default: wait as long as it takes).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
}

/// The study id the final job of `study` runs under.
pub fn final_study_id(study: &str) -> String {
    ::study::retrain::retrain_study_id(study, ::study::retrain::FINAL)
}

pub async fn run(a: FinalizeArgs) -> anyhow::Result<()> {
    subjects::check_token("study id", &a.study)?;
    let final_study = final_study_id(&a.study);
    subjects::check_token("study id", &final_study)?;
    let (client, js) = bus::connect_provisioned(&a.nats).await?;
    let (rewards, events) = bus::replay_study(&js, &a.study).await?;
    let mut spec = None;
    let mut dataset_id = None;
    let mut done = false;
    for ev in &events {
        match &ev.event {
            StudyEventKind::Started {
                spec: s,
                dataset_id: d,
            } => {
                spec = Some(s.as_ref().clone());
                dataset_id = Some(d.clone());
            }
            StudyEventKind::Done { .. } => done = true,
            StudyEventKind::Extended { .. } => done = false,
            _ => {}
        }
    }
    let (Some(spec), Some(dataset_id)) = (spec, dataset_id) else {
        anyhow::bail!(
            "study {}: no started event on {} (check the id and SEGTUNE_NATS)",
            a.study,
            a.nats
        );
    };
    let Some(best) = rewards
        .iter()
        // A pruned job's reward is an intermediate Dice, never the study's best.
        .filter(|r| r.mean.is_finite() && !r.pruned)
        .max_by(|x, y| x.mean.total_cmp(&y.mean))
    else {
        anyhow::bail!("study {} has no reward yet: nothing to finalize", a.study);
    };
    if !done {
        eprintln!(
            "note: study {} is not done; finalizing its best strategy so far",
            a.study
        );
    }
    let store = storage::open(&a.store)?;
    let manifest = dataprep::load_manifest(&store, &dataset_id)
        .await
        .with_context(|| format!("study {}: dataset {dataset_id}", a.study))?;
    let mut training = spec.training.clone();
    training.init_checkpoint = None;
    training.tta = !a.no_tta;
    training.epochs = a
        .epochs
        .unwrap_or(training.epochs.max(engine::defaults::DEFAULT_EPOCHS));
    training.patches_per_epoch = a.patches_per_epoch.unwrap_or_else(|| {
        training
            .patches_per_epoch
            .max(engine::defaults::default_patches_per_epoch(
                &manifest,
                training.patch,
                training.batch_size,
            ))
    });
    if training.epochs == 0 || training.patches_per_epoch == 0 {
        anyhow::bail!("--epochs and --patches-per-epoch must be positive");
    }
    let prefix = storage::keys::final_bundle(&a.study)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let job = TrainJob {
        schema: SCHEMA_VERSION,
        study: final_study.clone(),
        job_id: format!("{final_study}-{stamp}"),
        index: 1,
        dataset_id: dataset_id.clone(),
        strategy: best.strategy.clone(),
        training: training.clone(),
        seed: a.seed,
        final_model: Some(FinalModel {
            source_study: a.study.clone(),
            bundle_prefix: prefix.clone(),
            all_cases: a.all_cases,
        }),
        validation: None,
    };
    eprintln!(
        "finalizing study {}: best job {} (Dice {:.4}), strategy {:?}",
        a.study, best.job_id, best.mean, best.strategy.values
    );
    eprintln!(
        "final job {}: {} epochs x {} patches of {:?}{}",
        job.job_id,
        training.epochs,
        training.patches_per_epoch,
        training.patch,
        if a.all_cases {
            ", training and validation cases"
        } else {
            ""
        }
    );

    let timeout = a.timeout_secs.map(Duration::from_secs);
    let outcome = super::retrain::run_jobs(
        &client,
        &js,
        &a.study,
        &final_study,
        std::slice::from_ref(&job),
        timeout,
    )
    .await
    .with_context(|| {
        format!(
            "final job of study {} (its bundle appears under {prefix} when a trainer finishes it)",
            a.study
        )
    })?;
    let reward: Reward = match outcome.into_iter().next() {
        Some(Ok(r)) => r,
        Some(Err(f)) => anyhow::bail!("final job {} failed: {}", job.job_id, f.reason),
        None => anyhow::bail!("final job {}: no outcome", job.job_id),
    };

    // The evaluator's Dice goes into the bundle (manifest last: the weights are there).
    let mut bundle = engine::bundle::Bundle::read_store(&store, &prefix).await?;
    if bundle.manifest.provenance.job_id.as_deref() != Some(job.job_id.as_str()) {
        anyhow::bail!(
            "the bundle under {prefix} is from job {:?}, not {} (another finalize ran at the \
             same time?)",
            bundle.manifest.provenance.job_id,
            job.job_id
        );
    }
    bundle.manifest.provenance.validation_dice = Some(reward.mean);
    storage::put(
        &store,
        &format!("{prefix}/{}", engine::bundle::MANIFEST_FILE),
        bundle.manifest_json(),
    )
    .await?;
    eprintln!(
        "final model: validation Dice {:.4}{} (search best {:.4}), trained in {:.0} s",
        reward.mean,
        if a.all_cases {
            " (trained on these cases too)"
        } else {
            ""
        },
        best.mean,
        reward.train_seconds
    );
    if let Some(dir) = &a.out {
        bundle.write_dir(dir)?;
        eprintln!("bundle copied to {}", dir.display());
    }
    println!("store:{prefix}");
    Ok(())
}
