//! The follower: the study's events and rewards replayed from the start, the trainers'
//! progress live, folded into the [`View`] until the study is done or failed.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use protocol::{Progress, Reward, StudyEvent, StudyEventKind, subjects};

use super::{
    super::bus,
    FollowOptions, Outcome, Output,
    state::{Finish, View},
    write_strategy_file,
};

/// Follows `study` until it is done (the outcome) or failed (an error).
pub async fn follow(
    client: &async_nats::Client,
    js: &jetstream::Context,
    study: &str,
    opts: &FollowOptions,
) -> anyhow::Result<Outcome> {
    // Progress first: it is core NATS, so only what comes after the subscription is seen.
    let mut progress = client
        .subscribe(subjects::progress_all(study))
        .await
        .context("subscribing to progress")?;
    // The last event stored when we attach: a `done` before it was followed by `extended`
    // (the study went on), so only a `done` at or after it ends the follow.
    let (mut events, replay_end) =
        bus::replay_consumer(js, subjects::stream::EVENTS, &subjects::study_events(study)).await?;
    let (mut rewards, _) =
        bus::replay_consumer(js, subjects::stream::REWARDS, &subjects::rewards(study)).await?;
    let mut view = View::new(study, opts.output);
    let give_up = opts.start_timeout.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let finish = loop {
        tokio::select! {
            m = events.next() => {
                let msg = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => anyhow::bail!("reading the events of study {study}: {e}"),
                    None => anyhow::bail!("the event stream of study {study} ended"),
                };
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
                match protocol::decode::<StudyEvent>(&msg.payload) {
                    Ok(ev) => {
                        let superseded = matches!(ev.event, StudyEventKind::Done { .. })
                            && replay_end.is_some_and(|end| seq < end);
                        if let Some(f) = view.event(ev)
                            && !superseded
                        {
                            break f;
                        }
                    }
                    Err(e) => view.note(&format!("skipping an undecodable event: {e}")),
                }
            }
            Some(Ok(msg)) = rewards.next() => {
                if let Ok(r) = protocol::decode::<Reward>(&msg.payload) {
                    view.reward(r);
                }
            }
            Some(msg) = progress.next() => {
                if let Ok(p) = protocol::decode::<Progress>(&msg.payload) {
                    view.progress(p);
                }
            }
            _ = tick.tick() => {
                if view.events == 0
                    && let Some(t) = give_up
                    && tokio::time::Instant::now() >= t
                {
                    view.clear();
                    anyhow::bail!(
                        "no events for study {study} within {:.0} s: no such study on this \
                         NATS server (check the id `segtune study submit` printed), or it is \
                         still preparing its dataset (retry with --wait-start 120)",
                        opts.start_timeout.unwrap_or_default().as_secs_f64()
                    );
                }
                view.redraw();
            }
        }
    };
    if let Finish::Done(_) = &finish {
        // The rewards replay apart from the events, so the done event can come before the
        // last rewards (always so when attaching to a finished study): read them, briefly, so
        // the final table has every job's trainer and per-class Dice.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while view.awaiting_rewards() {
            match tokio::time::timeout_at(until, rewards.next()).await {
                Ok(Some(Ok(msg))) => {
                    if let Ok(r) = protocol::decode::<Reward>(&msg.payload) {
                        view.reward(r);
                    }
                }
                _ => break,
            }
        }
    }
    view.clear();
    match finish {
        Finish::Failed(reason) => {
            view.summary(None);
            anyhow::bail!("study {study} failed: {reason}")
        }
        Finish::Done(outcome) => {
            view.summary(Some(&outcome));
            if let Some(path) = &opts.best_file {
                write_strategy_file(path, &outcome)?;
                if view.output != Output::Quiet {
                    println!("best strategy written to {}", path.display());
                }
            }
            Ok(outcome)
        }
    }
}
