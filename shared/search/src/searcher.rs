//! The ask/tell interface, the proposal a caller keeps with each job, the factory and the saved
//! state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cmaes::CmaEs;
use crate::hill::{HillContinuous, HillDiscrete};
use crate::ppo::PpoRnn;
use crate::simple::{Fixed, RandomSearch};
use crate::tpe::Tpe;
use crate::{SearchError, SearchSpace, SettingInfo};

/// Every searcher kind [`build`] knows.
pub const KINDS: [&str; 7] = [
    PpoRnn::KIND,
    Tpe::KIND,
    CmaEs::KIND,
    HillDiscrete::KIND,
    HillContinuous::KIND,
    RandomSearch::KIND,
    Fixed::KIND,
];

/// One strategy to try. The caller keeps it with the job (it is serde, store it as it is) and
/// hands it back to [`Searcher::observe`] with the job's reward, in any order: everything the
/// searcher needs to learn from the job travels in the proposal, not in the searcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Unique per searcher, increasing from 0 in issue order.
    pub ticket: u64,
    /// The strategy in unit coordinates, one value per dimension, each in [0, 1]; map it with
    /// [`SearchSpace::strategy`].
    pub unit: Vec<f64>,
    pub memo: Memo,
}

/// What a searcher remembers about a proposal until its reward comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Memo {
    /// `random`, `fixed`: nothing.
    Plain,
    /// `tpe`: nothing beyond the point (the searcher keeps the points still out for the
    /// constant liar).
    Tpe,
    /// `cmaes`: the generation the point was drawn from; only rewards of the current
    /// generation update the distribution.
    Cma { generation: u64 },
    /// `ppo-rnn`: the RNN input C_{i-1} and hidden state h_{i-1} the action was drawn from, and
    /// the action's log-probability under the policy of that moment (PPO's "old" policy).
    Policy {
        input: Vec<f64>,
        hidden: Vec<f64>,
        log_prob: f64,
    },
    /// Hill climbers: the starting point.
    Start,
    /// Hill climbers: a coordinate move of `dir` (±1) × `step` along `dim`.
    Step { dim: usize, dir: i8, step: f64 },
    /// Hill climbers: the incumbent again, when no move is left to try (converged, or every
    /// move is already out).
    Repeat,
}

/// An ask/tell searcher over the unit cube [0, 1]^K. Deterministic for a given seed and call
/// sequence; [`Searcher::save`] + [`restore`] continue bit-for-bit.
pub trait Searcher: Send + std::fmt::Debug {
    /// The name [`build`] knows it by.
    fn kind(&self) -> &'static str;
    /// K, the number of dimensions.
    fn dims(&self) -> usize;
    /// The next strategy to try. Never blocks: a caller running n jobs calls it n times before
    /// the first `observe` (the paper's random initialization C_1..C_n).
    fn propose(&mut self) -> Proposal;
    /// The reward of a finished proposal; proposals may come back in any order. Errors (and
    /// changes nothing) for a proposal that is not outstanding, made by another searcher,
    /// of the wrong length, or a non-finite reward.
    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError>;
    /// The proposal's job failed for good and will never have a reward: forget it (a hill
    /// climber puts the move back in its queue).
    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError>;
    /// The best observed proposal (unit coordinates) and its reward; the first one wins ties.
    fn best(&self) -> Option<(Vec<f64>, f64)>;
    /// Proposals issued and neither observed nor abandoned.
    fn outstanding(&self) -> usize;
    /// True when the searcher has stopped exploring (hill climbers at a local optimum); from
    /// then on it proposes its incumbent again. Always false for the others.
    fn converged(&self) -> bool {
        false
    }
    /// Seeds a fresh searcher (nothing proposed yet) with what an earlier study on the same
    /// space learned (a study file's `warm_start`). `tpe` takes the observations as its
    /// oldest points (they count towards `startup`), `cmaes` starts from the distribution of
    /// their best tenth (Optuna's WS-CMA-ES), the hill climbers start from the best one,
    /// `random` has nothing to learn from them, `ppo-rnn` starts from the earlier study's
    /// policy (weights, optimizer, baseline) and `fixed` refuses. The observations never
    /// count as this study's rewards: [`Searcher::best`] stays this study's own.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError>;
    /// The whole state, including the random generator.
    fn state(&self) -> SearcherState;
    /// [`Searcher::state`] as MessagePack (named fields); [`restore`] reads it.
    fn save(&self) -> Vec<u8> {
        self.state().encode()
    }
}

/// What a new study takes from an earlier one on the same space ([`Searcher::warm_start`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmStart {
    /// The earlier study's rewarded strategies in unit coordinates with their rewards, in the
    /// order they were counted.
    pub observations: Vec<(Vec<f64>, f64)>,
    /// The earlier study's searcher as it was saved (`ppo-rnn` takes its policy from it).
    pub state: Option<SearcherState>,
}

impl WarmStart {
    /// The observations checked against a searcher of `dims` dimensions that has proposed
    /// nothing yet (`fresh`): one value per dimension, finite, clamped to [0, 1]; finite
    /// rewards.
    pub(crate) fn checked(
        &self,
        searcher: &'static str,
        dims: usize,
        fresh: bool,
    ) -> Result<Vec<(Vec<f64>, f64)>, SearchError> {
        let refuse = |reason: String| SearchError::WarmStart { searcher, reason };
        if !fresh {
            return Err(refuse("it has already proposed strategies".into()));
        }
        self.observations
            .iter()
            .enumerate()
            .map(|(i, (unit, reward))| {
                if unit.len() != dims {
                    return Err(refuse(format!(
                        "observation {i} has {} values, the space has {dims} dimensions",
                        unit.len()
                    )));
                }
                if !reward.is_finite() || unit.iter().any(|u| !u.is_finite()) {
                    return Err(refuse(format!("observation {i} is not finite")));
                }
                Ok((unit.iter().map(|u| u.clamp(0.0, 1.0)).collect(), *reward))
            })
            .collect()
    }

    /// The checked observations, best first (stable: the earlier of equal rewards first).
    pub(crate) fn best_first(
        &self,
        searcher: &'static str,
        dims: usize,
        fresh: bool,
    ) -> Result<Vec<(Vec<f64>, f64)>, SearchError> {
        let mut obs = self.checked(searcher, dims, fresh)?;
        obs.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(obs)
    }
}

/// A searcher's complete state, tagged with its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SearcherState {
    #[serde(rename = "ppo-rnn")]
    PpoRnn(PpoRnn),
    #[serde(rename = "tpe")]
    Tpe(Tpe),
    #[serde(rename = "cmaes")]
    CmaEs(CmaEs),
    #[serde(rename = "hill-discrete")]
    HillDiscrete(HillDiscrete),
    #[serde(rename = "hill-continuous")]
    HillContinuous(HillContinuous),
    #[serde(rename = "random")]
    Random(RandomSearch),
    #[serde(rename = "fixed")]
    Fixed(Fixed),
}

/// Version of the saved-state layout.
const STATE_SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Saved {
    schema: u32,
    state: SearcherState,
}

impl SearcherState {
    pub fn kind(&self) -> &'static str {
        match self {
            SearcherState::PpoRnn(_) => PpoRnn::KIND,
            SearcherState::Tpe(_) => Tpe::KIND,
            SearcherState::CmaEs(_) => CmaEs::KIND,
            SearcherState::HillDiscrete(_) => HillDiscrete::KIND,
            SearcherState::HillContinuous(_) => HillContinuous::KIND,
            SearcherState::Random(_) => RandomSearch::KIND,
            SearcherState::Fixed(_) => Fixed::KIND,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct SavedRef<'a> {
            schema: u32,
            state: &'a SearcherState,
        }
        // Plain data (numbers, vectors, maps): encoding cannot fail.
        rmp_serde::to_vec_named(&SavedRef {
            schema: STATE_SCHEMA,
            state: self,
        })
        .expect("searcher state encodes as MessagePack")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SearchError> {
        let saved: Saved = rmp_serde::from_slice(bytes).map_err(|e| SearchError::Decode {
            len: bytes.len(),
            reason: e.to_string(),
        })?;
        if saved.schema != STATE_SCHEMA {
            return Err(SearchError::Decode {
                len: bytes.len(),
                reason: format!(
                    "state schema {} (this build reads {STATE_SCHEMA})",
                    saved.schema
                ),
            });
        }
        Ok(saved.state)
    }

    pub fn into_searcher(self) -> Box<dyn Searcher> {
        match self {
            SearcherState::PpoRnn(s) => Box::new(s),
            SearcherState::Tpe(s) => Box::new(s),
            SearcherState::CmaEs(s) => Box::new(s),
            SearcherState::HillDiscrete(s) => Box::new(s),
            SearcherState::HillContinuous(s) => Box::new(s),
            SearcherState::Random(s) => Box::new(s),
            SearcherState::Fixed(s) => Box::new(s),
        }
    }
}

/// A searcher of `kind` over `space`, seeded. `settings` override the defaults listed by
/// [`settings_of`]; unknown kinds or setting names are errors that list the valid ones.
pub fn build(
    kind: &str,
    space: &SearchSpace,
    settings: &BTreeMap<String, f64>,
    seed: u64,
) -> Result<Box<dyn Searcher>, SearchError> {
    let dims = space.len();
    Ok(match kind {
        PpoRnn::KIND => Box::new(PpoRnn::new(dims, settings, seed)?),
        Tpe::KIND => Box::new(Tpe::new(dims, settings, seed)?),
        CmaEs::KIND => Box::new(CmaEs::new(dims, settings, seed)?),
        HillDiscrete::KIND => Box::new(HillDiscrete::new(dims, settings, seed)?),
        HillContinuous::KIND => Box::new(HillContinuous::new(dims, settings, seed)?),
        RandomSearch::KIND => Box::new(RandomSearch::new(dims, settings, seed)?),
        Fixed::KIND => Box::new(Fixed::new(space.routine_unit(), settings)?),
        _ => return Err(unknown(kind)),
    })
}

/// The settings `kind` accepts, with defaults and a one-line description each.
pub fn settings_of(kind: &str) -> Result<&'static [SettingInfo], SearchError> {
    Ok(match kind {
        PpoRnn::KIND => PpoRnn::SETTINGS,
        Tpe::KIND => Tpe::SETTINGS,
        CmaEs::KIND => CmaEs::SETTINGS,
        HillDiscrete::KIND => HillDiscrete::SETTINGS,
        HillContinuous::KIND => HillContinuous::SETTINGS,
        RandomSearch::KIND => RandomSearch::SETTINGS,
        Fixed::KIND => Fixed::SETTINGS,
        _ => return Err(unknown(kind)),
    })
}

/// A searcher saved by [`Searcher::save`], which must be of `kind`; it continues exactly where
/// the saved one was (same proposals, same tickets, same random draws).
pub fn restore(kind: &str, bytes: &[u8]) -> Result<Box<dyn Searcher>, SearchError> {
    if !KINDS.contains(&kind) {
        return Err(unknown(kind));
    }
    let state = SearcherState::decode(bytes)?;
    if state.kind() != kind {
        return Err(SearchError::KindMismatch {
            expected: kind.to_owned(),
            found: state.kind(),
        });
    }
    Ok(state.into_searcher())
}

fn unknown(kind: &str) -> SearchError {
    SearchError::UnknownSearcher {
        kind: kind.to_owned(),
        valid: KINDS.to_vec(),
    }
}

/// Bookkeeping every searcher shares: tickets, outstanding proposals, the incumbent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    next_ticket: u64,
    outstanding: BTreeSet<u64>,
    best: Option<(Vec<f64>, f64)>,
    observed: u64,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            next_ticket: 0,
            outstanding: BTreeSet::new(),
            best: None,
            observed: 0,
        }
    }

    /// Nothing issued yet: the searcher may still be warm-started.
    pub(crate) fn fresh(&self) -> bool {
        self.next_ticket == 0
    }

    /// Uses up a ticket without a proposal (a warm-start point takes it, so this study's own
    /// proposals come after it).
    pub(crate) fn skip(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    pub(crate) fn issue(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.outstanding.insert(t);
        t
    }

    /// Checks that `proposal` may be settled now, without changing anything.
    pub(crate) fn check(
        &self,
        searcher: &'static str,
        dims: usize,
        proposal: &Proposal,
        reward: Option<f64>,
    ) -> Result<(), SearchError> {
        let ticket = proposal.ticket;
        if !self.outstanding.contains(&ticket) {
            return Err(SearchError::UnknownTicket { searcher, ticket });
        }
        if proposal.unit.len() != dims {
            return Err(SearchError::DimensionMismatch {
                searcher,
                ticket,
                expected: dims,
                got: proposal.unit.len(),
            });
        }
        if let Some(reward) = reward
            && !reward.is_finite()
        {
            return Err(SearchError::NonFiniteReward {
                searcher,
                ticket,
                reward,
            });
        }
        Ok(())
    }

    /// Marks the proposal settled; with a reward, also updates the incumbent.
    pub(crate) fn settle(&mut self, proposal: &Proposal, reward: Option<f64>) {
        self.outstanding.remove(&proposal.ticket);
        if let Some(r) = reward {
            self.observed += 1;
            if self.best.as_ref().is_none_or(|(_, b)| r > *b) {
                self.best = Some((proposal.unit.clone(), r));
            }
        }
    }

    pub(crate) fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.best.clone()
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// The error for a proposal whose memo belongs to another searcher kind.
pub(crate) fn foreign(searcher: &'static str, proposal: &Proposal) -> SearchError {
    SearchError::ForeignProposal {
        searcher,
        ticket: proposal.ticket,
    }
}
