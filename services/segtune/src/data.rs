//! `segtune data ...`

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use protocol::{DatasetSource, PercentileScope, PreprocessParams};
use volume::synth::{SynthKind, SynthSpec};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a synthetic MSD-layout task (dataset.json, imagesTr/, labelsTr/).
    Synth(SynthArgs),
    /// Preprocess an MSD task folder into the store; prints the dataset id as its last line.
    Preprocess(PreprocessArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// CT-like abdomen: organ (label 1) and lesion (label 2), int16 HU, 0.7×0.7×2.5 mm.
    CtOrgan,
    /// MR-like structure with bias field and scanner intensity scale, float32.
    MrStructure,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[arg(long, value_enum, default_value = "ct-organ")]
    pub kind: Kind,
    /// Number of cases (training + validation).
    #[arg(long, default_value_t = 8)]
    pub cases: usize,
    /// In-plane voxels of the source grid.
    #[arg(long, default_value_t = 48)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation cases (listed in dataset.json's `validation`); default about a quarter.
    #[arg(long)]
    pub validation: Option<usize>,
    /// MR only: the validation scanner's gain, a factor on every validation intensity (1.3:
    /// 30 % brighter than the training scanner; default 1, the task as always).
    #[arg(long, default_value_t = 1.0)]
    pub validation_gain: f64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    Overall,
    PerVolume,
}

#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// MSD task folder (with dataset.json).
    pub dir: Option<PathBuf>,
    /// Read the task from this prefix of the store instead of a folder.
    #[arg(long, conflicts_with = "dir")]
    pub from_store: Option<String>,
    /// Object store URL (path, file:///..., s3://bucket/prefix, memory://).
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    /// Output spacing in mm: one value (isotropic) or x,y,z.
    #[arg(long, default_value = "1.0")]
    pub spacing: String,
    /// MR percentile window over all training volumes (overall) or each volume.
    #[arg(long, value_enum, default_value = "overall")]
    pub mr_scope: Scope,
    /// Validation fraction when dataset.json lists no validation cases.
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Cases processed at once.
    #[arg(long, default_value_t = 2)]
    pub parallel_cases: usize,
}

pub async fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Synth(a) => synth(a).await,
        DataCommand::Preprocess(a) => preprocess(a).await,
    }
}

async fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let kind = match a.kind {
        Kind::CtOrgan => SynthKind::CtOrgan,
        Kind::MrStructure => SynthKind::MrStructure,
    };
    let mut spec = SynthSpec::new(kind, a.cases, a.size, a.seed);
    if let Some(v) = a.validation {
        spec.validation = v;
    }
    spec.validation_gain = a.validation_gain;
    let out = a.out.clone();
    let summary =
        tokio::task::spawn_blocking(move || volume::synth::write_task(&spec, &out)).await??;
    println!(
        "wrote {} ({} cases: {} train, {} validation) to {}",
        summary.name,
        summary.cases,
        summary.train,
        summary.validation,
        summary.dir.display()
    );
    Ok(())
}

pub fn parse_spacing(s: &str) -> anyhow::Result<[f64; 3]> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--spacing {s:?}: expected a number or x,y,z"))?;
    let sp = match v.as_slice() {
        [a] => [*a; 3],
        [a, b, c] => [*a, *b, *c],
        _ => anyhow::bail!("--spacing {s:?}: expected one value or three"),
    };
    if sp.iter().any(|x| !x.is_finite() || *x <= 0.0) {
        anyhow::bail!("--spacing {s:?}: spacings must be positive");
    }
    Ok(sp)
}

async fn preprocess(a: PreprocessArgs) -> anyhow::Result<()> {
    let source = match (&a.dir, &a.from_store) {
        (Some(dir), None) => {
            let abs = std::fs::canonicalize(dir)
                .with_context(|| format!("{}: no such folder", dir.display()))?;
            DatasetSource::Local {
                path: abs.to_string_lossy().into_owned(),
            }
        }
        (None, Some(prefix)) => DatasetSource::Store {
            prefix: prefix.clone(),
        },
        _ => anyhow::bail!("give a task folder or --from-store PREFIX"),
    };
    let params = PreprocessParams {
        target_spacing: parse_spacing(&a.spacing)?,
        mr_scope: match a.mr_scope {
            Scope::Overall => PercentileScope::Overall,
            Scope::PerVolume => PercentileScope::PerVolume,
        },
        validation_fraction: a.validation_fraction,
        split_seed: a.split_seed,
        ..PreprocessParams::default()
    };
    let store = storage::open(&a.store)?;
    let opts = dataprep::Options {
        parallel_cases: a.parallel_cases,
        ..Default::default()
    };
    let outcome = dataprep::preprocess(&store, &source, &params, &opts)
        .await
        .map_err(|f| anyhow::anyhow!("{}", f.summary()))?;
    let m = &outcome.manifest;
    eprintln!(
        "{} dataset {} ({} train / {} validation cases, {:.1} s) in {}",
        if outcome.reused { "reused" } else { "wrote" },
        m.name,
        m.train_cases().count(),
        m.validation_cases().count(),
        outcome.seconds,
        a.store
    );
    println!("{}", outcome.dataset_id);
    Ok(())
}
