use runtime::{
    ENV_NATS_INBOX_PREFIX, ENV_NATS_NKEY_FILE, ENV_NATS_PASSWORD, ENV_NATS_PASSWORD_FILE,
    ENV_NATS_TOKEN, ENV_NATS_TOKEN_FILE, ENV_NATS_USER,
};
use test_support::NatsServer;

use crate::Env;

fn refused(result: Result<async_nats::Client, String>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: the server accepted it"),
        Err(e) => {
            assert!(
                e.to_lowercase().contains("authorization"),
                "{what}: refused, but not for authorization: {e}"
            );
            e
        }
    }
}

#[tokio::test]
async fn a_token_is_accepted_and_a_wrong_one_refused() {
    let server = NatsServer::builder()
        .config("authorization { token: \"tok-right-4f2a\" }")
        .start();
    let url = server.url();
    Env::new()
        .set(ENV_NATS_TOKEN, "tok-right-4f2a")
        .connect(&url)
        .await
        .expect("the right token");
    Env::new()
        .file(ENV_NATS_TOKEN_FILE, "tok-right-4f2a\n")
        .connect(&url)
        .await
        .expect("the right token from a file");
    let e = refused(
        Env::new()
            .set(ENV_NATS_TOKEN, "tok-wrong-9b1c")
            .connect(&url)
            .await,
        "a wrong token",
    );
    assert!(!e.contains("tok-wrong"), "{e}");
    refused(Env::new().connect(&url).await, "no token");
}

#[tokio::test]
async fn a_password_from_a_file_is_accepted_and_a_wrong_one_refused() {
    let server = NatsServer::builder()
        .config("authorization { users: [ { user: trainer, password: \"pw-right-77\" } ] }")
        .start();
    let url = server.url();
    Env::new()
        .set(ENV_NATS_USER, "trainer")
        .file(ENV_NATS_PASSWORD_FILE, "pw-right-77\n")
        .connect(&url)
        .await
        .expect("the right password from a file");
    refused(
        Env::new()
            .set(ENV_NATS_USER, "trainer")
            .set(ENV_NATS_PASSWORD, "pw-wrong-11")
            .connect(&url)
            .await,
        "a wrong password",
    );
}

#[tokio::test]
async fn an_nkey_user_is_accepted_and_another_seed_refused() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    // The server knows only the public key; the inbox prefix is all it may subscribe to.
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{ users: [ {{ nkey: {}, permissions: {{ publish: [\"$JS.API.>\"], \
             subscribe: [\"_INBOX_nk.>\"] }} }} ] }}",
            user.public_key()
        ))
        .start();
    let url = server.url();
    let seed = user.seed().unwrap();
    let client = Env::new()
        .file(ENV_NATS_NKEY_FILE, &format!("{seed}\n"))
        .set(ENV_NATS_INBOX_PREFIX, "_INBOX_nk")
        .connect(&url)
        .await
        .expect("the right seed");
    // A request's reply arrives on the custom inbox prefix (the only one it may read).
    let js = async_nats::jetstream::new(client);
    js.query_account()
        .await
        .expect("a JetStream request answered on _INBOX_nk");
    // Without the prefix the reply inbox is _INBOX.…, which this user may not read.
    let client = Env::new()
        .file(ENV_NATS_NKEY_FILE, &seed)
        .connect(&url)
        .await
        .expect("the right seed");
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(std::time::Duration::from_secs(1));
    assert!(
        js.query_account().await.is_err(),
        "a reply on the default inbox was readable"
    );

    let e = refused(
        Env::new()
            .file(ENV_NATS_NKEY_FILE, &other.seed().unwrap())
            .connect(&url)
            .await,
        "another user's seed",
    );
    assert!(!e.contains(&other.seed().unwrap()), "{e}");
}
