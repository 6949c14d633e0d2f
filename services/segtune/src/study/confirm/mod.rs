//! `segtune study confirm STUDY [--seeds 3] [--top 1]`: does the searched augmentation help?
//!
//! A study's best reward is the maximum of many noisy trainings, and its learning rate is
//! searched together with the augmentation, so "best beats routine" can be luck or the
//! learning rate alone. Confirm retrains, as ordinary jobs over NATS (`retrain`), under the
//! study id `<study>-confirm`:
//!
//! - each of the study's top-k strategies (by non-pruned reward) with fresh seeds (`topK`),
//! - the same strategy with every augmentation probability 0, same learning rate, magnitudes
//!   and budget: the ablation (`topK-noaug`),
//! - the paper's routine strategy (`routine`),
//!
//! every arm with the same seeds, so arms are compared seed by seed (paired differences and
//! their 95 % t-interval, `stats`). It prints the table and a plain verdict, and publishes the
//! result as a `Confirmation` on `segtune.confirmations.<study>` for the report.

pub mod stats;

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;
use clap::Args;
use protocol::{
    ArmKind, ConfirmArm, ConfirmComparison, Confirmation, Reward, SCHEMA_VERSION, Strategy,
    StudyEvent, StudyEventKind, StudySpec, TrainJob, strategy, subjects,
};

use super::{bus, retrain};

#[derive(Debug, Args)]
pub struct ConfirmArgs {
    /// Study id (it must have at least one non-pruned reward).
    pub study: String,
    /// Fresh seeds per arm (at least 2 for an interval).
    #[arg(long, default_value_t = 3)]
    pub seeds: u32,
    /// How many of the study's best strategies to confirm (each with its ablation).
    #[arg(long, default_value_t = 1)]
    pub top: u32,
    /// Picks another set of fresh seeds (the seeds are derived from the study's seed and this).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Give up after this many seconds (default: wait as long as it takes).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

/// The study id a confirmation of `study` runs its jobs under.
pub fn confirm_study_id(study: &str) -> String {
    ::study::retrain::retrain_study_id(study, ::study::retrain::CONFIRM)
}

/// Most seeds per arm (every arm costs a full training per seed).
const MAX_SEEDS: u32 = 20;
/// Most top strategies.
const MAX_TOP: u32 = 10;
/// Mixed into the seed derivation so a confirmation never trains with a search job's seed.
const SEED_SALT: u64 = 0x636f_6e66_6972_6d00; // "confirm\0"

/// The fresh seeds of a confirmation.
pub fn fresh_seeds(study_seed: u64, seed: u64, n: u32) -> Vec<u64> {
    let base = study_seed ^ SEED_SALT ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n).map(|i| study::job_seed(base, i)).collect()
}

/// An arm before it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmPlan {
    pub name: String,
    /// Short code in job ids (`w1`, `a1`, `r`).
    pub code: String,
    pub kind: ArmKind,
    pub source: Option<(String, f64)>,
    pub strategy: Strategy,
}

/// The arms for the study's `top` best non-pruned rewards (ties: the earlier job first):
/// per winner the winner and its ablation, then the routine strategy.
pub fn plan_arms(rewards: &[Reward], top: u32) -> Vec<ArmPlan> {
    let mut ranked: Vec<&Reward> = rewards
        .iter()
        .filter(|r| r.mean.is_finite() && !r.pruned)
        .collect();
    // Stable sort: equal Dice keep stream order.
    ranked.sort_by(|a, b| b.mean.total_cmp(&a.mean));
    let mut seen = std::collections::BTreeSet::new();
    ranked.retain(|r| seen.insert(r.job_id.clone()));
    let mut arms = Vec::new();
    for (i, r) in ranked.iter().take(top as usize).enumerate() {
        let k = i + 1;
        arms.push(ArmPlan {
            name: format!("top{k}"),
            code: format!("w{k}"),
            kind: ArmKind::Winner,
            source: Some((r.job_id.clone(), r.mean)),
            strategy: r.strategy.clone(),
        });
        arms.push(ArmPlan {
            name: format!("top{k}-noaug"),
            code: format!("a{k}"),
            kind: ArmKind::Ablation,
            source: Some((r.job_id.clone(), r.mean)),
            strategy: strategy::without_augmentation(&r.strategy),
        });
    }
    arms.push(ArmPlan {
        name: "routine".into(),
        code: "r".into(),
        kind: ArmKind::Routine,
        source: None,
        strategy: strategy::routine_strategy(),
    });
    arms
}

/// The study's spec and dataset from its events (the last `started`, as extended since).
pub fn started(events: &[StudyEvent]) -> Option<(StudySpec, String)> {
    let mut out = None;
    for ev in events {
        if let StudyEventKind::Started { spec, dataset_id } = &ev.event {
            out = Some((spec.as_ref().clone(), dataset_id.clone()));
        }
    }
    out
}

/// The jobs of a confirmation, seed by seed (all arms of seed 0 first, so each seed's arms
/// train at about the same time on a shared cluster).
pub fn plan_jobs(
    run_id: &str,
    run_study: &str,
    dataset_id: &str,
    spec: &StudySpec,
    arms: &[ArmPlan],
    seeds: &[u64],
) -> anyhow::Result<Vec<TrainJob>> {
    let mut jobs = Vec::new();
    for (s, &seed) in seeds.iter().enumerate() {
        for arm in arms {
            let job_id = format!("{run_id}-{}-{s}", arm.code);
            subjects::check_token("job id", &job_id)
                .with_context(|| format!("study id {:?} is too long to confirm", spec.study))?;
            jobs.push(TrainJob {
                schema: SCHEMA_VERSION,
                study: run_study.to_string(),
                job_id,
                index: jobs.len() as u32 + 1,
                dataset_id: dataset_id.to_string(),
                strategy: arm.strategy.clone(),
                training: spec.training.clone(),
                seed,
                final_model: None,
                validation: None,
            });
        }
    }
    Ok(jobs)
}

/// The confirmation of the arms' Dice (`dice[arm][seed]`).
#[allow(clippy::too_many_arguments)]
pub fn summarize(
    study: &str,
    run_id: &str,
    run_study: &str,
    dataset_id: &str,
    spec: &StudySpec,
    seeds: &[u64],
    arms: &[ArmPlan],
    jobs: &[TrainJob],
    dice: Vec<Vec<Option<f64>>>,
    time_unix: f64,
) -> Confirmation {
    let n_arms = arms.len();
    let arms_out: Vec<ConfirmArm> = arms
        .iter()
        .zip(&dice)
        .enumerate()
        .map(|(a, (plan, d))| {
            let got: Vec<f64> = d.iter().flatten().copied().collect();
            let (mean, sd) = stats::mean_sd(&got);
            ConfirmArm {
                name: plan.name.clone(),
                kind: plan.kind,
                source_job: plan.source.as_ref().map(|s| s.0.clone()),
                search_dice: plan.source.as_ref().map(|s| s.1),
                strategy: plan.strategy.clone(),
                job_ids: (0..seeds.len())
                    .map(|s| jobs[s * n_arms + a].job_id.clone())
                    .collect(),
                dice: d.clone(),
                mean,
                sd,
            }
        })
        .collect();
    let routine = arms.iter().position(|a| a.kind == ArmKind::Routine);
    let mut comparisons = Vec::new();
    for (w, plan) in arms.iter().enumerate() {
        if plan.kind != ArmKind::Winner {
            continue;
        }
        let ablation = arms.iter().position(|a| {
            a.kind == ArmKind::Ablation
                && a.source.as_ref().map(|s| &s.0) == plan.source.as_ref().map(|s| &s.0)
        });
        for b in [ablation, routine].into_iter().flatten() {
            let p = stats::paired(&dice[w], &dice[b]);
            comparisons.push(ConfirmComparison {
                arm: plan.name.clone(),
                baseline: arms[b].name.clone(),
                diffs: p.diffs,
                mean: p.mean,
                sd: p.sd,
                ci95: p.ci,
            });
        }
    }
    Confirmation {
        schema: SCHEMA_VERSION,
        study: study.to_string(),
        run_id: run_id.to_string(),
        run_study: run_study.to_string(),
        dataset_id: dataset_id.to_string(),
        seeds: seeds.to_vec(),
        epochs: spec.training.epochs,
        patches_per_epoch: spec.training.patches_per_epoch,
        arms: arms_out,
        comparisons,
        time_unix,
    }
}

fn signed(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        // `+ 0.0` turns −0 into +0, so an exact tie prints as +0.0000.
        format!("{:+.4}", v + 0.0)
    }
}

fn plain(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.4}")
    }
}

/// The plain sentence on whether a winner's augmentation beats no augmentation.
pub fn verdict(c: &ConfirmComparison) -> String {
    let n = c.diffs.len();
    if n < 2 {
        return format!(
            "{}: too few paired seeds ({n}) to tell whether its augmentation beats no \
             augmentation.",
            c.arm
        );
    }
    let ci = format!(
        "95% interval [{}, {}]",
        signed(c.ci95[0]),
        signed(c.ci95[1])
    );
    if c.ci95[0] > 0.0 {
        format!(
            "{}: its augmentation beats no augmentation by {} Dice on average ({ci}, {n} \
             seeds): more than the seeds' noise.",
            c.arm,
            plain(c.mean)
        )
    } else if c.ci95[1] < 0.0 {
        format!(
            "{}: no augmentation beats its augmentation by {} Dice on average ({ci}, {n} \
             seeds): the searched augmentation hurts; the same strategy does better \
             without it.",
            c.arm,
            plain(-c.mean)
        )
    } else {
        format!(
            "{}: its augmentation does not beat no augmentation beyond the seeds' noise: \
             {} Dice on average ({ci}, {n} seeds, the interval holds 0).",
            c.arm,
            signed(c.mean)
        )
    }
}

/// The printed report: per arm mean, sd, per-seed Dice; paired differences; verdicts.
pub fn render(c: &Confirmation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "confirmation {} of study {}: {} seeds, {} epochs x {} patches per arm (jobs under {})",
        c.run_id,
        c.study,
        c.seeds.len(),
        c.epochs,
        c.patches_per_epoch,
        c.run_study
    );
    let width = c
        .arms
        .iter()
        .map(|a| a.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:>7}  {:>7}  {:>8}  Dice per seed",
        "arm", "mean", "sd", "search"
    );
    for a in &c.arms {
        let per: Vec<String> = a
            .dice
            .iter()
            .map(|d| {
                d.map(|v| format!("{v:.4}"))
                    .unwrap_or_else(|| "failed".into())
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:>7}  {:>7}  {:>8}  {}",
            a.name,
            plain(a.mean),
            plain(a.sd),
            a.search_dice.map(plain).unwrap_or_else(|| "-".into()),
            per.join(" ")
        );
    }
    let _ = writeln!(out, "paired differences (same seed), 95% t-interval:");
    let w2 = c
        .comparisons
        .iter()
        .map(|p| p.arm.len() + p.baseline.len() + 3)
        .max()
        .unwrap_or(0);
    for p in &c.comparisons {
        let label = format!("{} - {}", p.arm, p.baseline);
        let per: Vec<String> = p.diffs.iter().map(|d| signed(*d)).collect();
        let _ = writeln!(
            out,
            "  {label:<w2$}  {}  [{}, {}]  per seed {}",
            signed(p.mean),
            signed(p.ci95[0]),
            signed(p.ci95[1]),
            per.join(" ")
        );
    }
    for p in &c.comparisons {
        let ablation = c
            .arms
            .iter()
            .any(|a| a.name == p.baseline && a.kind == ArmKind::Ablation);
        if ablation {
            let _ = writeln!(out, "{}", verdict(p));
        }
    }
    out
}

pub async fn run(a: ConfirmArgs) -> anyhow::Result<()> {
    subjects::check_token("study id", &a.study)?;
    let (client, js) = bus::connect_provisioned(&a.nats).await?;
    let c = confirm(
        &client,
        &js,
        &Request {
            study: a.study.clone(),
            seeds: a.seeds,
            top: a.top,
            seed: a.seed,
            timeout: a.timeout_secs.map(Duration::from_secs),
        },
    )
    .await?;
    print!("{}", render(&c));
    eprintln!(
        "published on {} (segtune study report {} draws it)",
        subjects::confirmations(&a.study),
        a.study
    );
    Ok(())
}

/// What to confirm (the command's arguments, for `segtune demo` too).
#[derive(Debug, Clone)]
pub struct Request {
    pub study: String,
    pub seeds: u32,
    pub top: u32,
    pub seed: u64,
    pub timeout: Option<Duration>,
}

/// Runs a confirmation of `r.study` over the bus and publishes it; returns what it published.
pub async fn confirm(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    r: &Request,
) -> anyhow::Result<Confirmation> {
    subjects::check_token("study id", &r.study)?;
    if !(1..=MAX_SEEDS).contains(&r.seeds) {
        anyhow::bail!("--seeds must lie in 1..={MAX_SEEDS}, got {}", r.seeds);
    }
    if !(1..=MAX_TOP).contains(&r.top) {
        anyhow::bail!("--top must lie in 1..={MAX_TOP}, got {}", r.top);
    }
    if r.seeds < 2 {
        eprintln!("note: with 1 seed there is no interval; use --seeds 3 or more");
    }
    let run_study = confirm_study_id(&r.study);
    subjects::check_token("study id", &run_study)?;
    let (rewards, events) = bus::replay_study(js, &r.study).await?;
    let Some((spec, dataset_id)) = started(&events) else {
        anyhow::bail!(
            "study {}: no started event on this NATS server (check the id and SEGTUNE_NATS)",
            r.study
        );
    };
    let arms = plan_arms(&rewards, r.top);
    let winners = arms.iter().filter(|x| x.kind == ArmKind::Winner).count();
    if winners == 0 {
        anyhow::bail!(
            "study {} has no finished (non-pruned) reward yet: nothing to confirm",
            r.study
        );
    }
    if winners < r.top as usize {
        eprintln!(
            "note: study {} has {winners} finished strategies; confirming those",
            r.study
        );
    }
    let seeds = fresh_seeds(spec.seed, r.seed, r.seeds);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = format!("{run_study}-{stamp}");
    let jobs = plan_jobs(&run_id, &run_study, &dataset_id, &spec, &arms, &seeds)?;
    eprintln!(
        "confirming study {}: {} arms x {} seeds = {} jobs of {} epochs x {} patches",
        r.study,
        arms.len(),
        seeds.len(),
        jobs.len(),
        spec.training.epochs,
        spec.training.patches_per_epoch
    );
    for arm in &arms {
        eprintln!("  {}: {:?}", arm.name, arm.strategy.values);
    }
    let outcomes = retrain::run_jobs(client, js, &r.study, &run_study, &jobs, r.timeout).await?;
    let mut dice = vec![vec![None; seeds.len()]; arms.len()];
    for (i, o) in outcomes.iter().enumerate() {
        if let Ok(reward) = o {
            dice[i % arms.len()][i / arms.len()] = Some(reward.mean);
        }
    }
    let time_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let confirmation = summarize(
        &r.study,
        &run_id,
        &run_study,
        &dataset_id,
        &spec,
        &seeds,
        &arms,
        &jobs,
        dice,
        time_unix,
    );
    runtime::publish(
        js,
        subjects::confirmations(&r.study),
        Some(&run_id),
        protocol::encode(&confirmation)?,
    )
    .await
    .context("publishing the confirmation")?;
    Ok(confirmation)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reward(job: &str, mean: f64, pruned: bool, lr: f64) -> Reward {
        Reward {
            schema: SCHEMA_VERSION,
            study: "s".into(),
            job_id: job.into(),
            index: 1,
            strategy: Strategy {
                values: BTreeMap::from([
                    ("p_flip".into(), 0.7),
                    ("m_noise".into(), 0.2),
                    (strategy::LEARNING_RATE.into(), lr),
                ]),
                unit: BTreeMap::new(),
            },
            per_case: Vec::new(),
            per_class: Vec::new(),
            mean,
            checkpoint_key: String::new(),
            trainer: String::new(),
            attempt: 1,
            train_seconds: 0.0,
            final_loss: 0.0,
            eval_seconds: 0.0,
            pruned,
            epoch_reached: 0,
        }
    }

    #[test]
    fn arms_are_the_top_strategies_their_ablations_and_the_routine() {
        let rewards = [
            reward("s-0001", 0.5, false, 1e-3),
            reward("s-0002", 0.9, true, 2e-3),
            reward("s-0003", 0.7, false, 3e-3),
            reward("s-0004", f64::NAN, false, 4e-3),
            reward("s-0005", 0.7, false, 5e-3),
        ];
        let arms = plan_arms(&rewards, 2);
        let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["top1", "top1-noaug", "top2", "top2-noaug", "routine"]
        );
        // The pruned 0.9 is skipped; of the tied 0.7 the earlier job ranks first.
        assert_eq!(arms[0].source, Some(("s-0003".into(), 0.7)));
        assert_eq!(arms[2].source, Some(("s-0005".into(), 0.7)));
        let (win, off) = (&arms[0].strategy.values, &arms[1].strategy.values);
        assert_eq!(off["p_flip"], 0.0);
        assert_eq!(off[strategy::LEARNING_RATE], win[strategy::LEARNING_RATE]);
        assert_eq!(off["m_noise"], win["m_noise"]);
        assert_eq!(arms[4].strategy, strategy::routine_strategy());
        // Fewer finished strategies than asked for: the arms of those there are.
        assert_eq!(plan_arms(&rewards[..1], 3).len(), 3);
    }

    #[test]
    fn seeds_are_fresh_paired_and_reproducible() {
        let a = fresh_seeds(7, 0, 3);
        assert_eq!(a, fresh_seeds(7, 0, 3));
        assert_ne!(a, fresh_seeds(7, 1, 3));
        let search: Vec<u64> = (0..200).map(|i| study::job_seed(7, i)).collect();
        assert!(a.iter().all(|s| !search.contains(s)));
        let mut distinct = a.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
    }

    /// Every arm trains with every seed and the study's budget; the Dice of the hand-worked
    /// example in `stats` come out as its paired differences.
    #[test]
    fn jobs_pair_the_seeds_and_the_summary_pairs_the_dice() {
        let spec = study::testing::StudySpecBuilder::new("s").build();
        let arms = plan_arms(&[reward("s-0001", 0.8, false, 1e-3)], 1);
        let seeds = fresh_seeds(spec.seed, 0, 3);
        let jobs = plan_jobs("s-confirm-1", "s-confirm", "ds", &spec, &arms, &seeds).unwrap();
        assert_eq!(jobs.len(), 9);
        for (i, j) in jobs.iter().enumerate() {
            assert_eq!(j.seed, seeds[i / 3]);
            assert_eq!(j.strategy, arms[i % 3].strategy);
            assert_eq!(j.training, spec.training);
            assert_eq!(j.study, "s-confirm");
            assert!(j.final_model.is_none() && j.validation.is_none());
        }
        assert_eq!(jobs[4].job_id, "s-confirm-1-a1-1");
        let dice = vec![
            vec![Some(0.80), Some(0.84), Some(0.82)],
            vec![Some(0.78), Some(0.80), Some(0.83)],
            vec![Some(0.70), None, Some(0.72)],
        ];
        let c = summarize(
            "s",
            "s-confirm-1",
            "s-confirm",
            "ds",
            &spec,
            &seeds,
            &arms,
            &jobs,
            dice,
            1.0,
        );
        assert_eq!(
            c.arms[0].job_ids,
            ["s-confirm-1-w1-0", "s-confirm-1-w1-1", "s-confirm-1-w1-2"]
        );
        assert!((c.arms[0].mean - 0.82).abs() < 1e-12 && (c.arms[0].sd - 0.02).abs() < 1e-12);
        assert_eq!(c.comparisons.len(), 2);
        let (abl, rou) = (&c.comparisons[0], &c.comparisons[1]);
        assert_eq!(
            (abl.arm.as_str(), abl.baseline.as_str()),
            ("top1", "top1-noaug")
        );
        assert!((abl.ci95[0] + 0.045849).abs() < 1e-6 && (abl.ci95[1] - 0.079183).abs() < 1e-6);
        // Seed 1 of the routine failed: two pairs, 0.10 and 0.10, sd 0, interval [0.1, 0.1].
        assert_eq!(rou.baseline, "routine");
        assert_eq!(rou.diffs.len(), 2);
        assert!((rou.mean - 0.10).abs() < 1e-12);
        let text = render(&c);
        assert!(text.contains("failed"), "{text}");
        assert!(
            text.contains("does not beat no augmentation beyond the seeds' noise"),
            "{text}"
        );
        let job_too_long = plan_jobs(&"x".repeat(60), "s-confirm", "ds", &spec, &arms, &seeds);
        assert!(job_too_long.is_err());
    }

    #[test]
    fn verdicts_say_which_way_and_by_how_much() {
        let cmp = |mean: f64, ci95: [f64; 2]| ConfirmComparison {
            arm: "top1".into(),
            baseline: "top1-noaug".into(),
            diffs: vec![mean; 3],
            mean,
            sd: 0.01,
            ci95,
        };
        let up = verdict(&cmp(0.05, [0.02, 0.08]));
        assert!(up.contains("beats no augmentation by 0.0500"), "{up}");
        let down = verdict(&cmp(-0.03, [-0.05, -0.01]));
        assert!(
            down.contains("no augmentation beats its augmentation by 0.0300"),
            "{down}"
        );
        // Whether the winner beats the routine strategy is the other comparison's business:
        // this sentence only reads the ablation's interval.
        assert!(!down.contains("routine"), "{down}");
        let flat = verdict(&cmp(0.01, [-0.02, 0.04]));
        assert!(flat.contains("interval holds 0"), "{flat}");
    }
}
