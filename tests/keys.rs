//! Key rotation without a restart (SPEC §2, issue 11): previous HMAC
//! secrets are still accepted, and SIGHUP rereads the key files; a bad file
//! keeps the old keys and the log says why.

mod common;

use common::*;
use std::process::Command;

/// Whether a WebSocket with `token` is accepted (CONNECTED), as opposed to
/// refused after the upgrade.
async fn accepted(gw: &Gateway, token: &str) -> bool {
    let mut c = gw.connect_token(token).await;
    let v = c.next_json().await;
    v["type"] == "CONNECTED"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_secrets_are_accepted_during_a_rotation() {
    let gw = gateway()
        .in_process()
        .env(
            "GATEWAY_AUTH_PREVIOUS_SECRETS",
            "old-secret-1, old-secret-2",
        )
        .start()
        .await;
    assert!(accepted(&gw, &token("42", &[])).await, "the current secret");
    for old in ["old-secret-1", "old-secret-2"] {
        let t = mint_with_secret(old, "42", &[], "1h");
        assert!(accepted(&gw, &t).await, "a previous secret: {old}");
    }
    let foreign = mint_with_secret("never-configured", "42", &[], "1h");
    assert!(!accepted(&gw, &foreign).await, "an unknown secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_secret_file_and_a_bad_one_keeps_the_old_keys() {
    let dir = TempDir::new();
    let file = dir.write("secret", "first-secret\n");
    let gw = gateway()
        .no_secret()
        .env("GATEWAY_AUTH_SECRET_FILE", &file.display().to_string())
        .start()
        .await;
    let first = mint_with_secret("first-secret", "42", &[], "1h");
    let second = mint_with_secret("second-secret", "42", &[], "1h");
    assert!(accepted(&gw, &first).await);
    assert!(!accepted(&gw, &second).await);

    let hangup = || {
        let st = Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP failed");
    };
    dir.write("secret", "second-secret\n");
    hangup();
    let reloaded = wait_until(WAIT_TIMEOUT, || async {
        gw.logs()
            .iter()
            .any(|l| l.contains("SIGHUP: keys reloaded"))
    })
    .await;
    assert!(reloaded, "{}", gw.logs_text());
    assert!(accepted(&gw, &second).await, "the new secret");
    assert!(!accepted(&gw, &first).await, "the old one is gone");

    // An empty file is refused: the second secret stays.
    dir.write("secret", "");
    hangup();
    let refused = wait_until(WAIT_TIMEOUT, || async {
        gw.logs()
            .iter()
            .any(|l| l.contains("keys not reloaded") && l.contains("auth.secret_file"))
    })
    .await;
    assert!(refused, "{}", gw.logs_text());
    assert!(accepted(&gw, &second).await, "the old keys stay");
}
