//! The paper's baselines (section 4): discrete and continuous hill climbing, coordinate-wise,
//! both starting at 0.5 in every dimension and stopping at a local optimum.
//!
//! Parallel, out-of-order operation: the climber keeps an incumbent (the best point observed
//! so far, the "center") and a queue of untried coordinate moves from it. Each `propose` takes
//! the next move, so n parallel jobs evaluate n neighbours at once. Each `observe` compares the
//! reward with the incumbent's, whatever center the proposal was made from: a better point
//! becomes the center (and its move is tried again first: momentum along a coordinate), a
//! worse one is only recorded. With one job at a time this is plain first-improvement
//! coordinate hill climbing. When the queue is empty while moves are still out, or after
//! convergence, `propose` re-proposes the incumbent ([`Memo::Repeat`]): a hill climber has
//! nothing else to offer, and the rerun measures the incumbent's noise.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::searcher::{Ledger, foreign};
use crate::settings::{Rule, resolve};
use crate::{Memo, Proposal, Rng, SearchError, Searcher, SearcherState, SettingInfo, WarmStart};

fn all_moves(dims: usize, rng: &mut Rng, first: Option<(usize, i8)>) -> VecDeque<(usize, i8)> {
    let mut moves: Vec<(usize, i8)> = (0..dims).flat_map(|d| [(d, 1), (d, -1)]).collect();
    rng.shuffle(&mut moves);
    if let Some(m) = first {
        moves.retain(|&x| x != m);
        moves.insert(0, m);
    }
    moves.into()
}

fn improves(incumbent: Option<f64>, reward: f64) -> bool {
    incumbent.is_none_or(|c| reward > c)
}

/// Hill climbing on a grid of `bins` steps per dimension (the paper: 100 bins, step 0.01),
/// values clamped to [0, 1]. Points already evaluated or out are never proposed again as
/// moves; converged when no neighbour of the incumbent is left to try and nothing is out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HillDiscrete {
    bins: u32,
    dims: usize,
    center: Vec<u32>,
    center_reward: Option<f64>,
    start_issued: bool,
    queue: VecDeque<(usize, i8)>,
    /// Outstanding starts and moves: ticket → grid point.
    pending: BTreeMap<u64, Vec<u32>>,
    /// Best reward seen per evaluated grid point.
    visited: BTreeMap<Vec<u32>, f64>,
    ledger: Ledger,
    rng: Rng,
}

impl HillDiscrete {
    pub const KIND: &'static str = "hill-discrete";
    pub const SETTINGS: &'static [SettingInfo] = &[SettingInfo {
        name: "bins",
        default: 100.0,
        rule: Rule::Count,
        doc: "grid steps per dimension; a move is 1/bins",
    }];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let s = resolve(Self::KIND, Self::SETTINGS, settings)?;
        let bins = s[0] as u32;
        let mut rng = Rng::seed_from_u64(seed);
        let queue = all_moves(dims, &mut rng, None);
        Ok(Self {
            bins,
            dims,
            center: vec![(bins as f64 * 0.5).round() as u32; dims],
            center_reward: None,
            start_issued: false,
            queue,
            pending: BTreeMap::new(),
            visited: BTreeMap::new(),
            ledger: Ledger::new(),
            rng,
        })
    }

    fn unit_of(&self, p: &[u32]) -> Vec<f64> {
        p.iter().map(|&c| c as f64 / self.bins as f64).collect()
    }

    fn grid_of(&self, unit: &[f64]) -> Vec<u32> {
        unit.iter()
            .map(|&u| (u.clamp(0.0, 1.0) * self.bins as f64).round() as u32)
            .collect()
    }

    /// The neighbour of the center along `(dim, dir)`, if it exists and is neither evaluated
    /// nor out.
    fn neighbour(&self, (dim, dir): (usize, i8)) -> Option<Vec<u32>> {
        let c = self.center[dim];
        let n = match dir {
            1 if c < self.bins => c + 1,
            -1 if c > 0 => c - 1,
            _ => return None,
        };
        let mut p = self.center.clone();
        p[dim] = n;
        let fresh = !self.visited.contains_key(&p) && !self.pending.values().any(|q| *q == p);
        fresh.then_some(p)
    }

    fn settle(&mut self, proposal: &Proposal, reward: Option<f64>) -> Result<(), SearchError> {
        self.ledger.check(Self::KIND, self.dims, proposal, reward)?;
        if !matches!(
            proposal.memo,
            Memo::Start | Memo::Step { .. } | Memo::Repeat
        ) {
            return Err(foreign(Self::KIND, proposal));
        }
        if let Memo::Step { dim, .. } = proposal.memo
            && dim >= self.dims
        {
            return Err(foreign(Self::KIND, proposal));
        }
        self.ledger.settle(proposal, reward);
        let point = self
            .pending
            .remove(&proposal.ticket)
            .unwrap_or_else(|| self.grid_of(&proposal.unit));
        let Some(reward) = reward else {
            // Abandoned: make the start or the move available again.
            match proposal.memo {
                Memo::Start => self.start_issued = false,
                Memo::Step { dim, dir, .. } => self.queue.push_front((dim, dir)),
                _ => {}
            }
            return Ok(());
        };
        let seen = self.visited.entry(point.clone()).or_insert(reward);
        *seen = seen.max(reward);
        if improves(self.center_reward, reward) {
            self.center_reward = Some(reward);
            if point != self.center {
                self.center = point;
                let again = match proposal.memo {
                    Memo::Step { dim, dir, .. } => Some((dim, dir)),
                    _ => None,
                };
                self.queue = all_moves(self.dims, &mut self.rng, again);
            }
        }
        Ok(())
    }
}

impl Searcher for HillDiscrete {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let ticket = self.ledger.issue();
        if !self.start_issued {
            self.start_issued = true;
            self.pending.insert(ticket, self.center.clone());
            return Proposal {
                ticket,
                unit: self.unit_of(&self.center),
                memo: Memo::Start,
            };
        }
        while let Some(m) = self.queue.pop_front() {
            if let Some(p) = self.neighbour(m) {
                let unit = self.unit_of(&p);
                self.pending.insert(ticket, p);
                return Proposal {
                    ticket,
                    unit,
                    memo: Memo::Step {
                        dim: m.0,
                        dir: m.1,
                        step: 1.0 / self.bins as f64,
                    },
                };
            }
        }
        Proposal {
            ticket,
            unit: self.unit_of(&self.center),
            memo: Memo::Repeat,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        self.settle(proposal, Some(reward))
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        self.settle(proposal, None)
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    fn converged(&self) -> bool {
        self.center_reward.is_some()
            && self.pending.is_empty()
            && self.queue.iter().all(|&m| self.neighbour(m).is_none())
    }

    /// Starts from the best observation (on this grid): the first proposal re-evaluates it
    /// in this study, the moves go out from there.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        let best = from.best_first(Self::KIND, self.dims, self.ledger.fresh())?;
        if let Some((unit, _)) = best.first() {
            self.center = self.grid_of(unit);
        }
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::HillDiscrete(self.clone())
    }
}

/// Continuous hill climbing with an adaptive step per dimension: ×`grow` after a move along it
/// improved the incumbent, ÷`grow` after one did not (the paper: 1.1). Converged when every
/// step is below `min_step` and nothing is out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HillContinuous {
    grow: f64,
    min_step: f64,
    dims: usize,
    center: Vec<f64>,
    center_reward: Option<f64>,
    start_issued: bool,
    steps: Vec<f64>,
    queue: VecDeque<(usize, i8)>,
    /// Outstanding starts and moves.
    pending: BTreeSet<u64>,
    ledger: Ledger,
    rng: Rng,
}

impl HillContinuous {
    pub const KIND: &'static str = "hill-continuous";
    pub const SETTINGS: &'static [SettingInfo] = &[
        SettingInfo {
            name: "step",
            default: 0.05,
            rule: Rule::Positive,
            doc: "initial step in unit coordinates, every dimension",
        },
        SettingInfo {
            name: "grow",
            default: 1.1,
            rule: Rule::AboveOne,
            doc: "step factor: ×grow after an improving move, ÷grow after a failed one",
        },
        SettingInfo {
            name: "min_step",
            default: 1e-3,
            rule: Rule::Positive,
            doc: "a dimension whose step fell below this is done; all done = converged",
        },
    ];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let s = resolve(Self::KIND, Self::SETTINGS, settings)?;
        let mut rng = Rng::seed_from_u64(seed);
        let queue = all_moves(dims, &mut rng, None);
        Ok(Self {
            grow: s[1],
            min_step: s[2],
            dims,
            center: vec![0.5; dims],
            center_reward: None,
            start_issued: false,
            steps: vec![s[0]; dims],
            queue,
            pending: BTreeSet::new(),
            ledger: Ledger::new(),
            rng,
        })
    }

    fn steps_done(&self) -> bool {
        self.steps.iter().all(|&s| s < self.min_step)
    }

    /// The moved coordinate for `(dim, dir)` from the center, if the step is still live and the
    /// move is not stopped by the boundary.
    fn target(&self, (dim, dir): (usize, i8)) -> Option<f64> {
        let step = self.steps[dim];
        if step < self.min_step {
            return None;
        }
        let c = self.center[dim];
        let t = (c + f64::from(dir) * step).clamp(0.0, 1.0);
        (t != c).then_some(t)
    }

    fn settle(&mut self, proposal: &Proposal, reward: Option<f64>) -> Result<(), SearchError> {
        self.ledger.check(Self::KIND, self.dims, proposal, reward)?;
        if !matches!(
            proposal.memo,
            Memo::Start | Memo::Step { .. } | Memo::Repeat
        ) {
            return Err(foreign(Self::KIND, proposal));
        }
        if let Memo::Step { dim, .. } = proposal.memo
            && dim >= self.dims
        {
            return Err(foreign(Self::KIND, proposal));
        }
        self.ledger.settle(proposal, reward);
        self.pending.remove(&proposal.ticket);
        let Some(reward) = reward else {
            match proposal.memo {
                Memo::Start => self.start_issued = false,
                Memo::Step { dim, dir, .. } => self.queue.push_front((dim, dir)),
                _ => {}
            }
            return Ok(());
        };
        let better = improves(self.center_reward, reward);
        if better {
            self.center = proposal.unit.iter().map(|u| u.clamp(0.0, 1.0)).collect();
            self.center_reward = Some(reward);
        }
        if let Memo::Step { dim, dir, .. } = proposal.memo {
            if better {
                self.steps[dim] *= self.grow;
                self.queue.retain(|&m| m != (dim, dir));
                self.queue.push_front((dim, dir));
            } else {
                self.steps[dim] /= self.grow;
            }
        }
        Ok(())
    }
}

impl Searcher for HillContinuous {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let ticket = self.ledger.issue();
        if !self.start_issued {
            self.start_issued = true;
            self.pending.insert(ticket);
            return Proposal {
                ticket,
                unit: self.center.clone(),
                memo: Memo::Start,
            };
        }
        if !self.steps_done() {
            // At most two refills: the first may only hold moves blocked by the boundary.
            for _ in 0..2 {
                if self.queue.is_empty() {
                    self.queue = all_moves(self.dims, &mut self.rng, None);
                }
                while let Some(m) = self.queue.pop_front() {
                    if let Some(t) = self.target(m) {
                        let mut unit = self.center.clone();
                        unit[m.0] = t;
                        self.pending.insert(ticket);
                        return Proposal {
                            ticket,
                            unit,
                            memo: Memo::Step {
                                dim: m.0,
                                dir: m.1,
                                step: self.steps[m.0],
                            },
                        };
                    }
                }
            }
        }
        Proposal {
            ticket,
            unit: self.center.clone(),
            memo: Memo::Repeat,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        self.settle(proposal, Some(reward))
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        self.settle(proposal, None)
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    fn converged(&self) -> bool {
        self.center_reward.is_some() && self.pending.is_empty() && self.steps_done()
    }

    /// Starts from the best observation: the first proposal re-evaluates it in this study,
    /// the moves go out from there with the initial steps.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        let best = from.best_first(Self::KIND, self.dims, self.ledger.fresh())?;
        if let Some((unit, _)) = best.first() {
            self.center = unit.clone();
        }
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::HillContinuous(self.clone())
    }
}
