//! Errors of the search crate. Every variant names what it is about (dimension, searcher,
//! setting, ticket) so the controller can report it without extra context.

/// A search space that cannot be built or a vector that does not fit it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    #[error("the search space has no dimensions")]
    Empty,
    #[error("dimension {index} has an empty name")]
    EmptyName { index: usize },
    #[error("dimension `{name}` appears more than once")]
    Duplicate { name: String },
    #[error("dimension `{name}`: {reason}")]
    Invalid { name: String, reason: String },
    #[error("expected {expected} values (one per dimension), got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("dimension `{name}`: value {value} is not finite")]
    NotFinite { name: String, value: f64 },
}

/// A searcher that cannot be built, restored or told something.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("unknown searcher `{kind}`; valid searchers: {}", valid.join(", "))]
    UnknownSearcher {
        kind: String,
        valid: Vec<&'static str>,
    },
    #[error(
        "searcher `{searcher}` has no setting `{name}`; valid settings: {}",
        list(valid)
    )]
    UnknownSetting {
        searcher: &'static str,
        name: String,
        valid: Vec<&'static str>,
    },
    #[error("searcher `{searcher}`: setting `{name}` = {value} is invalid: {reason}")]
    InvalidSetting {
        searcher: &'static str,
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(
        "searcher `{searcher}`: proposal {ticket} has {got} values, the searcher has {expected}"
    )]
    DimensionMismatch {
        searcher: &'static str,
        ticket: u64,
        expected: usize,
        got: usize,
    },
    #[error(
        "searcher `{searcher}`: proposal {ticket} is not outstanding \
         (never issued by this searcher, already observed or abandoned)"
    )]
    UnknownTicket { searcher: &'static str, ticket: u64 },
    #[error("searcher `{searcher}`: proposal {ticket} was made by another kind of searcher")]
    ForeignProposal { searcher: &'static str, ticket: u64 },
    #[error("searcher `{searcher}`: reward {reward} for proposal {ticket} is not finite")]
    NonFiniteReward {
        searcher: &'static str,
        ticket: u64,
        reward: f64,
    },
    #[error("cannot decode a searcher state from {len} bytes: {reason}")]
    Decode { len: usize, reason: String },
    #[error("searcher `{searcher}` cannot be warm-started: {reason}")]
    WarmStart {
        searcher: &'static str,
        reason: String,
    },
    #[error("the saved state is a `{found}` searcher, expected `{expected}`")]
    KindMismatch {
        expected: String,
        found: &'static str,
    },
}

fn list(valid: &[&str]) -> String {
    if valid.is_empty() {
        "(none)".to_owned()
    } else {
        valid.join(", ")
    }
}
