//! A server with `tls { ... }`: the client given the CA connects; a plaintext client, and a
//! client that trusts only the system's CAs, are refused; with `verify` a client without a
//! certificate signed by the CA is refused and one with it connects (mutual TLS).

use runtime::{ENV_NATS_TLS_CA, ENV_NATS_TLS_CERT, ENV_NATS_TLS_KEY, ENV_NATS_TOKEN};
use test_support::{NatsServer, Pki};

use crate::Env;

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
    let (got, closed) = test_support::plaintext_exchange(server.port);
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
