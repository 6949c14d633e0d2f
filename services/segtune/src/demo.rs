//! `segtune demo`: the whole product in one command. Synthesizes a phantom CT task (unless
//! the study names its own data), brings up the local stack (`segtune up`'s [`Stack`]),
//! submits the demo study and, beside it, a one-job study with the `fixed` searcher — the
//! paper's routine strategy (every probability 0.5, learning rate 1e-4) trained and evaluated
//! by the same services on the same data — follows the search live, prints the best strategy
//! next to the routine one, confirms the best strategy with fresh seeds against its ablation
//! and the routine (`segtune study confirm`, `--confirm-seeds`, default 2: 6 small jobs),
//! writes the report under `DIR/reports/<study>/`, and stops.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use protocol::{DatasetRef, DatasetSource, StudySpec};

use crate::{
    study::{
        self,
        watch::{self, FollowOptions, Outcome, Output},
    },
    up::{Stack, StackConfig},
};

/// `studies/demo.toml`, built in so `segtune demo` works from any folder.
const DEMO_STUDY: &str = include_str!("../../../studies/demo.toml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the phantom task (synth-ct/), the stack's stores and logs, and the
    /// reports (reports/<study>/).
    #[arg(long, default_value = "segtune-data")]
    pub data_dir: PathBuf,
    /// Trainer replicas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub trainers: u32,
    /// Study file; default: studies/demo.toml (the built-in copy when there is no
    /// studies/demo.toml here) on the synthetic CT task in DATA_DIR/synth-ct.
    #[arg(long)]
    pub study: Option<PathBuf>,
    /// Port of the demo's nats-server; default: a free one.
    #[arg(long)]
    pub nats_port: Option<u16>,
    /// After the study, confirm its best strategy with this many fresh seeds next to its
    /// ablation (no augmentation) and the routine strategy (`segtune study confirm`): 3 jobs
    /// per seed. 0 skips it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub confirm_seeds: u32,
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = crate::up::prepare_data_dir(&a.data_dir)?;
    let mut spec = match &a.study {
        Some(path) => ::study::load_study_file(path)?,
        None => default_study(&data_dir).await?,
    };
    spec.study = format!("{}-{}", spec.study, timestamp());
    let routine = routine_spec(&spec);
    for s in [&spec, &routine] {
        ::study::validate_spec(s).map_err(|errors| {
            let e: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid study {}: {}", s.study, e.join("; "))
        })?;
    }

    let port = match a.nats_port {
        Some(p) => p,
        None => free_port()?,
    };
    eprintln!("starting the local stack ({} trainer(s)) ...", a.trainers);
    let mut stack = Stack::start(StackConfig {
        data_dir: data_dir.clone(),
        trainers: a.trainers,
        nats_port: port,
    })
    .await?;
    let shutdown = runtime::shutdown_signal();
    eprintln!(
        "stack up on {} (logs in {}); {} s",
        stack.nats_url,
        stack.logs_dir().display(),
        started.elapsed().as_secs()
    );
    let (client, js) = (stack.client.clone(), stack.js.clone());
    let url = stack.nats_url.clone();
    let reports = data_dir.join("reports").join(&spec.study);
    let result = tokio::select! {
        r = search(&client, &js, &url, &spec, &routine, &reports, a.confirm_seeds) => r,
        _ = shutdown => Err(anyhow::anyhow!(
            "interrupted; the study stays in {} and resumes with the next `segtune up` or demo \
             on this data dir",
            stack.store_dir().display()
        )),
        e = stack.watch_children() => Err(e),
    };
    eprintln!("stopping the stack ...");
    stack.stop().await;
    let (best, routine, confirmation) = result?;
    print_comparison(&spec, &best, routine.as_ref(), &reports);
    if let Some(c) = &confirmation {
        println!();
        print!("{}", study::confirm::render(c));
    }
    println!(
        "demo finished in {:.0} s (logs in {})",
        started.elapsed().as_secs_f64(),
        data_dir.join("logs").display()
    );
    Ok(())
}

/// The demo study file (`./studies/demo.toml`, else the built-in copy) on the phantom task
/// under the data dir, synthesized first if it is not there.
async fn default_study(data_dir: &Path) -> anyhow::Result<StudySpec> {
    let local = Path::new("studies/demo.toml");
    let text = if local.is_file() {
        std::fs::read_to_string(local).with_context(|| format!("reading {}", local.display()))?
    } else {
        DEMO_STUDY.to_string()
    };
    let mut spec = ::study::parse_study_file(&text, local)?;
    let task = data_dir.join("synth-ct");
    if !task.join("dataset.json").is_file() {
        eprintln!("writing a synthetic CT task to {} ...", task.display());
        let spec = volume::synth::SynthSpec::new(volume::synth::SynthKind::CtOrgan, 8, 48, 0);
        let out = task.clone();
        let summary =
            tokio::task::spawn_blocking(move || volume::synth::write_task(&spec, &out)).await??;
        eprintln!(
            "wrote {} ({} train, {} validation cases)",
            summary.name, summary.train, summary.validation
        );
    }
    let params = match spec.dataset {
        DatasetRef::Source { params, .. } => params,
        DatasetRef::Id { .. } => Default::default(),
    };
    spec.dataset = DatasetRef::Source {
        source: DatasetSource::Local {
            path: task.display().to_string(),
        },
        params,
    };
    Ok(spec)
}

/// One job with the `fixed` searcher: the paper's routine strategy, same data and training.
fn routine_spec(spec: &StudySpec) -> StudySpec {
    let mut r = spec.clone();
    r.study = format!("{}-routine", spec.study);
    r.searcher = search::Fixed::KIND.to_string();
    r.searcher_settings.clear();
    r.warm_start = None;
    r.max_jobs = 1;
    r.parallel = 1;
    r
}

/// Submits both studies, follows the search live, then collects the routine result and
/// writes the report. The routine study's outcome is `None` when its job failed.
async fn search(
    client: &async_nats::Client,
    js: &jetstream::Context,
    url: &str,
    spec: &StudySpec,
    routine: &StudySpec,
    reports: &Path,
    confirm_seeds: u32,
) -> anyhow::Result<(Outcome, Option<Outcome>, Option<protocol::Confirmation>)> {
    study::submit_spec(js, url, spec).await?;
    study::submit_spec(js, url, routine).await?;
    let best = watch::follow(
        client,
        js,
        &spec.study,
        &FollowOptions {
            start_timeout: None,
            output: Output::auto(),
            best_file: None,
        },
    )
    .await?;
    eprintln!("waiting for the routine strategy's job ...");
    let routine = match watch::follow(
        client,
        js,
        &routine.study,
        &FollowOptions {
            start_timeout: None,
            output: Output::Quiet,
            best_file: None,
        },
    )
    .await
    {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("the routine strategy's job did not finish: {e:#}");
            None
        }
    };
    let confirmation = if confirm_seeds == 0 {
        None
    } else {
        eprintln!("confirming the best strategy with {confirm_seeds} fresh seeds ...");
        let request = study::confirm::Request {
            study: spec.study.clone(),
            seeds: confirm_seeds,
            top: 1,
            seed: 0,
            timeout: None,
        };
        match study::confirm::confirm(client, js, &request).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("the confirmation did not finish: {e:#}");
                None
            }
        }
    };
    match study::report::write_report(js, &spec.study, reports).await {
        Ok(r) => eprintln!(
            "wrote {} report files to {}",
            r.files.len(),
            reports.display()
        ),
        Err(e) => {
            eprintln!("cannot write the report: {e:#}");
            watch::write_strategy_file(&reports.join("best.toml"), &best)?;
        }
    }
    Ok((best, routine, confirmation))
}

/// The best strategy next to the routine one, value by value, and their Dice.
fn print_comparison(spec: &StudySpec, best: &Outcome, routine: Option<&Outcome>, reports: &Path) {
    let show = |k: &str, v: Option<&f64>| match v {
        None => "-".to_string(),
        Some(v) if k == protocol::strategy::LEARNING_RATE => format!("{v:.2e}"),
        Some(v) => format!("{v:.3}"),
    };
    println!();
    println!(
        "== {}: {} jobs ({}) in {:.0} s",
        spec.study, best.rewards, spec.searcher, best.seconds
    );
    println!(
        "  {:<16} {:>14} {:>14}",
        "",
        format!(
            "best ({})",
            best.best_job_id.rsplit('-').next().unwrap_or("")
        ),
        "routine"
    );
    for d in &spec.space {
        println!(
            "  {:<16} {:>14} {:>14}",
            d.name,
            show(&d.name, best.best_strategy.values.get(&d.name)),
            show(
                &d.name,
                routine.and_then(|r| r.best_strategy.values.get(&d.name))
            )
        );
    }
    match routine {
        Some(r) => println!(
            "  {:<16} {:>14.4} {:>14.4}   (searched - routine: {:+.4})",
            "validation Dice",
            best.best_mean,
            r.best_mean,
            best.best_mean - r.best_mean
        ),
        None => println!(
            "  {:<16} {:>14.4} {:>14}   (the routine job failed; see the logs)",
            "validation Dice", best.best_mean, "-"
        ),
    }
    println!("report: {}", reports.display());
}

/// `YYYYmmdd-HHMMSS` (UTC), so every demo run is a new study.
fn timestamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port for nats-server")?;
    Ok(l.local_addr()?.port())
}
