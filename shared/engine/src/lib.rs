//! One training job and one evaluation: the whole engine behind the trainer service, the
//! evaluator service and `segtune train` / `segtune eval`.
//!
//! - [`Dataset::load_with`] reads a preprocessed dataset's manifest and holds its cases in
//!   memory (small datasets) or mapped from the host's case cache (the `cache` crate), by its
//!   decoded size against a memory budget; [`DatasetCache`] keeps the latest one for the next
//!   jobs of the same dataset.
//! - [`JobSpec::from_strategy`] turns a strategy into the learning rate and augmentation
//!   pipeline, refusing values outside [0, 1] or unknown dimensions.
//! - [`train`] runs the epochs (augmentation on a pool of producer threads, overlapped with
//!   the step), reports each epoch (with the share of its time spent waiting for data),
//!   honours cancellation and returns the checkpoint bytes.
//! - [`evaluate`] runs sliding-window inference over the validation cases and returns the
//!   Dice per case and class and their mean (the reward).
//! - [`intermediate`]: [`train_validated`] is [`train`] that also scores its weights with
//!   [`evaluate`] at the epochs of a `ValidationPlan` and stops at a step boundary when told
//!   (a pruned job), returning the checkpoint it has.

pub mod intermediate;

pub use intermediate::{IntermediateDice, Validation, train_validated};

pub mod bundle;
pub mod defaults;
pub mod predict;

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use augment::{Magnitudes, PatchSampler, Pipeline};
use protocol::{
    CaseDice, Manifest, Strategy, TrainingConfig,
    strategy::{LEARNING_RATE, MAGNITUDE_PREFIX, PROBABILITY_PREFIX, ROUTINE_LEARNING_RATE},
};
use segmodel::{
    DiceLossConfig, SegTrainer, TrainConfig, UNetConfig,
    candle_core::{DType, Device, Tensor},
    infer::{SlidingWindow, dice_per_class, sliding_window_predict},
};
use storage::DynStore;
use volume::Volume;

/// Why a job did not finish. Permanent errors will fail again on any replica (dead-letter
/// them); transient ones may succeed later (retry).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Transient(String),
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    fn permanent(e: impl std::fmt::Display) -> Self {
        JobError::Permanent(e.to_string())
    }
}

/// A case of a dataset: decoded in memory (a small dataset) or mapped from the host's case
/// cache (read by region; see the `cache` crate).
#[derive(Clone)]
pub struct CaseData {
    pub id: String,
    held: Held,
}

#[derive(Clone)]
enum Held {
    Memory {
        image: Arc<Volume<f32>>,
        label: Arc<Volume<u8>>,
        /// Built once when the case is loaded, not at every job.
        index: Arc<augment::CaseIndex>,
    },
    Mapped(Arc<cache::MappedCase>),
}

impl CaseData {
    /// A case held in memory (its foreground indexed here, once).
    pub fn in_memory(id: String, image: Volume<f32>, label: Volume<u8>) -> Self {
        CaseData {
            id,
            held: Held::Memory {
                index: Arc::new(augment::CaseIndex::new(&label)),
                image: Arc::new(image),
                label: Arc::new(label),
            },
        }
    }

    /// A case mapped from the case cache.
    pub fn mapped(case: cache::MappedCase) -> Self {
        CaseData {
            id: case.id().to_string(),
            held: Held::Mapped(Arc::new(case)),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.held, Held::Mapped(_))
    }

    /// Voxels along x, y, z.
    pub fn dims(&self) -> [usize; 3] {
        match &self.held {
            Held::Memory { image, .. } => image.dims,
            Held::Mapped(m) => augment::TrainingCase::dims(&**m),
        }
    }

    pub fn channels(&self) -> usize {
        match &self.held {
            Held::Memory { image, .. } => image.channels,
            Held::Mapped(m) => augment::TrainingCase::channels(&**m),
        }
    }

    /// The image as a volume: borrowed in memory, copied out of the map when mapped (one
    /// case at a time, as the sliding window reads it).
    pub fn image(&self) -> std::borrow::Cow<'_, Volume<f32>> {
        match &self.held {
            Held::Memory { image, .. } => std::borrow::Cow::Borrowed(&**image),
            Held::Mapped(m) => std::borrow::Cow::Owned(m.image_volume()),
        }
    }

    /// The label as a volume, like [`CaseData::image`].
    pub fn label(&self) -> std::borrow::Cow<'_, Volume<u8>> {
        match &self.held {
            Held::Memory { label, .. } => std::borrow::Cow::Borrowed(&**label),
            Held::Mapped(m) => std::borrow::Cow::Owned(m.label_volume()),
        }
    }

    /// The label's voxels without a copy (pages of a mapped case are read as they are
    /// touched; [`CaseData::release`] lets go of them).
    pub fn label_slice(&self) -> &[u8] {
        match &self.held {
            Held::Memory { label, .. } => label.channel(0),
            Held::Mapped(m) => augment::TrainingCase::label(&**m),
        }
    }

    /// A mapped case drops this process's mapping of the pages read so far (they stay in the
    /// page cache); nothing for a case in memory.
    pub fn release(&self) {
        if let Held::Mapped(m) = &self.held {
            m.release();
        }
    }

    /// The case as the patch sampler reads it (an in-memory case indexed at load; a mapped
    /// case carries the index its cache file stores).
    fn training_case(&self) -> TrainCase {
        match &self.held {
            Held::Memory {
                image,
                label,
                index,
            } => TrainCase::Memory {
                index: index.clone(),
                image: image.clone(),
                label: label.clone(),
            },
            Held::Mapped(m) => TrainCase::Mapped(m.clone()),
        }
    }
}

/// A case as the augmentation producer samples it ([`Dataset::training_cases`]).
pub enum TrainCase {
    Memory {
        image: Arc<Volume<f32>>,
        label: Arc<Volume<u8>>,
        index: Arc<augment::CaseIndex>,
    },
    Mapped(Arc<cache::MappedCase>),
}

impl augment::TrainingCase for TrainCase {
    fn dims(&self) -> [usize; 3] {
        match self {
            TrainCase::Memory { image, .. } => image.dims,
            TrainCase::Mapped(m) => m.dims(),
        }
    }
    fn channels(&self) -> usize {
        match self {
            TrainCase::Memory { image, .. } => image.channels,
            TrainCase::Mapped(m) => m.channels(),
        }
    }
    fn image_channel(&self, c: usize) -> &[f32] {
        match self {
            TrainCase::Memory { image, .. } => image.channel(c),
            TrainCase::Mapped(m) => m.image_channel(c),
        }
    }
    fn label(&self) -> &[u8] {
        match self {
            TrainCase::Memory { label, .. } => label.channel(0),
            TrainCase::Mapped(m) => m.label(),
        }
    }
    fn index(&self) -> &augment::CaseIndex {
        match self {
            TrainCase::Memory { index, .. } => index,
            TrainCase::Mapped(m) => m.index(),
        }
    }
    fn channel_min(&self, c: usize) -> f32 {
        match self {
            TrainCase::Memory { image, .. } => image
                .channel(c)
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min),
            TrainCase::Mapped(m) => m.channel_min(c),
        }
    }
    fn patch_read(&self) {
        if let TrainCase::Mapped(m) = self {
            m.patch_read();
        }
    }
    fn check(&self) -> Result<(), String> {
        match self {
            TrainCase::Memory {
                image,
                label,
                index,
            } => augment::VolumeCase {
                image,
                label,
                index,
            }
            .check(),
            TrainCase::Mapped(m) => m.check(),
        }
    }
}

/// How a process holds datasets: in memory when a dataset is small, else mapped from the
/// host's case cache.
#[derive(Clone, Default)]
pub struct DataOptions {
    /// The host's case cache; `None`: every dataset is read into memory (the CLI's
    /// `train`/`eval` on small data, the tests).
    pub cache: Option<Arc<cache::CaseCache>>,
    /// Datasets whose decoded size (image f32 + label u8, from the manifest) is at most this
    /// many bytes are held in memory even with a cache; larger ones are mapped.
    pub memory_budget: u64,
}

impl DataOptions {
    /// The case cache at `dir` bounded by `max_bytes`; datasets above `memory_budget`
    /// decoded bytes are mapped from it.
    pub fn with_cache(
        dir: impl Into<std::path::PathBuf>,
        max_bytes: u64,
        memory_budget: u64,
    ) -> Self {
        DataOptions {
            cache: Some(cache::CaseCache::new(dir, max_bytes)),
            memory_budget,
        }
    }
}

pub use cache;

/// How a dataset is held ([`Dataset::load_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    Memory,
    Mapped,
}

/// A preprocessed dataset: its manifest and cases, in memory or mapped.
pub struct Dataset {
    pub manifest: Manifest,
    pub train: Vec<CaseData>,
    pub validation: Vec<CaseData>,
}

impl Dataset {
    /// Reads the manifest and every case of `dataset_id` into memory.
    pub async fn load(store: &DynStore, dataset_id: &str) -> Result<Dataset, JobError> {
        Self::load_with(store, dataset_id, &DataOptions::default()).await
    }

    /// The decoded bytes of a dataset (image f32 and label u8 of every case), from its
    /// manifest.
    pub fn decoded_bytes(manifest: &Manifest) -> u64 {
        manifest
            .cases
            .iter()
            .map(|c| (c.shape.iter().product::<usize>() * (4 * c.channels + 1)) as u64)
            .sum()
    }

    /// Where a dataset of this manifest is held under `opts`: in memory without a cache or
    /// when it fits the memory budget; mapped otherwise.
    pub fn residence(manifest: &Manifest, opts: &DataOptions) -> Residence {
        match &opts.cache {
            Some(_) if Self::decoded_bytes(manifest) > opts.memory_budget => Residence::Mapped,
            _ => Residence::Memory,
        }
    }

    /// Reads the manifest, then holds every case in memory or mapped from the case cache
    /// ([`Dataset::residence`]; the choice is logged).
    pub async fn load_with(
        store: &DynStore,
        dataset_id: &str,
        opts: &DataOptions,
    ) -> Result<Dataset, JobError> {
        let manifest = dataprep::load_manifest(store, dataset_id)
            .await
            .map_err(|e| {
                if matches!(&e, dataprep::ManifestError::Store { source, .. } if source.is_transient()) {
                    JobError::Transient(e.to_string())
                } else {
                    JobError::Permanent(e.to_string())
                }
            })?;
        let residence = Self::residence(&manifest, opts);
        let bytes = Self::decoded_bytes(&manifest);
        tracing::info!(
            dataset = dataset_id,
            decoded_bytes = bytes,
            memory_budget = opts.memory_budget,
            residence = ?residence,
            "{}",
            match residence {
                Residence::Memory if opts.cache.is_none() => "dataset held in memory (no case cache)",
                Residence::Memory => "dataset held in memory (within the memory budget)",
                Residence::Mapped => "dataset mapped from the case cache (larger than the memory budget)",
            }
        );
        let mut train = Vec::new();
        let mut validation = Vec::new();
        for case in &manifest.cases {
            let data = match (&opts.cache, residence) {
                (Some(cache), Residence::Mapped) => {
                    let mapped = cache
                        .get(store, dataset_id, case)
                        .await
                        .map_err(|e| cache_error(e, bytes, cache))?;
                    CaseData::mapped(mapped)
                }
                _ => {
                    let image = read_case(store, &case.image_key).await?;
                    let label = read_case(store, &case.label_key).await?.map(|v| v as u8);
                    CaseData::in_memory(case.id.clone(), image, label)
                }
            };
            match case.split {
                protocol::Split::Train => train.push(data),
                protocol::Split::Validation => validation.push(data),
            }
        }
        if train.is_empty() {
            return Err(JobError::Permanent(format!(
                "dataset {dataset_id} has no training cases"
            )));
        }
        Ok(Dataset {
            manifest,
            train,
            validation,
        })
    }

    pub fn channels(&self) -> usize {
        self.train[0].channels()
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.num_classes()
    }

    /// True when the cases are mapped from the case cache.
    pub fn is_mapped(&self) -> bool {
        self.train[0].is_mapped()
    }

    /// The cases a job samples patches from (the training cases, and the validation ones
    /// too with `all_cases`), for [`augment::spawn_producer_with`].
    pub fn training_cases(&self, all_cases: bool) -> Vec<TrainCase> {
        let held_out: &[CaseData] = if all_cases { &self.validation } else { &[] };
        self.train
            .iter()
            .chain(held_out)
            .map(CaseData::training_case)
            .collect()
    }
}

/// A full cache is transient while other jobs hold it, permanent when this dataset alone
/// does not fit the bound (every case of a job stays mapped while it runs).
fn cache_error(e: cache::CacheError, dataset_bytes: u64, cache: &cache::CaseCache) -> JobError {
    match e {
        cache::CacheError::Full { .. } if dataset_bytes > cache.max_bytes() => {
            JobError::Permanent(format!(
                "{e}; this dataset alone needs about {dataset_bytes} bytes: raise \
                 SEGTUNE_CACHE_MAX_BYTES"
            ))
        }
        e if e.is_transient() => JobError::Transient(e.to_string()),
        e => JobError::Permanent(e.to_string()),
    }
}

async fn read_case(store: &DynStore, key: &str) -> Result<Volume<f32>, JobError> {
    let bytes = storage::get(store, key).await.map_err(|e| {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    })?;
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        volume::read_nifti_bytes(&bytes, &key, &volume::ReadLimits::default())
            .map(|i| i.volume)
            .map_err(JobError::permanent)
    })
    .await
    .map_err(|e| JobError::Transient(e.to_string()))?
}

/// The dataset a process holds, by id. Jobs run one at a time, so only the latest dataset is
/// kept: the next job of the same dataset reuses it, a job of another dataset drops it (and
/// with it the pins on its mapped cases, which the case cache may then evict).
#[derive(Default, Clone)]
pub struct DatasetCache {
    map: Arc<tokio::sync::Mutex<HashMap<String, Arc<Dataset>>>>,
    options: DataOptions,
}

impl DatasetCache {
    /// Datasets held as `options` says (in memory or mapped).
    pub fn new(options: DataOptions) -> Self {
        DatasetCache {
            map: Default::default(),
            options,
        }
    }

    pub fn options(&self) -> &DataOptions {
        &self.options
    }

    pub async fn get(&self, store: &DynStore, dataset_id: &str) -> Result<Arc<Dataset>, JobError> {
        let mut map = self.map.lock().await;
        if let Some(d) = map.get(dataset_id) {
            return Ok(d.clone());
        }
        map.clear();
        let d = Arc::new(Dataset::load_with(store, dataset_id, &self.options).await?);
        map.insert(dataset_id.to_string(), d.clone());
        Ok(d)
    }
}

/// A strategy decoded into what training needs.
pub struct JobSpec {
    pub lr: f64,
    pub pipeline: Pipeline,
}

impl JobSpec {
    /// Every `p_*` value must be a known augmentation and lie in [0, 1], every `m_*` a known
    /// augmentation magnitude in its domain; `learning_rate` must be positive and finite
    /// (default: the routine 1e-4); anything else is an error.
    pub fn from_strategy(strategy: &Strategy) -> Result<JobSpec, JobError> {
        let mut lr = ROUTINE_LEARNING_RATE;
        for (name, &v) in &strategy.values {
            if name == LEARNING_RATE {
                if !v.is_finite() || v <= 0.0 || v > 1.0 {
                    return Err(JobError::Permanent(format!(
                        "strategy: learning_rate = {v}, expected a value in (0, 1]"
                    )));
                }
                lr = v;
            } else if !name.starts_with(PROBABILITY_PREFIX) && !name.starts_with(MAGNITUDE_PREFIX) {
                return Err(JobError::Permanent(format!(
                    "strategy: unknown dimension {name:?} (known: learning_rate, the \
                     augmentation probabilities p_* and magnitudes m_*)"
                )));
            }
        }
        let pipeline = Pipeline::from_strategy(&strategy.values, Magnitudes::default())
            .map_err(|e| JobError::Permanent(format!("strategy: {e}")))?;
        Ok(JobSpec { lr, pipeline })
    }
}

/// The network of a study for a dataset.
pub fn unet_config(training: &TrainingConfig, channels: usize, classes: usize) -> UNetConfig {
    UNetConfig {
        in_channels: channels,
        num_classes: classes,
        channels: training.channels.clone(),
        ..UNetConfig::default()
    }
}

/// What [`train`] reports after each epoch.
#[derive(Debug, Clone, Copy)]
pub struct EpochReport {
    pub epoch: u32,
    pub epochs: u32,
    pub loss: f64,
    pub patches_per_sec: f64,
    /// Share of the epoch's wall time the training loop spent waiting for the next batch
    /// from the augmentation workers (0: the device never waited; near 1: data-bound).
    pub data_wait_fraction: f64,
}

pub struct TrainOutput {
    /// safetensors bytes.
    pub checkpoint: Vec<u8>,
    pub final_loss: f64,
    pub seconds: f64,
    /// `Some(epochs done)` when [`train_validated`] was told to stop before the end.
    pub stopped_after: Option<u32>,
}

/// Everything one training run needs besides the device.
pub struct TrainInput<'a> {
    pub data: &'a Dataset,
    pub job: &'a JobSpec,
    pub training: &'a TrainingConfig,
    /// Seeds initialization, patch sampling and augmentation.
    pub seed: u64,
    /// safetensors bytes to fine-tune from.
    pub init_checkpoint: Option<&'a [u8]>,
    /// Threads that sample and augment patches; `None`: [`augment::default_workers`] (the
    /// cores available to the process). The batches do not depend on it.
    pub augment_workers: Option<NonZeroUsize>,
    /// Train on the validation cases too (a final model; nothing is held out).
    pub all_cases: bool,
}

/// Trains one model. Blocking (call it from a blocking thread); `cancel` stops it between
/// steps with [`JobError::Cancelled`].
pub fn train(
    input: &TrainInput<'_>,
    device: &Device,
    cancel: &AtomicBool,
    on_epoch: impl FnMut(EpochReport),
) -> Result<TrainOutput, JobError> {
    train_validated(input, device, cancel, None, on_epoch)
}

/// [`train`], and with `validation` the intermediate scores and the early stop
/// ([`intermediate`]).
fn train_inner(
    input: &TrainInput<'_>,
    device: &Device,
    cancel: &AtomicBool,
    mut validation: Option<Validation<'_>>,
    mut on_epoch: impl FnMut(EpochReport),
) -> Result<TrainOutput, JobError> {
    let TrainInput {
        data,
        job,
        training,
        seed,
        init_checkpoint,
        augment_workers,
        all_cases,
    } = *input;
    let started = Instant::now();
    check_training(training)?;
    let unet = unet_config(training, data.channels(), data.num_classes());
    let cfg = TrainConfig {
        lr: job.lr,
        weight_decay: 0.0,
        loss: DiceLossConfig {
            ce_weight: if training.dice_ce { 1.0 } else { 0.0 },
            ..DiceLossConfig::default()
        },
    };
    let mut trainer = SegTrainer::new(&unet, cfg, seed, device).map_err(JobError::permanent)?;
    if let Some(bytes) = init_checkpoint {
        trainer
            .load_checkpoint(bytes)
            .map_err(|e| JobError::Permanent(format!("init checkpoint: {e}")))?;
    }
    let batch = training.batch_size as usize;
    let steps_per_epoch = (training.patches_per_epoch as usize).div_ceil(batch).max(1);
    let epochs = training.epochs;
    let cases = data.training_cases(all_cases);
    let sampler = PatchSampler::new(training.patch, 1.0 / 3.0).map_err(JobError::permanent)?;
    let producer = augment::ProducerOptions {
        workers: augment_workers.unwrap_or_else(augment::default_workers),
        ..Default::default()
    };
    let rx = augment::spawn_producer_with(
        Arc::new(cases),
        sampler,
        job.pipeline.clone(),
        batch,
        steps_per_epoch * epochs as usize,
        seed,
        producer,
    )
    .map_err(JobError::permanent)?;
    let mut final_loss = f64::NAN;
    let mut stopped_after = None;
    'epochs: for epoch in 1..=epochs {
        trainer.set_learning_rate(training.lr_schedule.rate(job.lr, epoch, epochs));
        let t = Instant::now();
        let mut sum = 0.0;
        let mut waited = Duration::ZERO;
        for _ in 0..steps_per_epoch {
            if cancel.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            if validation.as_ref().is_some_and(Validation::stopped) {
                stopped_after = Some(epoch - 1);
                break 'epochs;
            }
            let asked = Instant::now();
            let b = rx
                .recv()
                .map_err(|_| JobError::Transient("augmentation threads stopped".into()))?;
            waited += asked.elapsed();
            let [x, y, z] = b.dims;
            let images = Tensor::from_vec(b.image, (b.batch, b.channels, z, y, x), device)
                .map_err(JobError::permanent)?;
            let labels = Tensor::from_vec(b.label, (b.batch, z, y, x), device)
                .and_then(|t| t.to_dtype(DType::U32))
                .map_err(JobError::permanent)?;
            let loss = trainer
                .step(&images, &labels)
                .map_err(JobError::permanent)?;
            if !loss.is_finite() {
                return Err(JobError::Permanent(format!(
                    "training diverged: loss {loss} at epoch {epoch} (learning rate {})",
                    job.lr
                )));
            }
            sum += loss as f64;
        }
        final_loss = sum / steps_per_epoch as f64;
        let seconds = t.elapsed().as_secs_f64();
        on_epoch(EpochReport {
            epoch,
            epochs,
            loss: final_loss,
            patches_per_sec: (steps_per_epoch * batch) as f64 / seconds,
            data_wait_fraction: (waited.as_secs_f64() / seconds).clamp(0.0, 1.0),
        });
        if let Some(v) = validation.as_mut() {
            let step = (epoch as usize * steps_per_epoch) as u64;
            v.after_epoch(&trainer, data, training, device, epoch, step, started)?;
        }
    }
    let checkpoint = trainer.save_checkpoint().map_err(JobError::permanent)?;
    Ok(TrainOutput {
        checkpoint,
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
        stopped_after,
    })
}

fn check_training(t: &TrainingConfig) -> Result<(), JobError> {
    let bad = |m: String| Err(JobError::Permanent(format!("training config: {m}")));
    if t.channels.is_empty() || t.channels.contains(&0) {
        return bad(format!(
            "channels {:?}, expected positive sizes",
            t.channels
        ));
    }
    let multiple = 1usize << (t.channels.len() - 1);
    if t.patch.iter().any(|&p| p == 0 || p % multiple != 0) {
        return bad(format!(
            "patch {:?} must be a positive multiple of {multiple} for a {}-level U-Net",
            t.patch,
            t.channels.len()
        ));
    }
    if t.batch_size == 0 || t.epochs == 0 || t.patches_per_epoch == 0 {
        return bad("batch_size, epochs and patches_per_epoch must be positive".into());
    }
    if !(0.0..1.0).contains(&t.overlap) {
        return bad(format!("overlap {}, expected a value in [0, 1)", t.overlap));
    }
    Ok(())
}

/// The validation result of one model.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub per_case: Vec<CaseDice>,
    /// Mean over cases of each foreground class's Dice.
    pub per_class: Vec<f64>,
    /// Mean over cases and foreground classes: the reward.
    pub mean: f64,
    /// The same mean before post-processing (small components removed), for comparison.
    pub raw_mean: f64,
    /// Voxels relabelled by post-processing, over all validation cases.
    pub postprocessed_voxels: usize,
    pub seconds: f64,
}

/// Sliding-window validation of a checkpoint (with `training.tta`, the mean over the 8
/// mirrorings of each case, as [`predict::mirrored_probs`]). Blocking.
pub fn evaluate(
    data: &Dataset,
    training: &TrainingConfig,
    checkpoint: &[u8],
    device: &Device,
) -> Result<Evaluation, JobError> {
    let started = Instant::now();
    check_training(training)?;
    if data.validation.is_empty() {
        return Err(JobError::Permanent(format!(
            "dataset {} has no validation cases",
            data.manifest.dataset_id
        )));
    }
    let k = data.num_classes();
    let unet = unet_config(training, data.channels(), k);
    let model = segmodel::inference_unet(&unet, checkpoint, device)
        .map_err(|e| JobError::Permanent(format!("checkpoint: {e}")))?;
    let sw = SlidingWindow {
        window: training.patch,
        overlap: training.overlap,
        batch: 2,
        ops: unet.ops,
    };
    // Components smaller than half the smallest one of their class in the training labels
    // are noise, not structures (segmodel::postprocess).
    let min_sizes = bundle::min_component_sizes(data);
    let mut per_case = Vec::new();
    let mut raw_sum = 0.0;
    let mut postprocessed_voxels = 0;
    for case in &data.validation {
        // One case at a time: a mapped case is copied out here and dropped after scoring.
        let image = case.image();
        let mut pred = if training.tta {
            let probs = predict::mirrored_probs(&model, &image, &sw, device, true, &mut |_, _| {})
                .map_err(JobError::permanent)?;
            let labels = predict::argmax(&probs, image.voxels(), k);
            Volume::new(labels, image.dims, 1, image.geometry)
        } else {
            sliding_window_predict(&model, &image, &sw, device).map_err(JobError::permanent)?
        };
        drop(image);
        let label = case.label();
        let raw = dice_per_class(&pred.data, &label.data, k);
        raw_sum += raw.iter().sum::<f64>() / raw.len().max(1) as f64;
        postprocessed_voxels +=
            segmodel::postprocess::remove_small_components(&mut pred.data, pred.dims, &min_sizes);
        let d = dice_per_class(&pred.data, &label.data, k);
        let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
        per_case.push(CaseDice {
            case: case.id.clone(),
            per_class: d,
            mean,
        });
    }
    let per_class: Vec<f64> = (0..k - 1)
        .map(|c| per_case.iter().map(|p| p.per_class[c]).sum::<f64>() / per_case.len() as f64)
        .collect();
    let mean = per_case.iter().map(|p| p.mean).sum::<f64>() / per_case.len() as f64;
    Ok(Evaluation {
        raw_mean: raw_sum / per_case.len() as f64,
        postprocessed_voxels,
        per_case,
        per_class,
        mean,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The default augmentation worker count: the cores available to the process
/// ([`augment::default_workers`]).
pub fn default_augment_workers() -> NonZeroUsize {
    augment::default_workers()
}

/// The most augmentation workers [`augment_workers`] accepts: more is a typo, not a host.
pub const MAX_AUGMENT_WORKERS: usize = 1024;

/// Checks the augmentation worker count of `--augment-workers` / `SEGTUNE_AUGMENT_WORKERS`:
/// unset means [`augment::default_workers`] (`None`), a set value must be in
/// 1..=[`MAX_AUGMENT_WORKERS`]. The error names the flag and the variable.
pub fn augment_workers(value: Option<usize>) -> Result<Option<NonZeroUsize>, String> {
    match value {
        None => Ok(None),
        Some(n @ 1..=MAX_AUGMENT_WORKERS) => Ok(NonZeroUsize::new(n)),
        Some(n) => Err(format!(
            "--augment-workers (SEGTUNE_AUGMENT_WORKERS) = {n}: expected 1 to \
             {MAX_AUGMENT_WORKERS} threads (unset: the {} cores available)",
            augment::default_workers()
        )),
    }
}

/// Why `SEGTUNE_DEVICE` names no usable device; every variant carries the name as given.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("SEGTUNE_DEVICE={name:?}: expected cpu, cuda or cuda:N")]
    Unknown { name: String },
    #[error("SEGTUNE_DEVICE={name}: {source}")]
    BadOrdinal {
        name: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("SEGTUNE_DEVICE={name}: this binary was built without the `cuda` feature")]
    NoCuda { name: String },
    #[error("SEGTUNE_DEVICE={name}: {source}")]
    Cuda {
        name: String,
        #[source]
        source: segmodel::candle_core::Error,
    },
}

/// `cpu`, or `cuda` / `cuda:N` when built with the `cuda` feature.
pub fn device(name: &str) -> Result<Device, DeviceError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal: usize =
                n.strip_prefix("cuda:")
                    .unwrap_or("0")
                    .parse()
                    .map_err(|source| DeviceError::BadOrdinal {
                        name: n.to_string(),
                        source,
                    })?;
            if cfg!(feature = "cuda") {
                Device::new_cuda(ordinal).map_err(|source| DeviceError::Cuda {
                    name: n.to_string(),
                    source,
                })
            } else {
                Err(DeviceError::NoCuda {
                    name: n.to_string(),
                })
            }
        }
        n => Err(DeviceError::Unknown {
            name: n.to_string(),
        }),
    }
}

/// Checks that `name` is a device [`device`] can parse (`cpu`, `cuda`, `cuda:N`), without
/// opening it: for settings validation, before anything connects.
pub fn check_device(name: &str) -> Result<(), DeviceError> {
    match name.strip_prefix("cuda:") {
        _ if matches!(name, "cpu" | "cuda") => Ok(()),
        Some(n) => n
            .parse::<usize>()
            .map(drop)
            .map_err(|source| DeviceError::BadOrdinal {
                name: name.to_string(),
                source,
            }),
        None => Err(DeviceError::Unknown {
            name: name.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dimension of the paper's space is one a job understands: the routine strategy
    /// (all of them) trains with its learning rate and runs every augmentation at 0.5.
    #[test]
    fn a_job_takes_every_dimension_of_the_papers_space() {
        let routine = protocol::strategy::routine_strategy();
        let names: Vec<String> = protocol::strategy::paper_space()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(routine.values.keys().cloned().collect::<Vec<_>>(), {
            let mut n = names.clone();
            n.sort();
            n
        });
        let job = JobSpec::from_strategy(&routine).unwrap();
        assert_eq!(job.lr, ROUTINE_LEARNING_RATE);
        assert_eq!(job.pipeline.transforms().len(), 8);
        assert!(job.pipeline.transforms().iter().all(|t| t.p == 0.5));

        let no_lr = Strategy {
            values: [("p_noise".to_string(), 0.3)].into(),
            unit: Default::default(),
        };
        assert_eq!(JobSpec::from_strategy(&no_lr).unwrap().lr, 1e-4);
    }

    /// Every dimension of the `paper+magnitudes` space is one a job understands, and a
    /// magnitude reaches the pipeline; unknown names are still refused.
    #[test]
    fn a_job_takes_every_dimension_of_the_magnitudes_space() {
        let space = protocol::strategy::paper_magnitudes_space();
        let values: std::collections::BTreeMap<String, f64> = space
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    if d.name == LEARNING_RATE { 3e-3 } else { d.max },
                )
            })
            .collect();
        let job = JobSpec::from_strategy(&Strategy {
            values,
            unit: Default::default(),
        })
        .unwrap();
        assert_eq!(job.lr, 3e-3);
        let noise = job
            .pipeline
            .transforms()
            .iter()
            .find_map(|t| match t.inner {
                augment::Transform::Noise(n) => Some(n.std),
                _ => None,
            })
            .unwrap();
        assert_eq!(noise, [0.0, 0.3]);
        for bad in ["m_elastic", "magnitude"] {
            let err = JobSpec::from_strategy(&Strategy {
                values: [(bad.to_string(), 0.1)].into(),
                unit: Default::default(),
            })
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn augment_worker_counts_are_checked_and_errors_name_the_setting() {
        assert_eq!(augment_workers(None), Ok(None));
        assert_eq!(augment_workers(Some(3)), Ok(NonZeroUsize::new(3)));
        assert_eq!(
            augment_workers(Some(MAX_AUGMENT_WORKERS)),
            Ok(NonZeroUsize::new(MAX_AUGMENT_WORKERS))
        );
        for bad in [0, MAX_AUGMENT_WORKERS + 1] {
            let e = augment_workers(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "--augment-workers (SEGTUNE_AUGMENT_WORKERS) = {bad}: expected 1 to 1024"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn device_names_are_checked_and_errors_name_them() {
        assert!(matches!(device("cpu"), Ok(Device::Cpu)));
        let e = device("tpu").unwrap_err();
        assert!(matches!(e, DeviceError::Unknown { .. }));
        assert_eq!(
            e.to_string(),
            "SEGTUNE_DEVICE=\"tpu\": expected cpu, cuda or cuda:N"
        );
        let e = device("cuda:x").unwrap_err();
        assert!(matches!(e, DeviceError::BadOrdinal { .. }));
        assert!(e.to_string().starts_with("SEGTUNE_DEVICE=cuda:x: "), "{e}");
        if !cfg!(feature = "cuda") {
            let e = device("cuda:1").unwrap_err();
            assert!(matches!(e, DeviceError::NoCuda { .. }), "{e}");
        }
    }
}
