//! The `main` of every service, so that all four parse, fail and exit the same way.

use std::{future::Future, pin::Pin, process::exit};

/// A service's settings, checked after parsing for what clap cannot check (ranges, counts,
/// URLs left empty).
pub trait Validate {
    /// The error names the flag and its env var and says what is allowed.
    fn validate(&self) -> anyhow::Result<()>;
}

/// Fails unless `value`, the setting `flag` (env var `env`), is more than white space.
pub fn ensure_set(flag: &str, env: &str, value: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!value.trim().is_empty(), "{flag} ({env}) must not be empty");
    Ok(())
}

/// What a service's `run` is handed to stop on: SIGINT or SIGTERM ([`crate::shutdown_signal`]).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sets the SIMD level the compute loops run at from `SEGTUNE_SIMD` (see the `simd` crate) and
/// logs it; an unknown value is a configuration error (exit 64), a level above the host's a
/// warning (the host's best is used).
pub fn configure_simd(name: &str) {
    match simd::configure_from_env() {
        Ok(sel) if sel.capped() => tracing::warn!("{sel}"),
        Ok(sel) => tracing::info!("{sel}"),
        Err(e) => {
            eprintln!("{name}: {e}");
            exit(64);
        }
    }
}

/// Runs a service the way every segtune service runs: tracing to stderr; settings from flags
/// and `SEGTUNE_*` env vars, then [`Validate`]d; `connect` (waits for the broker); `run`
/// until SIGINT/SIGTERM; the SIMD level from `SEGTUNE_SIMD` ([`configure_simd`]). Exit status:
/// 64 (EX_USAGE) on a config error, 69 (EX_UNAVAILABLE)
/// when `connect` fails, 1 when `run` fails; `--help` and `--version` print on stdout and
/// exit 0. Errors go to stderr prefixed with the command's name.
pub async fn service_main<S, A>(
    connect: impl AsyncFnOnce(&S) -> anyhow::Result<A>,
    run: impl AsyncFnOnce(A, Shutdown) -> anyhow::Result<()>,
) where
    S: clap::Parser + Validate,
{
    crate::init_tracing();
    let name = <S as clap::CommandFactory>::command()
        .get_name()
        .to_string();
    let settings = match S::try_parse() {
        Ok(s) => s,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            exit(64);
        }
        Err(e) => {
            print!("{e}");
            return;
        }
    };
    if let Err(e) = settings.validate() {
        eprintln!("{name}: {e:#}");
        exit(64);
    }
    configure_simd(&name);
    let app = match connect(&settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            exit(69);
        }
    };
    if let Err(e) = run(app, Box::pin(crate::shutdown_signal())).await {
        eprintln!("{name}: {e:#}");
        exit(1);
    }
}
