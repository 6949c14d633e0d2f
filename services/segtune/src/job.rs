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
    /// U-Net channels per level.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub channels: Vec<usize>,
    /// Patch (and sliding window) edge in voxels, or x,y,z.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub patch: Vec<usize>,
    /// Sliding-window overlap at validation.
    #[arg(long, default_value_t = 0.25)]
    pub overlap: f64,
}

impl NetArgs {
    fn patch(&self) -> anyhow::Result<[usize; 3]> {
        match self.patch.as_slice() {
            [p] => Ok([*p; 3]),
            [x, y, z] => Ok([*x, *y, *z]),
            p => anyhow::bail!("--patch {p:?}: expected one value or x,y,z"),
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Preprocessed dataset id (`segtune data preprocess` prints it).
    #[arg(long)]
    pub dataset: String,
    /// Strategy file (TOML: `name = value` per dimension); default: the paper's routine
    /// strategy (every probability 0.5, learning rate 1e-4).
    #[arg(long)]
    pub strategy: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub epochs: u32,
    #[arg(long, default_value_t = 16)]
    pub patches_per_epoch: u32,
    #[arg(long, default_value_t = 2)]
    pub batch: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loss: soft Dice plus cross-entropy (default: soft Dice alone, as the paper).
    #[arg(long)]
    pub dice_ce: bool,
    /// Fine-tune from this checkpoint (a file written by `segtune train`).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Where to write the checkpoint (safetensors; the network settings go next to it as
    /// `<out>.json`).
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
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

pub async fn train(a: TrainArgs) -> anyhow::Result<()> {
    segmodel::init_compute_threads();
    let strategy = match &a.strategy {
        Some(p) => load_strategy(p)?,
        None => protocol::strategy::routine_strategy(),
    };
    let spec = engine::JobSpec::from_strategy(&strategy)?;
    let augment_workers = engine::augment_workers(a.augment_workers).map_err(anyhow::Error::msg)?;
    let training = TrainingConfig {
        channels: a.net.channels.clone(),
        epochs: a.epochs,
        patches_per_epoch: a.patches_per_epoch,
        batch_size: a.batch,
        patch: a.net.patch()?,
        overlap: a.net.overlap,
        init_checkpoint: None,
        dice_ce: a.dice_ce,
    };
    let init = match &a.init {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read checkpoint {}", p.display()))?,
        ),
        None => None,
    };
    let store = storage::open(&a.store)?;
    let device = engine::device(&a.device)?;
    let data = engine::Dataset::load(&store, &a.dataset).await?;
    eprintln!(
        "training on {} ({} train cases), strategy {:?}",
        a.dataset,
        data.train.len(),
        strategy.values
    );
    let t2 = training.clone();
    let out = tokio::task::spawn_blocking(move || {
        let input = engine::TrainInput {
            data: &data,
            job: &spec,
            training: &t2,
            seed: a.seed,
            init_checkpoint: init.as_deref(),
            augment_workers,
        };
        engine::train(&input, &device, &AtomicBool::new(false), |r| {
            eprintln!(
                "epoch {}/{}  loss {:.4}  {:.1} patches/s  data wait {:.0}%",
                r.epoch,
                r.epochs,
                r.loss,
                r.patches_per_sec,
                100.0 * r.data_wait_fraction
            )
        })
    })
    .await??;
    std::fs::write(&a.out, &out.checkpoint)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    std::fs::write(sidecar(&a.out), serde_json::to_vec_pretty(&training)?)?;
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
    let training: TrainingConfig = match std::fs::read(sidecar(&a.checkpoint)) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}", sidecar(&a.checkpoint).display()))?,
        Err(_) => TrainingConfig {
            channels: a.net.channels.clone(),
            patch: a.net.patch()?,
            overlap: a.net.overlap,
            ..TrainingConfig::default()
        },
    };
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
    eprintln!("per class {:?} ({:.1} s)", ev.per_class, ev.seconds);
    println!("{:.6}", ev.mean);
    Ok(())
}
