//! `.creds` files against a server in operator (JWT) mode. The JWTs are made here: an
//! operator signs an account, the account signs a user (ed25519 via nkeys; the format of
//! nats-io/jwt v2: `base64url(header).base64url(claims).base64url(signature)`).

use nkeys::KeyPair;
use runtime::ENV_NATS_CREDS_FILE;
use serde_json::json;
use test_support::NatsServer;

use crate::Env;

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=n {
            out.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWT for `subject` with `nats` claims, signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = json!({
        "jti": format!("{name}-{}", &subject[1..20]),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64url(&sig))
}

fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

fn user_jwt(account: &KeyPair, user: &KeyPair) -> String {
    jwt(
        account,
        &user.public_key(),
        "trainer",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
               "type": "user", "version": 2}),
    )
}

#[tokio::test]
async fn a_creds_file_of_the_operators_account_is_accepted_and_a_foreign_one_refused() {
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "segtune-op",
        json!({"type": "operator", "version": 2}),
    );
    let limits = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
                        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let account_jwt = |key: &KeyPair, name: &str| {
        jwt(
            &operator,
            &key.public_key(),
            name,
            json!({"limits": limits, "type": "account", "version": 2}),
        )
    };
    // JetStream (on in every test server) needs a system account.
    let system = KeyPair::new_account();
    let server = NatsServer::builder()
        .config(format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {}\n  {}: {}\n}}\n",
            account_jwt(&system, "SYS"),
            account.public_key(),
            account_jwt(&account, "segtune"),
            sys = system.public_key(),
        ))
        .start();
    let url = server.url();

    Env::new()
        .file(
            ENV_NATS_CREDS_FILE,
            &creds(&user_jwt(&account, &user), &user.seed().unwrap()),
        )
        .connect(&url)
        .await
        .expect("a user of the server's account connects");

    // Signed by an account the operator never signed.
    let stranger = KeyPair::new_account();
    let e = Env::new()
        .file(
            ENV_NATS_CREDS_FILE,
            &creds(&user_jwt(&stranger, &user), &user.seed().unwrap()),
        )
        .connect(&url)
        .await
        .expect_err("a user of an unknown account connected");
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    // The right JWT with another user's seed cannot answer the server's nonce.
    let other = KeyPair::new_user();
    Env::new()
        .file(
            ENV_NATS_CREDS_FILE,
            &creds(&user_jwt(&account, &user), &other.seed().unwrap()),
        )
        .connect(&url)
        .await
        .expect_err("a JWT with another user's seed connected");
}
