//! `segtune predict`: segment new scans with a model bundle, writing masks that overlay the
//! source images (same dimensions, transforms and codes).

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Args;
use engine::{
    bundle::Bundle,
    predict::{PredictOptions, Predictor},
};

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model bundle: a folder (`segtune train --bundle`, or a study's final model
    /// downloaded) or `store:<prefix>` in the store (`study finalize` prints it).
    #[arg(long)]
    pub model: String,
    /// A `.nii`/`.nii.gz` file, or a folder: every `.nii`/`.nii.gz` in it (not recursive).
    /// A 4D image's fourth dimension is its channels.
    #[arg(long)]
    pub input: PathBuf,
    /// Where `<case>.nii.gz` masks go (created).
    #[arg(long)]
    pub output: PathBuf,
    /// Sliding-window overlap (default: the bundle's, the one validation used).
    #[arg(long)]
    pub overlap: Option<f64>,
    /// Test-time augmentation: average the 8 mirrorings of each image (8x slower). The
    /// default is the bundle's: mirrored when its validation Dice was (`network.tta`).
    #[arg(long, conflicts_with = "no_tta")]
    pub tta: bool,
    /// Predict each image as it is, without mirroring, whatever the bundle says.
    #[arg(long)]
    pub no_tta: bool,
    /// Also write the class probabilities, `<case>_probabilities.nii.gz` (float32, one volume
    /// per class, on the source grid).
    #[arg(long)]
    pub save_probabilities: bool,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Segment on the deployment's evaluators over NATS instead of here: the inputs (and a
    /// bundle folder) are uploaded to the store under `predictions/<request>/`, a predict
    /// request is published, and the masks the evaluators write are downloaded into --output.
    #[arg(long)]
    pub bus: bool,
    /// With --bus: the request id (default `predict-<unix milliseconds>`).
    #[arg(long, requires = "bus")]
    pub request_id: Option<String>,
    /// With --bus: give up after this many seconds (the request stays queued).
    #[arg(long, requires = "bus")]
    pub timeout_secs: Option<u64>,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

/// Reads a bundle from a folder or, for `store:<prefix>`, from the store.
pub async fn load_bundle(model: &str, store: &str) -> anyhow::Result<Bundle> {
    if let Some(prefix) = model.strip_prefix("store:") {
        let store = storage::open(store)?;
        Ok(Bundle::read_store(&store, prefix.trim_end_matches('/')).await?)
    } else {
        Ok(Bundle::read_dir(Path::new(model))?)
    }
}

/// The `.nii`/`.nii.gz` inputs, sorted, each with its case name (the file name without the
/// extension).
pub fn inputs(input: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let meta = std::fs::metadata(input)
        .with_context(|| format!("--input {}: cannot read it", input.display()))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(input)
            .with_context(|| format!("--input {}: cannot list it", input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && case_name(p).is_some())
            .collect();
        v.sort();
        if v.is_empty() {
            anyhow::bail!(
                "--input {}: no .nii or .nii.gz file in this folder",
                input.display()
            );
        }
        v
    } else {
        if case_name(input).is_none() {
            anyhow::bail!(
                "--input {}: expected a .nii or .nii.gz file or a folder of them",
                input.display()
            );
        }
        vec![input.to_path_buf()]
    };
    Ok(files
        .into_iter()
        .map(|p| {
            let name = case_name(&p).expect("filtered");
            (p, name)
        })
        .collect())
}

fn case_name(p: &Path) -> Option<String> {
    engine::predict::case_name(p.file_name()?.to_str()?).map(str::to_string)
}

pub async fn run(a: PredictArgs) -> anyhow::Result<()> {
    if a.bus {
        return run_on_bus(a).await;
    }
    segmodel::init_compute_threads();
    let bundle = load_bundle(&a.model, &a.store).await?;
    let device = engine::device(&a.device)?;
    let inputs = inputs(&a.input)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("--output {}: cannot create it", a.output.display()))?;
    let predictor = Predictor::new(&bundle, &device).map_err(anyhow::Error::msg)?;
    let opts = PredictOptions {
        overlap: a.overlap,
        tta: tta_choice(a.tta, a.no_tta),
        batch: a.batch,
        probabilities: a.save_probabilities,
    };
    let output = a.output.clone();
    tokio::task::spawn_blocking(move || {
        let tty = std::io::stderr().is_terminal();
        let single = inputs.len() == 1;
        let mut failed = 0;
        for (path, case) in &inputs {
            match predict_file(&predictor, path, case, &output, &opts, tty) {
                Ok(line) => eprintln!("{line}"),
                Err(e) => {
                    if tty {
                        eprint!("\r\x1b[2K");
                    }
                    // One input: its error is the command's one line.
                    if single {
                        anyhow::bail!("{}: {e}", path.display());
                    }
                    eprintln!("error: {}: {e}", path.display());
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            anyhow::bail!(
                "{failed} of {} input(s) could not be segmented (nothing was written for them)",
                inputs.len()
            );
        }
        Ok(())
    })
    .await??;
    println!("{}", a.output.display());
    Ok(())
}

/// `segtune predict --bus`: the same segmentation by an evaluator replica, through the store.
async fn run_on_bus(a: PredictArgs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use protocol::{PredictRequest, Predicted, SCHEMA_VERSION, subjects};

    let inputs = inputs(&a.input)?;
    let request_id = match &a.request_id {
        Some(id) => id.clone(),
        None => format!(
            "predict-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ),
    };
    subjects::check_token("--request-id", &request_id)?;
    if let Some(o) = a.overlap
        && !(0.0..1.0).contains(&o)
    {
        anyhow::bail!("--overlap {o}: expected a value in [0, 1)");
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("--output {}: cannot create it", a.output.display()))?;
    let store = storage::open(&a.store)?;
    // The evaluators read the bundle from the store: a folder is uploaded (checked first).
    let model = match a.model.strip_prefix("store:") {
        Some(prefix) => prefix.trim_end_matches('/').to_string(),
        None => {
            let bundle = Bundle::read_dir(Path::new(&a.model))?;
            let prefix = storage::keys::prediction(&request_id, "model")?;
            bundle.write_store(&store, &prefix).await?;
            prefix
        }
    };
    let mut keys = Vec::with_capacity(inputs.len());
    for (path, _) in &inputs {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let key = storage::keys::prediction_input(&request_id, file)
            .with_context(|| format!("{}", path.display()))?;
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read it", path.display()))?;
        storage::put(&store, &key, bytes).await?;
        keys.push(key);
    }
    let request = PredictRequest {
        schema: SCHEMA_VERSION,
        request_id: request_id.clone(),
        model,
        inputs: keys,
        overlap: a.overlap,
        tta: tta_choice(a.tta, a.no_tta),
        save_probabilities: a.save_probabilities,
    };
    let (_client, js) = crate::study::bus::connect_provisioned(&a.nats).await?;
    // Listen before publishing: the answer is replayed from its stream anyway.
    let (mut answers, _) = crate::study::bus::replay_consumer(
        &js,
        subjects::stream::PREDICTIONS,
        &subjects::predictions(&request_id),
    )
    .await?;
    runtime::publish(
        &js,
        subjects::PREDICT_REQUESTS.to_string(),
        Some(&request_id),
        protocol::encode(&request)?,
    )
    .await
    .context("publishing the predict request")?;
    eprintln!(
        "predict request {request_id}: {} input(s) on the evaluators",
        request.inputs.len()
    );
    if !crate::study::bus::await_pullers(
        &js,
        subjects::durable::PREDICTORS,
        1,
        std::time::Duration::from_secs(6),
    )
    .await?
    {
        eprintln!(
            "note: no evaluator is pulling predict requests right now; the request waits in \
             the queue until one does (`segtune up`, or scale the evaluators)"
        );
    }
    let wait = async {
        while let Some(msg) = answers.next().await {
            let msg = msg.context("reading the answer")?;
            if let Ok(p) = protocol::decode::<Predicted>(&msg.payload)
                && p.request_id == request_id
            {
                return Ok(p);
            }
        }
        anyhow::bail!("the answer stream ended before the answer came")
    };
    let answer = match a.timeout_secs {
        Some(s) => tokio::time::timeout(std::time::Duration::from_secs(s), wait)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no answer to predict request {request_id} within {s} s; it stays queued \
                     (its answer will come on {})",
                    subjects::predictions(&request_id)
                )
            })??,
        None => wait.await?,
    };
    for out in &answer.outputs {
        for (key, file) in [
            (Some(&out.mask_key), format!("{}.nii.gz", out.case)),
            (
                out.probabilities_key.as_ref(),
                format!("{}_probabilities.nii.gz", out.case),
            ),
        ] {
            let Some(key) = key else { continue };
            let bytes = storage::get(&store, key).await?;
            write_atomically(&a.output.join(&file), &bytes)?;
        }
        let [x, y, z] = out.dims;
        eprintln!(
            "{}: {x}x{y}x{z} -> {} in {:.1} s ({})",
            out.case,
            a.output.join(format!("{}.nii.gz", out.case)).display(),
            out.seconds,
            answer.worker
        );
    }
    for e in &answer.errors {
        let what = if e.file.is_empty() {
            "request".to_string()
        } else {
            e.file.clone()
        };
        eprintln!("error: {what}: {}", e.reason);
    }
    if !answer.errors.is_empty() {
        anyhow::bail!(
            "{} of {} input(s) could not be segmented (nothing was written for them)",
            inputs.len() - answer.outputs.len(),
            inputs.len()
        );
    }
    println!("{}", a.output.display());
    Ok(())
}

/// Writes `path` through a sibling `.partial` file renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            anyhow::anyhow!("{}: cannot write it: {e}", path.display())
        })
}

/// Segments one file and writes its mask (and probabilities); returns the line to print.
fn predict_file(
    predictor: &Predictor,
    path: &Path,
    case: &str,
    output: &Path,
    opts: &PredictOptions,
    tty: bool,
) -> Result<String, String> {
    let img =
        volume::read_nifti(path, &volume::ReadLimits::default()).map_err(|e| e.to_string())?;
    let mut progress = |done: usize, total: usize| {
        if tty {
            let width = 30;
            let filled = width * done / total.max(1);
            eprint!(
                "\r\x1b[2K{case:24} [{}{}] {done}/{total} passes",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        }
    };
    let pred = predictor.predict(&img.volume, opts, &mut progress)?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    let mask_path = output.join(format!("{case}.nii.gz"));
    if let Some(p) = &pred.probabilities {
        let prob_path = output.join(format!("{case}_probabilities.nii.gz"));
        volume::nifti::write_nifti_like(&prob_path, p, &img.spatial).map_err(|e| e.to_string())?;
    }
    if let Err(e) = volume::nifti::write_nifti_like(&mask_path, &pred.mask, &img.spatial) {
        // No probabilities without their mask.
        let _ = std::fs::remove_file(output.join(format!("{case}_probabilities.nii.gz")));
        return Err(e.to_string());
    }
    let [x, y, z] = img.volume.dims;
    let [mx, my, mz] = pred.model_grid;
    Ok(format!(
        "{case}: {x}x{y}x{z} (model grid {mx}x{my}x{mz}) -> {} in {:.1} s",
        mask_path.display(),
        pred.seconds
    ))
}

/// `--tta` / `--no-tta`, or None: the bundle's choice.
pub(crate) fn tta_choice(tta: bool, no_tta: bool) -> Option<bool> {
    (tta || no_tta).then_some(tta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_drop_the_nifti_extension() {
        assert_eq!(
            case_name(Path::new("a/ct_01.nii.gz")).as_deref(),
            Some("ct_01")
        );
        assert_eq!(case_name(Path::new("b.NII")).as_deref(), Some("b"));
        assert_eq!(case_name(Path::new("notes.txt")), None);
        assert_eq!(case_name(Path::new(".nii.gz")), None);
    }
}
