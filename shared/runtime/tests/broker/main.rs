//! Authentication and TLS against a real nats-server per test: each method of
//! `runtime::NatsSettings` is accepted with the right secret and refused with a wrong one,
//! and a server that requires TLS refuses plaintext and clients that do not trust its CA.
//! `worker`: how the worker loop settles a message for each verdict of its handler.

mod auth;
mod creds;
mod tls;
mod worker;

use std::time::Duration;

/// An env for `NatsSettings::from_env`, plus a temp dir for the files it names.
pub struct Env {
    pub dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
}

impl Env {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        }
    }

    pub fn set(mut self, var: &'static str, value: impl Into<String>) -> Self {
        self.vars.push((var, value.into()));
        self
    }

    /// Writes `contents` to a file named after `var` and sets `var` to its path.
    pub fn file(self, var: &'static str, contents: &str) -> Self {
        let path = self.dir.path().join(var);
        std::fs::write(&path, contents).unwrap();
        let path = path.display().to_string();
        self.set(var, path)
    }

    /// Connects once to `url` with these settings, the way the CLI does (no retry).
    pub async fn connect(&self, url: &str) -> Result<async_nats::Client, String> {
        let settings = runtime::NatsSettings::from_env(url, |k| {
            self.vars
                .iter()
                .find(|(v, _)| *v == k)
                .map(|(_, x)| x.clone())
        })
        .map_err(|e| e.to_string())?;
        let client = settings
            .connect_options()
            .connection_timeout(Duration::from_secs(3))
            .connect(runtime::servers(&settings.url))
            .await
            .map_err(|e| e.to_string())?;
        // A round trip: the server has processed CONNECT (and said no, if it does).
        client.flush().await.map_err(|e| e.to_string())?;
        Ok(client)
    }
}
