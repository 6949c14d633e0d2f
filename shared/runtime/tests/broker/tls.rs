//! A server with `tls { ... }`: the client given the CA connects; a plaintext client, and a
//! client that trusts only the system's CAs, are refused; with `verify` a client without a
//! certificate signed by the CA is refused and one with it connects (mutual TLS).

use std::{
    io::{Read, Write},
    path::PathBuf,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use runtime::{ENV_NATS_TLS_CA, ENV_NATS_TLS_CERT, ENV_NATS_TLS_KEY, ENV_NATS_TOKEN};
use test_support::NatsServer;

use crate::Env;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in a
/// temp dir; made here (rcgen), so the tests need no openssl.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "segtune test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, san: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
        };
        leaf("server", "127.0.0.1");
        leaf("client", "segtune-client");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `tls` block of a server using these files; `verify`: clients need a certificate.
    pub fn server_block(&self, verify: bool) -> String {
        let p = |n: &str| self.path(n).display().to_string();
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  \
             timeout: 2\n}}\n",
            p("server.pem"),
            p("server-key.pem"),
            p("ca.pem")
        )
    }
}

/// What a client that never starts TLS gets: it reads the server's INFO, sends CONNECT and
/// PING in plaintext, and returns everything the server sent, and whether the server closed
/// the connection within 5 s.
pub fn plaintext_exchange(port: u16) -> (String, bool) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // INFO first.
    if let Ok(n) = s.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    let _ = s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {}
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port)
}

fn ca(pki: &Pki) -> String {
    std::fs::read_to_string(pki.path("ca.pem")).unwrap()
}

#[tokio::test]
async fn with_tls_required_only_a_client_trusting_the_ca_connects() {
    let pki = Pki::new();
    let server = NatsServer::builder()
        .config(pki.server_block(false))
        .start();

    let client = Env::new()
        .file(ENV_NATS_TLS_CA, &ca(&pki))
        .connect(&server.url())
        .await
        .expect("a client given the CA connects (nats:// URL, TLS required by the CA)");
    assert!(client.server_info().tls_required);
    Env::new()
        .file(ENV_NATS_TLS_CA, &ca(&pki))
        .connect(&tls_url(&server))
        .await
        .expect("a client given the CA connects (tls:// URL)");

    // Plaintext: the server announces TLS, never answers the PING and hangs up (its
    // handshake fails on the CONNECT bytes).
    let started = std::time::Instant::now();
    let (got, closed) = plaintext_exchange(server.port);
    assert!(got.starts_with("INFO "), "{got}");
    assert!(got.contains("\"tls_required\":true"), "{got}");
    assert!(
        !got.contains("PONG"),
        "a plaintext client was served:\n{got}"
    );
    assert!(
        closed,
        "the server kept a plaintext connection open:\n{got}"
    );
    eprintln!("plaintext client dropped after {:?}", started.elapsed());

    // The system's CAs do not include the test CA.
    let e = Env::new()
        .connect(&tls_url(&server))
        .await
        .expect_err("a client without the CA connected");
    assert!(
        e.to_lowercase().contains("tls") || e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::new();
    let server = NatsServer::builder().config(pki.server_block(true)).start();
    let read = |n: &str| std::fs::read_to_string(pki.path(n)).unwrap();
    Env::new()
        .file(ENV_NATS_TLS_CA, &ca(&pki))
        .file(ENV_NATS_TLS_CERT, &read("client.pem"))
        .file(ENV_NATS_TLS_KEY, &read("client-key.pem"))
        .connect(&server.url())
        .await
        .expect("a client with a certificate signed by the CA connects");
    Env::new()
        .file(ENV_NATS_TLS_CA, &ca(&pki))
        .connect(&server.url())
        .await
        .expect_err("a client without a certificate connected");
    // A certificate from another CA.
    let other = Pki::new();
    let read_other = |n: &str| std::fs::read_to_string(other.path(n)).unwrap();
    Env::new()
        .file(ENV_NATS_TLS_CA, &ca(&pki))
        .file(ENV_NATS_TLS_CERT, &read_other("client.pem"))
        .file(ENV_NATS_TLS_KEY, &read_other("client-key.pem"))
        .connect(&server.url())
        .await
        .expect_err("a client with another CA's certificate connected");
}

#[tokio::test]
async fn tls_and_a_token_together() {
    let pki = Pki::new();
    let server = NatsServer::builder()
        .config(format!(
            "{}authorization {{ token: \"tok-tls-31\" }}",
            pki.server_block(false)
        ))
        .start();
    let env = || Env::new().file(ENV_NATS_TLS_CA, &ca(&pki));
    env()
        .set(ENV_NATS_TOKEN, "tok-tls-31")
        .connect(&tls_url(&server))
        .await
        .expect("TLS and the right token");
    env()
        .set(ENV_NATS_TOKEN, "tok-tls-32")
        .connect(&tls_url(&server))
        .await
        .expect_err("TLS and a wrong token");
}
