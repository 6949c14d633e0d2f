//! The two reference searchers: `random` (uniform over the unit cube) and `fixed` (the paper's
//! "routine" strategy, every job the same).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::searcher::{Ledger, foreign};
use crate::settings::resolve;
use crate::{Memo, Proposal, Rng, SearchError, Searcher, SearcherState, SettingInfo, WarmStart};

/// Uniform random search over [0, 1]^K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomSearch {
    dims: usize,
    ledger: Ledger,
    rng: Rng,
}

impl RandomSearch {
    pub const KIND: &'static str = "random";
    pub const SETTINGS: &'static [SettingInfo] = &[];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        resolve(Self::KIND, Self::SETTINGS, settings)?;
        Ok(Self {
            dims,
            ledger: Ledger::new(),
            rng: Rng::seed_from_u64(seed),
        })
    }
}

impl Searcher for RandomSearch {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let ticket = self.ledger.issue();
        let unit = (0..self.dims).map(|_| self.rng.uniform()).collect();
        Proposal {
            ticket,
            unit,
            memo: Memo::Plain,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        plain_settle(
            &mut self.ledger,
            Self::KIND,
            self.dims,
            proposal,
            Some(reward),
        )
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        plain_settle(&mut self.ledger, Self::KIND, self.dims, proposal, None)
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    /// Uniform draws do not depend on rewards: the observations are checked and left out.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        from.checked(Self::KIND, self.dims, self.ledger.fresh())?;
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::Random(self.clone())
    }
}

/// The same strategy every time: [`crate::SearchSpace::routine_unit`] (0.5 everywhere, the
/// learning rate at 1e-4) when built by [`crate::build`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fixed {
    unit: Vec<f64>,
    ledger: Ledger,
}

impl Fixed {
    pub const KIND: &'static str = "fixed";
    pub const SETTINGS: &'static [SettingInfo] = &[];

    /// Always proposes `unit` (clamped to [0, 1]).
    pub fn new(unit: Vec<f64>, settings: &BTreeMap<String, f64>) -> Result<Self, SearchError> {
        resolve(Self::KIND, Self::SETTINGS, settings)?;
        Ok(Self {
            unit: unit.into_iter().map(|u| u.clamp(0.0, 1.0)).collect(),
            ledger: Ledger::new(),
        })
    }
}

impl Searcher for Fixed {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.unit.len()
    }

    fn propose(&mut self) -> Proposal {
        Proposal {
            ticket: self.ledger.issue(),
            unit: self.unit.clone(),
            memo: Memo::Plain,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        plain_settle(
            &mut self.ledger,
            Self::KIND,
            self.unit.len(),
            proposal,
            Some(reward),
        )
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        plain_settle(
            &mut self.ledger,
            Self::KIND,
            self.unit.len(),
            proposal,
            None,
        )
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    /// Nothing to explore: converged from the start.
    fn converged(&self) -> bool {
        true
    }

    /// The routine strategy learns nothing: a warm start would be silently meaningless.
    fn warm_start(&mut self, _from: &WarmStart) -> Result<(), SearchError> {
        Err(SearchError::WarmStart {
            searcher: Self::KIND,
            reason: "it trains the routine strategy every time and learns nothing".into(),
        })
    }

    fn state(&self) -> SearcherState {
        SearcherState::Fixed(self.clone())
    }
}

fn plain_settle(
    ledger: &mut Ledger,
    kind: &'static str,
    dims: usize,
    proposal: &Proposal,
    reward: Option<f64>,
) -> Result<(), SearchError> {
    ledger.check(kind, dims, proposal, reward)?;
    if proposal.memo != Memo::Plain {
        return Err(foreign(kind, proposal));
    }
    ledger.settle(proposal, reward);
    Ok(())
}
