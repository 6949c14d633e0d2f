//! How a service authenticates to the broker and secures the connection: one of
//! user/password, token, NKey or a `.creds` file (JWT), and TLS with a private CA and
//! optionally a client certificate. Everything comes from `SEGTUNE_NATS*` env vars (secrets
//! directly or from files, so they can be Docker/Kubernetes secrets); nothing here ever
//! puts a secret in an error, a log line or a `Debug` output.

use std::path::{Path, PathBuf};

pub const ENV_NATS_USER: &str = "SEGTUNE_NATS_USER";
pub const ENV_NATS_PASSWORD: &str = "SEGTUNE_NATS_PASSWORD";
/// A file holding the password (a Docker/Kubernetes secret); one trailing newline is dropped.
pub const ENV_NATS_PASSWORD_FILE: &str = "SEGTUNE_NATS_PASSWORD_FILE";
pub const ENV_NATS_TOKEN: &str = "SEGTUNE_NATS_TOKEN";
pub const ENV_NATS_TOKEN_FILE: &str = "SEGTUNE_NATS_TOKEN_FILE";
/// A file holding an NKey user seed (`SU...`, as `nk -gen user` or `nsc` write it).
pub const ENV_NATS_NKEY_FILE: &str = "SEGTUNE_NATS_NKEY_FILE";
/// A `.creds` file (user JWT + NKey seed) for a server in operator/JWT mode.
pub const ENV_NATS_CREDS_FILE: &str = "SEGTUNE_NATS_CREDS_FILE";
/// A PEM file of the CA(s) that signed the server's certificate; setting it requires TLS.
pub const ENV_NATS_TLS_CA: &str = "SEGTUNE_NATS_TLS_CA";
/// Client certificate and its key (PEM), for a server that verifies clients (mutual TLS).
pub const ENV_NATS_TLS_CERT: &str = "SEGTUNE_NATS_TLS_CERT";
pub const ENV_NATS_TLS_KEY: &str = "SEGTUNE_NATS_TLS_KEY";
/// The subject prefix of this connection's reply inboxes (default `_INBOX_<user>` with a
/// user/password, else `_INBOX`): a broker that lets each identity subscribe only to its
/// own prefix keeps one role from reading another's replies.
pub const ENV_NATS_INBOX_PREFIX: &str = "SEGTUNE_NATS_INBOX_PREFIX";

/// A configuration the runtime refuses before connecting. Never carries a secret: variables
/// and paths only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatsConfigError {
    #[error("more than one NATS authentication method is set ({}): set only one", .0.join(", "))]
    Conflict(Vec<String>),
    #[error("{var}={path}: {problem}")]
    File {
        var: &'static str,
        path: String,
        problem: String,
    },
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
}

/// Broker credentials of one user/password connection.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NatsCredentials {{ user: {:?}, password: \"***\" }}",
            self.user
        )
    }
}

/// How a connection authenticates. `Debug` shows who, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    Anonymous,
    UserPassword(NatsCredentials),
    Token(String),
    /// An NKey user: the seed signs the server's nonce; `public` (`U...`) is what the
    /// server's config lists.
    NKey {
        seed: String,
        public: String,
    },
    /// A `.creds` file's contents (user JWT and seed), and where they came from.
    Creds {
        path: PathBuf,
        contents: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => write!(f, "Anonymous"),
            Self::UserPassword(c) => write!(f, "UserPassword({c:?})"),
            Self::Token(_) => write!(f, "Token(\"***\")"),
            Self::NKey { public, .. } => write!(f, "NKey {{ public: {public:?}, seed: \"***\" }}"),
            Self::Creds { path, .. } => write!(f, "Creds {{ path: {path:?} }}"),
        }
    }
}

/// TLS settings of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse a plaintext connection: set by a CA, a client certificate or a `tls://` URL.
    pub required: bool,
    /// Trust these CAs instead of the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Everything the runtime needs to connect: the servers (no credentials in it, safe to
/// log), how to authenticate, TLS, and the inbox prefix. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    pub url: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    pub inbox_prefix: Option<String>,
}

impl NatsSettings {
    /// Reads the settings of `url` (`SEGTUNE_NATS`) and the `SEGTUNE_NATS_*` variables
    /// (looked up with `env`; an empty value counts as unset), reading and checking the
    /// files they name. Methods: `user:password@` in the URL or `SEGTUNE_NATS_USER` with
    /// `SEGTUNE_NATS_PASSWORD[_FILE]` (the URL's win); `SEGTUNE_NATS_TOKEN[_FILE]`;
    /// `SEGTUNE_NATS_NKEY_FILE`; `SEGTUNE_NATS_CREDS_FILE`. More than one is an error.
    pub fn from_env(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, NatsConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let (url, url_creds) = split_url_credentials(url)?;

        let mut methods: Vec<(String, NatsAuth)> = Vec::new();
        if let Some(c) = url_creds {
            methods.push((
                "user:password@ in SEGTUNE_NATS".into(),
                NatsAuth::UserPassword(c),
            ));
        } else if let Some(user) = env(ENV_NATS_USER) {
            let password = secret(
                &env,
                ENV_NATS_PASSWORD,
                ENV_NATS_PASSWORD_FILE,
                "a password",
            )?;
            methods.push((
                ENV_NATS_USER.into(),
                NatsAuth::UserPassword(NatsCredentials {
                    user,
                    password: password.unwrap_or_default(),
                }),
            ));
        } else {
            for var in [ENV_NATS_PASSWORD, ENV_NATS_PASSWORD_FILE] {
                if env(var).is_some() {
                    return Err(NatsConfigError::Invalid {
                        var,
                        problem: format!("set without {ENV_NATS_USER}"),
                    });
                }
            }
        }
        if let Some(token) = secret(&env, ENV_NATS_TOKEN, ENV_NATS_TOKEN_FILE, "a token")? {
            let var = if env(ENV_NATS_TOKEN).is_some() {
                ENV_NATS_TOKEN
            } else {
                ENV_NATS_TOKEN_FILE
            };
            methods.push((var.into(), NatsAuth::Token(token)));
        }
        if let Some(path) = env(ENV_NATS_NKEY_FILE) {
            let seed = read_file(ENV_NATS_NKEY_FILE, &path, "an NKey user seed")?
                .trim()
                .to_string();
            let bad = || NatsConfigError::File {
                var: ENV_NATS_NKEY_FILE,
                path: path.clone(),
                problem: "expected an NKey user seed starting with SU (58 characters, as \
                          `nk -gen user` writes it)"
                    .into(),
            };
            if !seed.starts_with("SU") {
                return Err(bad());
            }
            let public = nkeys::KeyPair::from_seed(&seed)
                .map_err(|_| bad())?
                .public_key();
            methods.push((ENV_NATS_NKEY_FILE.into(), NatsAuth::NKey { seed, public }));
        }
        if let Some(path) = env(ENV_NATS_CREDS_FILE) {
            let contents = read_file(ENV_NATS_CREDS_FILE, &path, "a NATS .creds file")?;
            // Parsed now (the same parser connect uses), so a bad file fails at start.
            async_nats::ConnectOptions::with_credentials(&contents).map_err(|_| {
                NatsConfigError::File {
                    var: ENV_NATS_CREDS_FILE,
                    path: path.clone(),
                    problem: "expected a NATS .creds file: a user JWT and an NKey user seed \
                              (SU...) each between -----BEGIN/END----- lines, as `nsc` \
                              writes it"
                        .into(),
                }
            })?;
            methods.push((
                ENV_NATS_CREDS_FILE.into(),
                NatsAuth::Creds {
                    path: path.into(),
                    contents,
                },
            ));
        }
        if methods.len() > 1 {
            return Err(NatsConfigError::Conflict(
                methods.into_iter().map(|(v, _)| v).collect(),
            ));
        }
        let auth = methods.pop().map_or(NatsAuth::Anonymous, |(_, auth)| auth);

        let mut tls = NatsTls {
            required: servers_of(&url).any(|s| s.starts_with("tls://")),
            ..Default::default()
        };
        if let Some(path) = env(ENV_NATS_TLS_CA) {
            let pem = read_file(ENV_NATS_TLS_CA, &path, "PEM CA certificates")?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(NatsConfigError::File {
                    var: ENV_NATS_TLS_CA,
                    path,
                    problem: "expected PEM certificates (-----BEGIN CERTIFICATE-----)".into(),
                });
            }
            tls.ca = Some(path.into());
            tls.required = true;
        }
        match (env(ENV_NATS_TLS_CERT), env(ENV_NATS_TLS_KEY)) {
            (Some(cert), Some(key)) => {
                let pem = read_file(ENV_NATS_TLS_CERT, &cert, "a PEM client certificate")?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(NatsConfigError::File {
                        var: ENV_NATS_TLS_CERT,
                        path: cert,
                        problem: "expected a PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                    });
                }
                let pem = read_file(ENV_NATS_TLS_KEY, &key, "a PEM private key")?;
                if !pem.contains("PRIVATE KEY-----") {
                    return Err(NatsConfigError::File {
                        var: ENV_NATS_TLS_KEY,
                        path: key,
                        problem: "expected a PEM private key (-----BEGIN ... PRIVATE KEY-----)"
                            .into(),
                    });
                }
                tls.client = Some((cert.into(), key.into()));
                tls.required = true;
            }
            (Some(_), None) => {
                return Err(NatsConfigError::Invalid {
                    var: ENV_NATS_TLS_CERT,
                    problem: format!("set without {ENV_NATS_TLS_KEY} (the certificate's key)"),
                });
            }
            (None, Some(_)) => {
                return Err(NatsConfigError::Invalid {
                    var: ENV_NATS_TLS_KEY,
                    problem: format!("set without {ENV_NATS_TLS_CERT}"),
                });
            }
            (None, None) => {}
        }

        let inbox_prefix = match env(ENV_NATS_INBOX_PREFIX) {
            Some(p) => {
                let ok = p
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ', '\t']));
                if !ok {
                    return Err(NatsConfigError::Invalid {
                        var: ENV_NATS_INBOX_PREFIX,
                        problem: format!(
                            "{p:?} is not a subject prefix (dot-separated tokens, no \
                             wildcards or spaces)"
                        ),
                    });
                }
                Some(p)
            }
            None => match &auth {
                NatsAuth::UserPassword(c) => Some(inbox_prefix(&c.user)),
                _ => None,
            },
        };
        Ok(Self {
            url,
            auth,
            tls,
            inbox_prefix,
        })
    }

    /// async-nats options for these settings (authentication, TLS, inbox prefix).
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        // A binary that also links object_store's S3 client has two rustls crypto providers
        // (ring from async-nats, aws-lc-rs from there), and rustls then refuses to pick one:
        // the first TLS connection panics. Pick async-nats' own, unless one is set already.
        // (Any connection may turn into TLS: a server that requires it upgrades the client.)
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let mut options = async_nats::ConnectOptions::new();
        options = match &self.auth {
            NatsAuth::Anonymous => options,
            NatsAuth::UserPassword(c) => {
                options.user_and_password(c.user.clone(), c.password.clone())
            }
            NatsAuth::Token(t) => options.token(t.clone()),
            NatsAuth::NKey { seed, .. } => options.nkey(seed.clone()),
            NatsAuth::Creds { contents, .. } => options
                .credentials(contents)
                .expect("checked when the settings were read"),
        };
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls.required {
            options = options.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        options
    }
}

/// A secret given directly in `var` or in the file `file_var` names (not both).
fn secret(
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: &'static str,
    what: &str,
) -> Result<Option<String>, NatsConfigError> {
    match (env(var), env(file_var)) {
        (Some(_), Some(_)) => Err(NatsConfigError::Conflict(vec![
            var.to_string(),
            file_var.to_string(),
        ])),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => {
            let text = read_file(file_var, &path, what)?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(Some(text.to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// The contents of the file `var` names; an error (variable, path, what was expected, never
/// the contents) if it cannot be read or holds nothing.
fn read_file(var: &'static str, path: &str, what: &str) -> Result<String, NatsConfigError> {
    let err = |problem: String| NatsConfigError::File {
        var,
        path: path.to_string(),
        problem,
    };
    let bytes = std::fs::read(Path::new(path))
        .map_err(|e| err(format!("cannot read {what} from it: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| err(format!("expected {what}, found bytes that are not UTF-8")))?;
    if text.trim().is_empty() {
        return Err(err(format!("the file is empty; expected {what}")));
    }
    Ok(text)
}

fn servers_of(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Splits `user:password@` off each server of a NATS URL (comma-separated list allowed;
/// async-nats ignores credentials in URLs), returning the URL without them (safe to log) and
/// the credentials.
fn split_url_credentials(url: &str) -> Result<(String, Option<NatsCredentials>), NatsConfigError> {
    let invalid = |problem: &str| NatsConfigError::Invalid {
        var: "SEGTUNE_NATS",
        problem: problem.into(),
    };
    let mut creds: Option<NatsCredentials> = None;
    let mut servers = Vec::new();
    for server in url.split(',').map(str::trim) {
        let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            servers.push(server.to_string());
            continue;
        };
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let these = NatsCredentials {
            user: percent_decode(user).ok_or_else(|| {
                invalid("bad percent-escape or non-UTF-8 in the URL's credentials")
            })?,
            password: percent_decode(password).ok_or_else(|| {
                invalid("bad percent-escape or non-UTF-8 in the URL's credentials")
            })?,
        };
        if creds.as_ref().is_some_and(|c| *c != these) {
            return Err(invalid(
                "the servers of the URL carry different credentials",
            ));
        }
        creds = Some(these);
        let scheme = if scheme.is_empty() {
            String::new()
        } else {
            format!("{scheme}://")
        };
        servers.push(format!("{scheme}{host}{path}"));
    }
    Ok((servers.join(","), creds))
}

/// Splits `user:password@` off each server of a NATS URL (see [`NatsSettings::from_env`]),
/// returning the URL without them (safe to log) and the credentials of the URL or else of
/// `SEGTUNE_NATS_USER` / `SEGTUNE_NATS_PASSWORD[_FILE]`.
pub fn nats_credentials(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(String, Option<NatsCredentials>)> {
    let s = NatsSettings::from_env(url, env)?;
    let creds = match s.auth {
        NatsAuth::UserPassword(c) => Some(c),
        _ => None,
    };
    Ok((s.url, creds))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The inbox prefix of a role: replies to one role's requests are not readable by another
/// (the broker's config lets each user subscribe only `_INBOX_<user>.>`).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{}", protocol::subjects::sanitize_token(user))
}

/// Connect options for `url` and the `SEGTUNE_NATS_*` environment (see
/// [`NatsSettings::from_env`]), and the URL to connect to (without credentials, safe to
/// log). Every service and the CLI build their connection on these.
pub fn connect_options(url: &str) -> anyhow::Result<(async_nats::ConnectOptions, String)> {
    let settings = NatsSettings::from_env(url, |k| std::env::var(k).ok())?;
    tracing::debug!(url = %settings.url, auth = ?settings.auth, tls = ?settings.tls, "NATS settings");
    Ok((settings.connect_options(), settings.url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn credentials_come_from_the_url_and_are_removed_from_it() {
        let (url, c) = nats_credentials("nats://trainer:s3cr%40t@nats:4222", no_env).unwrap();
        assert_eq!(url, "nats://nats:4222");
        let c = c.unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("trainer", "s3cr@t")
        );
        assert!(
            !format!("{c:?}").contains("s3cr"),
            "Debug hides the password"
        );

        let (url, c) = nats_credentials("nats://u:p@a:4222, nats://u:p@b:4223/x", no_env).unwrap();
        assert_eq!(url, "nats://a:4222,nats://b:4223/x");
        assert_eq!(c.unwrap().user, "u");
        assert!(nats_credentials("nats://u:p@a,nats://v:q@b", no_env).is_err());
        assert!(nats_credentials("nats://u:p%zz@a", no_env).is_err());
    }

    #[test]
    fn credentials_come_from_the_environment_when_the_url_has_none() {
        let env = |k: &str| match k {
            ENV_NATS_USER => Some("evaluator".to_string()),
            ENV_NATS_PASSWORD => Some("pw".to_string()),
            _ => None,
        };
        let (url, c) = nats_credentials("nats://nats:4222", env).unwrap();
        assert_eq!(url, "nats://nats:4222");
        assert_eq!(
            c,
            Some(NatsCredentials {
                user: "evaluator".into(),
                password: "pw".into()
            })
        );
        // The URL's credentials win over the environment's.
        let (_, c) = nats_credentials("nats://trainer:x@nats", env).unwrap();
        assert_eq!(c.unwrap().user, "trainer");
        // Neither: anonymous.
        assert_eq!(nats_credentials("127.0.0.1:4222", no_env).unwrap().1, None);
        assert_eq!(inbox_prefix("trainer"), "_INBOX_trainer");
    }

    /// A temp dir with files, and an env that maps variables to values.
    struct Env {
        dir: tempfile::TempDir,
        vars: Vec<(&'static str, String)>,
    }

    impl Env {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                vars: Vec::new(),
            }
        }
        fn set(mut self, var: &'static str, value: &str) -> Self {
            self.vars.push((var, value.to_string()));
            self
        }
        /// Writes `contents` to a file and sets `var` to its path.
        fn file(self, var: &'static str, contents: &str) -> Self {
            let path = self.dir.path().join(var);
            std::fs::write(&path, contents).unwrap();
            let path = path.display().to_string();
            self.set(var, &path)
        }
        fn path(&self, var: &str) -> String {
            self.dir.path().join(var).display().to_string()
        }
        fn settings(&self, url: &str) -> Result<NatsSettings, NatsConfigError> {
            NatsSettings::from_env(url, |k| {
                self.vars
                    .iter()
                    .find(|(v, _)| *v == k)
                    .map(|(_, x)| x.clone())
            })
        }
    }

    const SEED: &str = "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM";
    const SECRETS: &[&str] = &["hunter2-pass", "tok-s3cret", SEED, "KEYHFLM"];

    /// Neither Debug nor an error message carries any of [`SECRETS`].
    fn assert_no_secret(text: &str) {
        for s in SECRETS {
            assert!(!text.contains(s), "a secret in {text:?}");
        }
    }

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let e = Env::new()
            .set(ENV_NATS_USER, "trainer")
            .file(ENV_NATS_PASSWORD_FILE, "hunter2-pass\n");
        let s = e.settings("nats://nats:4222").unwrap();
        assert_eq!(
            s.auth,
            NatsAuth::UserPassword(NatsCredentials {
                user: "trainer".into(),
                password: "hunter2-pass".into()
            })
        );
        assert_eq!(s.inbox_prefix.as_deref(), Some("_INBOX_trainer"));
        assert_no_secret(&format!("{s:?}"));

        let e = Env::new().file(ENV_NATS_TOKEN_FILE, "tok-s3cret\r\n");
        let s = e.settings("nats://nats:4222").unwrap();
        assert_eq!(s.auth, NatsAuth::Token("tok-s3cret".into()));
        assert_eq!(s.inbox_prefix, None);
        assert_no_secret(&format!("{s:?}"));
        let e = Env::new()
            .set(ENV_NATS_TOKEN, "tok-s3cret")
            .set(ENV_NATS_INBOX_PREFIX, "_INBOX_tok");
        let s = e.settings("nats://nats:4222").unwrap();
        assert_eq!(s.auth, NatsAuth::Token("tok-s3cret".into()));
        assert_eq!(s.inbox_prefix.as_deref(), Some("_INBOX_tok"));

        let e = Env::new().file(ENV_NATS_NKEY_FILE, &format!("{SEED}\n"));
        let s = e.settings("nats://nats:4222").unwrap();
        let NatsAuth::NKey { seed, public } = &s.auth else {
            panic!("{s:?}")
        };
        assert_eq!(seed, SEED);
        assert!(public.starts_with('U'));
        assert!(
            format!("{s:?}").contains(public.as_str()),
            "Debug shows who"
        );
        assert_no_secret(&format!("{s:?}"));
        assert!(!s.tls.required);
    }

    #[test]
    fn two_methods_at_once_are_an_error_naming_both() {
        let e = Env::new()
            .set(ENV_NATS_USER, "trainer")
            .set(ENV_NATS_PASSWORD, "hunter2-pass")
            .set(ENV_NATS_TOKEN, "tok-s3cret");
        let err = e.settings("nats://nats:4222").unwrap_err();
        assert_eq!(
            err,
            NatsConfigError::Conflict(vec![ENV_NATS_USER.into(), ENV_NATS_TOKEN.into()])
        );
        assert_no_secret(&err.to_string());
        let err = e.settings("nats://u:hunter2-pass@nats").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SEGTUNE_NATS_TOKEN") && msg.contains("SEGTUNE_NATS"),
            "{msg}"
        );
        assert_no_secret(&msg);

        let e = Env::new()
            .set(ENV_NATS_TOKEN, "tok-s3cret")
            .file(ENV_NATS_TOKEN_FILE, "tok-s3cret");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.contains(ENV_NATS_TOKEN) && msg.contains(ENV_NATS_TOKEN_FILE),
            "{msg}"
        );
        let e = Env::new()
            .file(ENV_NATS_NKEY_FILE, SEED)
            .set(ENV_NATS_TOKEN, "tok-s3cret");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.contains(ENV_NATS_TOKEN) && msg.contains(ENV_NATS_NKEY_FILE),
            "{msg}"
        );
        assert_no_secret(&msg);
        // A password without a user is a mistake, not anonymous.
        let e = Env::new().set(ENV_NATS_PASSWORD, "hunter2-pass");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.contains(ENV_NATS_PASSWORD) && msg.contains(ENV_NATS_USER),
            "{msg}"
        );
        assert_no_secret(&msg);
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_variable_the_path_and_what_was_expected() {
        let missing = Env::new().set(ENV_NATS_TOKEN_FILE, "/nonexistent/token");
        let msg = missing.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.starts_with("SEGTUNE_NATS_TOKEN_FILE=/nonexistent/token: cannot read a token"),
            "{msg}"
        );

        let e = Env::new()
            .set(ENV_NATS_USER, "u")
            .file(ENV_NATS_PASSWORD_FILE, "\n");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        let path = e.path(ENV_NATS_PASSWORD_FILE);
        assert_eq!(
            msg,
            format!("SEGTUNE_NATS_PASSWORD_FILE={path}: the file is empty; expected a password")
        );

        // A seed of another kind (an account seed, SA...), a truncated one, a public key.
        for bad in [
            "SAAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM",
            "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFL",
            "hunter2-pass",
        ] {
            let e = Env::new().file(ENV_NATS_NKEY_FILE, bad);
            let msg = e.settings("nats://nats").unwrap_err().to_string();
            let path = e.path(ENV_NATS_NKEY_FILE);
            assert!(
                msg.starts_with(&format!(
                    "SEGTUNE_NATS_NKEY_FILE={path}: expected an NKey user seed starting with SU"
                )),
                "{msg}"
            );
            assert!(!msg.contains(bad), "{msg}");
        }

        let e = Env::new().file(ENV_NATS_CREDS_FILE, &format!("hunter2-pass\n{SEED}\n"));
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "SEGTUNE_NATS_CREDS_FILE={}: expected a NATS .creds file",
                e.path(ENV_NATS_CREDS_FILE)
            )),
            "{msg}"
        );
        assert_no_secret(&msg);

        let e = Env::new().file(ENV_NATS_TLS_CA, "hunter2-pass");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.contains("SEGTUNE_NATS_TLS_CA=") && msg.contains("expected PEM"),
            "{msg}"
        );
        assert_no_secret(&msg);
        let e = Env::new()
            .file(ENV_NATS_TLS_CERT, "-----BEGIN CERTIFICATE-----\n")
            .file(ENV_NATS_TLS_KEY, "hunter2-pass");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(
            msg.contains("SEGTUNE_NATS_TLS_KEY=") && msg.contains("private key"),
            "{msg}"
        );
        assert_no_secret(&msg);
        let e = Env::new().set(ENV_NATS_TLS_CERT, "/c.pem");
        let msg = e.settings("nats://nats").unwrap_err().to_string();
        assert!(msg.contains(ENV_NATS_TLS_KEY), "{msg}");
        let e = Env::new().set(ENV_NATS_INBOX_PREFIX, "_INBOX.>");
        assert!(e.settings("nats://nats").is_err());
    }

    #[test]
    fn tls_is_required_by_a_ca_a_client_certificate_or_a_tls_url() {
        assert!(!Env::new().settings("nats://a").unwrap().tls.required);
        assert!(Env::new().settings("tls://a:4222").unwrap().tls.required);
        assert!(
            Env::new()
                .settings("nats://a,tls://u:p@b")
                .unwrap()
                .tls
                .required
        );
        let e = Env::new().file(ENV_NATS_TLS_CA, "-----BEGIN CERTIFICATE-----\nx\n");
        let s = e.settings("nats://a").unwrap();
        assert!(s.tls.required);
        assert_eq!(s.tls.ca, Some(e.path(ENV_NATS_TLS_CA).into()));
        let e = Env::new()
            .file(ENV_NATS_TLS_CERT, "-----BEGIN CERTIFICATE-----\nx\n")
            .file(
                ENV_NATS_TLS_KEY,
                "-----BEGIN PRIVATE KEY-----\nhunter2-pass\n",
            );
        let s = e.settings("nats://a").unwrap();
        assert!(s.tls.required && s.tls.client.is_some());
        assert_no_secret(&format!("{s:?}"));
    }

    #[test]
    fn every_variable_is_listed_in_env_vars() {
        for var in [
            ENV_NATS_USER,
            ENV_NATS_PASSWORD,
            ENV_NATS_PASSWORD_FILE,
            ENV_NATS_TOKEN,
            ENV_NATS_TOKEN_FILE,
            ENV_NATS_NKEY_FILE,
            ENV_NATS_CREDS_FILE,
            ENV_NATS_TLS_CA,
            ENV_NATS_TLS_CERT,
            ENV_NATS_TLS_KEY,
            ENV_NATS_INBOX_PREFIX,
        ] {
            assert!(crate::ENV_VARS.contains(&var), "{var}");
        }
    }
}
