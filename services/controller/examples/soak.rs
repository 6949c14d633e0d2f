//! Soak benchmark (`scripts/bench-soak`): the real controller against a real nats-server and
//! a file store, with analytic trainer *processes* (pull a job, "train" for `--job-ms`, publish
//! the reward of an analytic function of the strategy, ack) so that thousands of jobs run in
//! minutes. Runs the same workload twice: fault-free, then with faults (each second every
//! trainer is SIGKILLed with probability `--kill-pct` % and restarted a second later, and the
//! broker is SIGKILLed once, half-way, and restarted on the same store dir). Prints jobs/s,
//! job latency from issue to counted reward (p50/p99/max, from the study events), and the
//! ledger: issued = rewarded + dead-lettered, no job id issued or rewarded twice.
//!
//! ```text
//! cargo run --release -p controller --example soak -- --jobs 20000 --studies 20 --trainers 8
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Parser;
use protocol::{Reward, SCHEMA_VERSION, StudyEvent, StudyEventKind, StudySpec, TrainJob, subjects};
use test_support::NatsServer;

const DATASET: &str = "soak-dataset-0001";

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Run as one analytic trainer process (used by the benchmark itself).
    #[arg(long)]
    trainer: Option<String>,
    #[arg(long, default_value = "")]
    nats: String,
    /// Jobs in all, split evenly over the studies.
    #[arg(long, default_value_t = 20_000)]
    jobs: u32,
    #[arg(long, default_value_t = 20)]
    studies: u32,
    /// Jobs out at once per study.
    #[arg(long, default_value_t = 2)]
    parallel: u32,
    #[arg(long, default_value_t = 8)]
    trainers: u32,
    /// "Training" time of one job.
    #[arg(long, default_value_t = 20)]
    job_ms: u64,
    /// Each second, the chance (%) that a given trainer is SIGKILLed (restarted 1 s later).
    #[arg(long, default_value_t = 5.0)]
    kill_pct: f64,
    /// AckWait of the jobs consumer (a killed trainer's job comes back after it).
    #[arg(long, default_value_t = 2.0)]
    ack_wait_secs: f64,
    /// `both` (fault-free, then faults), `faults` or `clean`.
    #[arg(long, default_value = "both")]
    runs: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(name) = args.trainer.clone() {
        return rt.block_on(trainer(args, name));
    }
    let runs: Vec<bool> = match args.runs.as_str() {
        "both" => vec![false, true],
        "faults" => vec![true],
        "clean" => vec![false],
        other => anyhow::bail!("--runs: expected both, faults or clean, got {other:?}"),
    };
    let mut reports = Vec::new();
    for faults in runs {
        let report = rt.block_on(run(&args, faults))?;
        report.print();
        reports.push(report);
    }
    if let [clean, faulty] = &reports[..] {
        println!(
            "throughput with faults: {:.1}% of fault-free ({:.1} vs {:.1} jobs/s)",
            100.0 * faulty.jobs_per_sec / clean.jobs_per_sec,
            faulty.jobs_per_sec,
            clean.jobs_per_sec
        );
    }
    let bad: Vec<_> = reports.iter().filter(|r| !r.ledger_ok()).collect();
    anyhow::ensure!(bad.is_empty(), "ledger check failed");
    Ok(())
}

/// One analytic trainer: pulls one job at a time, sleeps, publishes its reward, acks.
async fn trainer(args: Args, name: String) -> anyhow::Result<()> {
    let client = runtime::connect(&args.nats, &name).await?;
    let js = jetstream::new(client);
    let consumer = loop {
        match runtime::consumer(&js, subjects::durable::TRAINERS).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        let msg = match runtime::pull_one(&consumer, Duration::from_secs(1)).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let job: TrainJob = protocol::decode(&msg.payload)?;
        tokio::time::sleep(Duration::from_millis(args.job_ms)).await;
        let u = &job.strategy.unit;
        let mean = 1.0 - u.values().map(|x| (x - 0.3).powi(2)).sum::<f64>() / u.len().max(1) as f64;
        let reward = Reward {
            schema: SCHEMA_VERSION,
            study: job.study.clone(),
            job_id: job.job_id.clone(),
            index: job.index,
            strategy: job.strategy.clone(),
            per_case: Vec::new(),
            per_class: vec![mean],
            mean,
            checkpoint_key: String::new(),
            trainer: name.clone(),
            attempt: runtime::delivery_attempt(&msg),
            train_seconds: args.job_ms as f64 / 1e3,
            final_loss: 1.0 - mean,
            eval_seconds: 0.0,
            pruned: false,
            epoch_reached: 0,
        };
        // A crash between publish and ack: the redelivery publishes again with the same id.
        if runtime::publish(
            &js,
            subjects::rewards(&job.study),
            Some(&job.job_id),
            protocol::encode(&reward)?,
        )
        .await
        .is_ok()
        {
            let _ = msg.double_ack().await;
        }
    }
}

struct Trainer {
    name: String,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

impl Trainer {
    fn spawn(args: &Args, nats: &str, name: &str) -> anyhow::Result<Child> {
        Command::new(std::env::current_exe()?)
            .args(["--trainer", name, "--nats", nats])
            .args(["--job-ms", &args.job_ms.to_string()])
            .env("SEGTUNE_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .context("start a trainer process")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spec(study: &str, max_jobs: u32, parallel: u32) -> StudySpec {
    study::testing::StudySpecBuilder::new(study)
        .dataset_id(DATASET)
        .space_of(&["p_noise", "p_flip", "p_shift", "p_scale"])
        .searcher("random")
        .max_jobs(max_jobs)
        .parallel(parallel)
        .max_failures(max_jobs)
        .seed(11)
        .build()
}

struct Report {
    faults: bool,
    jobs: u32,
    seconds: f64,
    jobs_per_sec: f64,
    latency: [f64; 3],
    trainer_kills: u32,
    broker_kills: u32,
    issued: usize,
    rewarded: usize,
    dead: usize,
    duplicate_issues: usize,
    duplicate_rewards: usize,
    stream_rewards: usize,
    stream_distinct: usize,
    all_done: bool,
}

impl Report {
    fn ledger_ok(&self) -> bool {
        self.all_done
            && self.issued == self.rewarded + self.dead
            && self.rewarded == self.jobs as usize
            && self.duplicate_issues == 0
            && self.duplicate_rewards == 0
            && self.stream_distinct == self.rewarded
    }

    fn print(&self) {
        println!(
            "{}: {} jobs in {:.1} s = {:.1} jobs/s; issue->reward latency p50 {:.3} s, p99 {:.3} s, max {:.3} s; \
             trainer kills {}, broker kills {}",
            if self.faults { "faults" } else { "fault-free" },
            self.jobs,
            self.seconds,
            self.jobs_per_sec,
            self.latency[0],
            self.latency[1],
            self.latency[2],
            self.trainer_kills,
            self.broker_kills,
        );
        println!(
            "  ledger: issued {} = rewarded {} + dead-lettered {} ({}); duplicate issues {}, \
             duplicate counted rewards {}; REWARDS stream {} messages, {} distinct jobs; all \
             studies done: {} => {}",
            self.issued,
            self.rewarded,
            self.dead,
            if self.issued == self.rewarded + self.dead {
                "holds"
            } else {
                "BROKEN"
            },
            self.duplicate_issues,
            self.duplicate_rewards,
            self.stream_rewards,
            self.stream_distinct,
            self.all_done,
            if self.ledger_ok() { "OK" } else { "FAILED" },
        );
    }
}

async fn run(args: &Args, faults: bool) -> anyhow::Result<Report> {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir()?;
    let store = storage::open(&dir.path().join("store").display().to_string())?;
    let client = runtime::connect(&nats.url(), "soak").await?;
    let js = jetstream::new(client);
    let ack_wait = Duration::from_secs_f64(args.ack_wait_secs);
    runtime::provision_with(&js, None, Some(ack_wait)).await?;
    storage::put(&store, &storage::keys::manifest(DATASET)?, b"soak".to_vec()).await?;

    let app = controller::App::new(
        jetstream::new(runtime::connect(&nats.url(), "soak-controller").await?),
        store.clone(),
        controller::Options {
            ack_wait: Duration::from_secs(30),
            poll: Duration::from_millis(200),
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(app, async {
        let _ = stop_rx.await;
    }));

    let mut trainers = Vec::new();
    for i in 0..args.trainers {
        let name = format!("trainer-{i}");
        let child = Trainer::spawn(args, &nats.url(), &name)?;
        trainers.push(Trainer {
            name,
            child: Some(child),
            restart_at: None,
        });
    }

    let per_study = args.jobs / args.studies;
    let studies: Vec<String> = (0..args.studies)
        .map(|i| format!("soak-{}-{i:02}", if faults { "f" } else { "c" }))
        .collect();
    let start = Instant::now();
    for s in &studies {
        runtime::publish(
            &js,
            subjects::SUBMISSIONS.to_string(),
            Some(&format!("submit-{s}")),
            protocol::encode(&spec(s, per_study, args.parallel))?,
        )
        .await?;
    }

    let (mut trainer_kills, mut broker_kills) = (0, 0);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(3600);
    let total = per_study * args.studies;
    let all_done = loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut rewards = 0;
        let mut finished = 0;
        for s in &studies {
            if let Ok(Some(state)) = controller::read_state(&store, s).await {
                rewards += state.rewards.len() as u32;
                finished += state.phase.is_finished() as usize;
            }
        }
        if finished == studies.len() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        if !faults {
            continue;
        }
        if broker_kills == 0 && rewards >= total / 2 {
            nats.kill();
            broker_kills += 1;
            eprintln!("broker killed (-9) at {rewards} rewards; restarting in 2 s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            nats.restart();
        }
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            for t in &mut trainers {
                if let Some(at) = t.restart_at
                    && Instant::now() >= at
                {
                    t.child = Some(Trainer::spawn(args, &nats.url(), &t.name)?);
                    t.restart_at = None;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if t.child.is_some() && (rng % 10_000) as f64 / 100.0 < args.kill_pct {
                    t.kill();
                    t.restart_at = Some(Instant::now() + Duration::from_secs(1));
                    trainer_kills += 1;
                }
            }
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    for t in &mut trainers {
        t.kill();
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), controller).await;

    // The ledger, from the controller's state and the streams.
    let (mut issued, mut rewarded, mut dead, mut dup_issues, mut dup_rewards) = (0, 0, 0, 0, 0);
    let (mut stream_rewards, mut stream_distinct) = (0, 0);
    let mut latencies = Vec::new();
    for s in &studies {
        let state = controller::read_state(&store, s)
            .await?
            .with_context(|| format!("no state for {s}"))?;
        issued += state.jobs.len();
        rewarded += state.rewards.len();
        dead += state.failures.len();
        let events: Vec<StudyEvent> = test_support::stream_payloads(
            &js,
            subjects::stream::EVENTS,
            &subjects::study_events(s),
        )
        .await
        .iter()
        .map(|p| protocol::decode(p))
        .collect::<Result<_, _>>()?;
        let mut issued_at = BTreeMap::new();
        let mut counted = BTreeSet::new();
        for e in &events {
            match &e.event {
                StudyEventKind::Issued { job_id, .. } => {
                    let again = issued_at.insert(job_id.clone(), e.time_unix).is_some();
                    dup_issues += usize::from(again);
                }
                StudyEventKind::Reward { job_id, .. } => {
                    if !counted.insert(job_id.clone()) {
                        dup_rewards += 1;
                    }
                    if let Some(t) = issued_at.get(job_id) {
                        latencies.push(e.time_unix - t);
                    }
                }
                _ => {}
            }
        }
        let on_stream =
            test_support::stream_payloads(&js, subjects::stream::REWARDS, &subjects::rewards(s))
                .await;
        stream_rewards += on_stream.len();
        let distinct: BTreeSet<String> = on_stream
            .iter()
            .map(|p| protocol::decode::<Reward>(p).map(|r| r.job_id))
            .collect::<Result<_, _>>()?;
        stream_distinct += distinct.len();
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Report {
        faults,
        jobs: total,
        seconds,
        jobs_per_sec: rewarded as f64 / seconds,
        latency: [pct(0.5), pct(0.99), pct(1.0)],
        trainer_kills,
        broker_kills,
        issued,
        rewarded,
        dead,
        duplicate_issues: dup_issues,
        duplicate_rewards: dup_rewards,
        stream_rewards,
        stream_distinct,
        all_done,
    })
}
