//! Intermediate validation and the early stop of a pruned job.
//!
//! At each epoch of a `protocol::ValidationPlan` the weights trained so far are scored by
//! [`crate::evaluate`] itself (the evaluator's sliding window, Dice and small-component
//! post-processing) on a snapshot of them, with the plan's overlap: an intermediate Dice and a
//! final reward of the same weights are the same number when the overlaps agree. A stop flag,
//! set from outside (the trainer's subscription to the job's stop subject), ends the training
//! at the next step boundary; the checkpoint of the weights reached is still returned.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use protocol::{TrainingConfig, ValidationPlan};
use segmodel::{SegTrainer, candle_core::Device};

use crate::{Dataset, EpochReport, JobError, TrainInput, TrainOutput};

/// One intermediate validation.
#[derive(Debug, Clone, PartialEq)]
pub struct IntermediateDice {
    pub epoch: u32,
    pub epochs: u32,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean validation Dice over cases and foreground classes (as the reward).
    pub dice: f64,
    /// Mean over cases of each foreground class's Dice.
    pub per_class: Vec<f64>,
    /// Wall seconds since training started, this validation included.
    pub train_seconds: f64,
    /// Wall seconds of this validation.
    pub validation_seconds: f64,
}

/// What [`train_validated`] validates, where it reports, and when it stops.
pub struct Validation<'a> {
    pub plan: &'a ValidationPlan,
    /// Set (by anyone) to stop at the next step boundary.
    pub stop: &'a AtomicBool,
    pub on_report: &'a mut dyn FnMut(IntermediateDice),
}

impl Validation<'_> {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Scores the weights after `epoch` when the plan asks for it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_epoch(
        &mut self,
        trainer: &SegTrainer,
        data: &Dataset,
        training: &TrainingConfig,
        device: &Device,
        epoch: u32,
        step: u64,
        started: Instant,
    ) -> Result<(), JobError> {
        if !self.plan.epochs.contains(&epoch) || epoch >= training.epochs {
            return Ok(());
        }
        let t = Instant::now();
        let snapshot = trainer
            .save_checkpoint()
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let scored = TrainingConfig {
            overlap: self.plan.overlap,
            ..training.clone()
        };
        let eval = crate::evaluate(data, &scored, &snapshot, device)?;
        (self.on_report)(IntermediateDice {
            epoch,
            epochs: training.epochs,
            step,
            dice: eval.mean,
            per_class: eval.per_class,
            train_seconds: started.elapsed().as_secs_f64(),
            validation_seconds: t.elapsed().as_secs_f64(),
        });
        Ok(())
    }
}

/// [`crate::train`] with intermediate validations and an early stop: with `validation`, the
/// weights are scored after each of the plan's epochs (reported through `on_report`), and the
/// run ends at the first step boundary after `stop` is set, with
/// [`TrainOutput::stopped_after`] = the epochs completed and the checkpoint of the weights
/// reached. Blocking.
pub fn train_validated(
    input: &TrainInput<'_>,
    device: &Device,
    cancel: &AtomicBool,
    validation: Option<Validation<'_>>,
    on_epoch: impl FnMut(EpochReport),
) -> Result<TrainOutput, JobError> {
    crate::train_inner(input, device, cancel, validation, on_epoch)
}
