//! `segtune train` and `segtune eval`: one job without the bus, for trying a strategy.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use anyhow::Context as _;
use clap::Args;
use protocol::{Strategy, TrainingConfig};

#[derive(Debug, Args)]
pub struct NetArgs {
    /// U-Net channels per level (default: 16,32,64, see "Defaults" in the README).
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<usize>>,
    /// Patch (and sliding window) edge in voxels, or x,y,z (train default: from the
    /// dataset's median case extent, see "Defaults" in the README; eval default: 32).
    #[arg(long, value_delimiter = ',')]
    pub patch: Option<Vec<usize>>,
    /// Sliding-window overlap at validation.
    #[arg(long, default_value_t = 0.25)]
    pub overlap: f64,
}

impl NetArgs {
    fn channels(&self) -> Vec<usize> {
        self.channels
            .clone()
            .unwrap_or_else(|| engine::defaults::DEFAULT_CHANNELS.to_vec())
    }

    fn patch(&self) -> anyhow::Result<Option<[usize; 3]>> {
        match self.patch.as_deref() {
            None => Ok(None),
            Some([p]) => Ok(Some([*p; 3])),
            Some([x, y, z]) => Ok(Some([*x, *y, *z])),
            Some(p) => anyhow::bail!("--patch {p:?}: expected one value or x,y,z"),
        }
    }
}

/// The loss of `segtune train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loss {
    /// Soft Dice alone (the paper's).
    Dice,
    /// Soft Dice plus cross-entropy (nnU-Net's; the default).
    DiceCe,
}

/// The learning-rate schedule of `segtune train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// nnU-Net's polynomial decay, `lr · (1 − epoch/epochs)^0.9` (the default).
    Poly,
    /// The strategy's learning rate throughout (as study jobs train by default).
    Constant,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Preprocessed dataset id (`segtune data preprocess` prints it).
    #[arg(long)]
    pub dataset: String,
    /// `default` (learning rate 3e-3; mirroring, shifts, scaling and smoothing at 0.5),
    /// `routine` (the paper's routine strategy: every probability 0.5, learning rate 1e-4),
    /// or a strategy file (TOML: `name = value` per dimension, e.g. a study's best.toml).
    #[arg(long, default_value = "default")]
    pub strategy: String,
    /// Epochs (default: 60).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Patches per epoch (default: as many patch voxels as the training cases hold, at
    /// least 16).
    #[arg(long)]
    pub patches_per_epoch: Option<u32>,
    #[arg(long, default_value_t = 2)]
    pub batch: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "dice-ce")]
    pub loss: Loss,
    #[arg(long, value_enum, default_value = "poly")]
    pub lr_schedule: Schedule,
    /// Validate without mirror test-time augmentation (by default the Dice is measured on
    /// the mean of the 8 mirrorings of each validation case, as nnU-Net validates; 8x the
    /// validation time). The bundle records it, and `segtune predict` follows it.
    #[arg(long)]
    pub no_tta: bool,
    /// Fine-tune from this checkpoint (a file written by `segtune train`).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Where to write the checkpoint (safetensors; the network settings go next to it as
    /// `<out>.json`).
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Also write a model bundle into this folder (weights, network, preprocessing, labels,
    /// validation Dice): what `segtune predict --model` reads.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Threads that sample and augment patches while the device trains (default: the cores
    /// available).
    #[arg(long, env = "SEGTUNE_AUGMENT_WORKERS")]
    pub augment_workers: Option<usize>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub dataset: String,
    /// Checkpoint written by `segtune train` (its `<checkpoint>.json` gives the network).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    /// Average the 8 mirrorings of each validation case (default: as the checkpoint's
    /// training validated, from `<checkpoint>.json`).
    #[arg(long, conflicts_with = "no_tta")]
    pub tta: bool,
    /// Score each validation case as it is, without mirroring.
    #[arg(long)]
    pub no_tta: bool,
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cpu")]
    pub device: String,
}

/// Reads a strategy file: a TOML table of `dimension = value` (real units).
pub fn load_strategy(path: &Path) -> anyhow::Result<Strategy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read strategy file {}", path.display()))?;
    // One line naming the file, the line and what is wrong there (toml's own rendering spans
    // several lines, with a caret under the value).
    let values: BTreeMap<String, f64> = toml::from_str(&text).map_err(|e| {
        let at = match e.span() {
            Some(s) => {
                let line = text[..s.start].matches('\n').count() + 1;
                let src = text.lines().nth(line - 1).unwrap_or_default().trim();
                format!(" line {line} ({src})")
            }
            None => String::new(),
        };
        anyhow::anyhow!(
            "{}:{at}: {}; expected `name = number` lines, e.g. `p_noise = 0.3`",
            path.display(),
            e.message().trim()
        )
    })?;
    let s = Strategy {
        values,
        unit: BTreeMap::new(),
    };
    engine::JobSpec::from_strategy(&s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(s)
}

/// `default`, `routine` or a strategy file.
pub fn resolve_strategy(name: &str) -> anyhow::Result<Strategy> {
    match name {
        "default" => Ok(engine::defaults::default_strategy()),
        "routine" => Ok(protocol::strategy::routine_strategy()),
        path => load_strategy(Path::new(path)),
    }
}

pub async fn train(a: TrainArgs) -> anyhow::Result<()> {
    segmodel::init_compute_threads();
    let strategy = resolve_strategy(&a.strategy)?;
    let spec = engine::JobSpec::from_strategy(&strategy)?;
    let augment_workers = engine::augment_workers(a.augment_workers).map_err(anyhow::Error::msg)?;
    let patch = a.net.patch()?;
    let init = match &a.init {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read checkpoint {}", p.display()))?,
        ),
        None => None,
    };
    let store = storage::open(&a.store)?;
    let device = engine::device(&a.device)?;
    let data = engine::Dataset::load(&store, &a.dataset).await?;
    let defaults = engine::defaults::default_training(&data.manifest);
    let patch = patch.unwrap_or(defaults.patch);
    let training = TrainingConfig {
        channels: a.net.channels(),
        epochs: a.epochs.unwrap_or(defaults.epochs),
        patches_per_epoch: a.patches_per_epoch.unwrap_or_else(|| {
            engine::defaults::default_patches_per_epoch(&data.manifest, patch, a.batch)
        }),
        batch_size: a.batch,
        patch,
        overlap: a.net.overlap,
        init_checkpoint: None,
        dice_ce: a.loss == Loss::DiceCe,
        lr_schedule: match a.lr_schedule {
            Schedule::Poly => protocol::LrSchedule::Poly,
            Schedule::Constant => protocol::LrSchedule::Constant,
        },
        tta: !a.no_tta,
    };
    eprintln!(
        "training on {} ({} train cases), strategy {:?}",
        a.dataset,
        data.train.len(),
        strategy.values
    );
    eprintln!(
        "budget: {} epochs x {} patches of {:?} in batches of {}, U-Net {:?}, loss {}, \
         learning-rate schedule {}, validation {}",
        training.epochs,
        training.patches_per_epoch,
        training.patch,
        training.batch_size,
        training.channels,
        if training.dice_ce {
            "Dice + CE"
        } else {
            "Dice"
        },
        match training.lr_schedule {
            protocol::LrSchedule::Poly => "poly",
            protocol::LrSchedule::Constant => "constant",
        },
        if training.tta {
            "mirrored (8 passes)"
        } else {
            "unmirrored"
        }
    );
    let t2 = training.clone();
    let s2 = strategy.clone();
    let bundle_dir = a.bundle.clone();
    let seed = a.seed;
    let (out, bundle) = tokio::task::spawn_blocking(move || {
        let input = engine::TrainInput {
            data: &data,
            job: &spec,
            training: &t2,
            seed,
            init_checkpoint: init.as_deref(),
            augment_workers,
            all_cases: false,
        };
        let out = engine::train(&input, &device, &AtomicBool::new(false), |r| {
            eprintln!(
                "epoch {}/{}  loss {:.4}  {:.1} patches/s  data wait {:.0}%",
                r.epoch,
                r.epochs,
                r.loss,
                r.patches_per_sec,
                100.0 * r.data_wait_fraction
            )
        })?;
        let bundle = match bundle_dir {
            None => None,
            Some(_) => {
                let dice = if data.validation.is_empty() {
                    None
                } else {
                    let ev = engine::evaluate(&data, &t2, &out.checkpoint, &device)?;
                    eprintln!("validation mean Dice {:.4} ({:.1} s)", ev.mean, ev.seconds);
                    Some(ev.mean)
                };
                Some(engine::bundle::Bundle::new(
                    &data,
                    out.checkpoint.clone(),
                    &engine::bundle::BundleSource {
                        study: None,
                        job_id: None,
                        strategy: &s2,
                        training: &t2,
                        seed,
                        all_cases: false,
                        validation_dice: dice,
                    },
                ))
            }
        };
        Ok::<_, engine::JobError>((out, bundle))
    })
    .await??;
    std::fs::write(&a.out, &out.checkpoint)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    std::fs::write(sidecar(&a.out), serde_json::to_vec_pretty(&training)?)?;
    if let (Some(dir), Some(bundle)) = (&a.bundle, bundle) {
        bundle.write_dir(dir)?;
        eprintln!("bundle written to {}", dir.display());
    }
    eprintln!(
        "trained in {:.1} s, final loss {:.4}",
        out.seconds, out.final_loss
    );
    println!("{}", a.out.display());
    Ok(())
}

fn sidecar(ckpt: &Path) -> PathBuf {
    let mut s = ckpt.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

pub async fn eval(a: EvalArgs) -> anyhow::Result<()> {
    segmodel::init_compute_threads();
    let ckpt = std::fs::read(&a.checkpoint)
        .with_context(|| format!("cannot read checkpoint {}", a.checkpoint.display()))?;
    let mut training: TrainingConfig = match std::fs::read(sidecar(&a.checkpoint)) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}", sidecar(&a.checkpoint).display()))?,
        Err(_) => TrainingConfig {
            channels: a.net.channels(),
            patch: a.net.patch()?.unwrap_or([32; 3]),
            overlap: a.net.overlap,
            ..TrainingConfig::default()
        },
    };
    if let Some(tta) = crate::predict::tta_choice(a.tta, a.no_tta) {
        training.tta = tta;
    }
    let store = storage::open(&a.store)?;
    let device = engine::device(&a.device)?;
    let data = engine::Dataset::load(&store, &a.dataset).await?;
    let ev =
        tokio::task::spawn_blocking(move || engine::evaluate(&data, &training, &ckpt, &device))
            .await??;
    for c in &ev.per_case {
        eprintln!(
            "{:20} dice {:.4}  per class {:?}",
            c.case, c.mean, c.per_class
        );
    }
    eprintln!(
        "per class {:?}; mean {:.4} before post-processing, {} voxel(s) relabelled ({:.1} s)",
        ev.per_class, ev.raw_mean, ev.postprocessed_voxels, ev.seconds
    );
    println!("{:.6}", ev.mean);
    Ok(())
}
