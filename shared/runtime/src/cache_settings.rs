//! The case cache settings every service that reads datasets (trainer, evaluator) takes.

/// Default `SEGTUNE_CACHE_DIR`: beside the default store (`./segtune-data/store`).
pub const DEFAULT_CACHE_DIR: &str = "./segtune-data/cache";
/// Default `SEGTUNE_CACHE_MAX_BYTES`.
pub const DEFAULT_CACHE_MAX_BYTES: &str = "64GiB";
/// Default `SEGTUNE_CACHE_MEMORY_BUDGET`.
pub const DEFAULT_CACHE_MEMORY_BUDGET: &str = "1GiB";

/// Where this host keeps its case cache and how datasets are held (`#[command(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CacheSettings {
    /// The host's case cache folder: preprocessed cases fetched once per host, mapped by
    /// every trainer and evaluator on it (mount one volume into all of them).
    #[arg(long, env = "SEGTUNE_CACHE_DIR", default_value = DEFAULT_CACHE_DIR)]
    pub cache_dir: String,
    /// Bound of the case cache folder (bytes; K, M, G, T suffixes are powers of 1024):
    /// least recently used cases are evicted, never one a running job has mapped.
    #[arg(long, env = "SEGTUNE_CACHE_MAX_BYTES", default_value = DEFAULT_CACHE_MAX_BYTES,
          value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
    /// Datasets whose decoded size is at most this are held in memory; larger ones are
    /// mapped from the case cache (same suffixes).
    #[arg(long, env = "SEGTUNE_CACHE_MEMORY_BUDGET", default_value = DEFAULT_CACHE_MEMORY_BUDGET,
          value_parser = parse_bytes)]
    pub cache_memory_budget: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            cache_dir: DEFAULT_CACHE_DIR.into(),
            cache_max_bytes: parse_bytes(DEFAULT_CACHE_MAX_BYTES).expect("default parses"),
            cache_memory_budget: parse_bytes(DEFAULT_CACHE_MEMORY_BUDGET).expect("default parses"),
        }
    }
}

impl CacheSettings {
    /// The cache folder must be named.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::ensure_set("--cache-dir", "SEGTUNE_CACHE_DIR", &self.cache_dir)
    }
}

/// A byte count: digits, optionally followed by K, M, G or T (powers of 1024; `KiB`, `GB`,
/// `g` are accepted alike).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a byte count such as 1073741824, 512M or 64G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_binary_suffixes_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("64GiB"), Ok(64 << 30));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_bytes("G").unwrap_err().contains("\"G\""));
        assert!(
            parse_bytes("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
