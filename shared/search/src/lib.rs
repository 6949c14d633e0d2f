//! Search spaces and ask/tell searchers for training strategies (the method: `docs/method.md`).
//!
//! A [`SearchSpace`] maps named knobs to the unit cube [0, 1]^K; a [`Searcher`] proposes
//! points of the cube and learns from their rewards. The caller (the controller service) owns
//! the loop of the paper's Algorithm 1: it calls [`Searcher::propose`] `parallel` times, keeps
//! each [`Proposal`] with its job, and on each reward calls [`Searcher::observe`] and proposes
//! one more. Rewards may come back in any order. [`Searcher::save`] and [`restore`] persist a
//! searcher exactly (random generator included). No NATS, no async: plain data in and out.
//!
//! Searchers ([`build`] by name): `ppo-rnn` (the paper's RNN controller trained with PPO,
//! [`PpoRnn`]), `tpe` (Optuna's default TPE with the constant liar, [`Tpe`]), `cmaes`
//! (CMA-ES as Optuna runs it, [`CmaEs`]), `hill-discrete` and `hill-continuous` (the paper's
//! baselines), `random`, `fixed` (the paper's routine strategy).
//!
//! [`prune`]: the pruners (`none`, `median`, `asha`) that stop weak jobs early from their
//! intermediate validation Dice, with state persisted the same way.

mod cmaes;
mod error;
mod hill;
mod ppo;
pub mod prune;
mod rng;
mod searcher;
mod settings;
mod simple;
mod space;
pub mod special;
mod tpe;

pub use cmaes::{CmaEs, CmaSettings};
pub use error::{SearchError, SpaceError};
pub use hill::{HillContinuous, HillDiscrete};
pub use ppo::{PpoRnn, PpoSettings};
pub use prune::{Decision, Ending, Pruner};
pub use rng::Rng;
pub use searcher::{
    KINDS, Memo, Proposal, Searcher, SearcherState, WarmStart, build, restore, settings_of,
};
pub use settings::{Rule, SettingInfo};
pub use simple::{Fixed, RandomSearch};
pub use space::SearchSpace;
pub use tpe::{Tpe, TpeSettings};
