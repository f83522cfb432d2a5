//! The embedded in-memory broker and dev mode (SPEC §9).

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_delivers() {
    let gw = gateway().start().await;
    let h = gw.health().await;
    assert_eq!(h["broker"], "memory", "{h}");
    assert_eq!(h["broker_up"], true, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["draining"], false, "{h}");
    // The canary runs through the embedded broker too; fresh = within three
    // intervals of the default 5 s.
    let age = h["canary_age_ms"].as_u64();
    assert!(age.is_some_and(|a| a <= 15_000), "canary_age_ms: {h}");
    assert_eq!(gw.get("/readyz").await.status, 200, "/readyz");

    let mut a1 = gw.user("42", &[]).await;
    let mut a2 = gw.user("42", &[]).await;
    let mut b = gw.user("43", &[]).await;
    let admin = admin_token();

    let msg = json!({"type": "NEW_TRANSACTION", "data": {"amount": -9.99}});
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, msg.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["channel"], "ws:user:42");
    let id = r.json()["id"].as_str().expect("id").to_string();
    for c in [&mut a1, &mut a2] {
        let v = c.next_json().await;
        assert_eq!(v["type"], "NEW_TRANSACTION", "{v}");
        assert_eq!(v["id"], id.as_str(), "{v}");
        assert_eq!(v["data"], msg["data"], "{v}");
    }

    let bc = json!({"type": "SYSTEM_ALERT", "data": {"text": "all"}});
    let r = gw
        .post_bearer("/ws/broadcast", &admin, bc.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // User 43 got nothing before the broadcast.
    for c in [&mut a1, &mut a2, &mut b] {
        let v = c.next_json().await;
        assert_eq!(v["type"], "SYSTEM_ALERT", "{v}");
        assert_eq!(v["data"], bc["data"], "{v}");
    }
}

/// The JWT printed on the first line containing `needle` (its last word).
fn token_from_logs(logs: &[String], needle: &str) -> Option<String> {
    let line = logs.iter().find(|l| l.contains(needle))?;
    let word = line.split_whitespace().last()?;
    let word = word.trim_matches(|c| c == '"' || c == '\'');
    (word.split('.').count() == 3).then(|| word.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_working_tokens() {
    let state = TempDir::new();
    let gw = gateway().no_secret().state_home(state.path()).start().await;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        let logs = gw.logs();
        token_from_logs(&logs, "user token").is_some()
            && token_from_logs(&logs, "admin token").is_some()
            && logs.iter().any(|l| l.contains("socket-test.html"))
    })
    .await;
    let logs = gw.logs();
    assert!(
        ok,
        "dev mode should print `user token <JWT>`, `admin token <JWT>` and the console URL; output:\n{}",
        logs.join("\n")
    );
    let user = token_from_logs(&logs, "user token").unwrap();
    let admin = token_from_logs(&logs, "admin token").unwrap();

    let (mut c, _) = gw.connect_user(&user, "demo").await;
    let r = gw.post_bearer("/ws/test-message/demo", &admin, b"").await;
    assert_eq!(r.status, 202, "admin token from dev mode: {}", r.text());
    let v = c.next_json().await;
    assert_eq!(v["type"], "NOTIFICATION", "{v}");
    assert_eq!(v["id"], r.json()["id"], "{v}");

    // The user token is not an admin token.
    gw.get_bearer("/ws/stats", &user).await.assert_status(403);
}

/// Runs `ws-gateway token` with `state`'s HOME and XDG_STATE_HOME and no key
/// material; returns the JWT it printed.
fn dev_token(state: &TempDir, sub: &str, roles: &str) -> String {
    let out = run_cli_with_state(
        state.path(),
        &["token", "--sub", sub, "--roles", roles],
        &[],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "`ws-gateway token` without key material should use the dev-mode secret: {:?}\nstderr: {stderr}",
        out.status
    );
    let jwt = stdout.trim();
    assert!(
        jwt.split('.').count() == 3 && !jwt.contains(char::is_whitespace),
        "token prints the JWT alone on stdout: {stdout:?}"
    );
    jwt.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_shares_its_secret_with_the_token_command_and_keeps_it() {
    let state = TempDir::new();
    let file = dev_secret_file(state.path());
    let gw = gateway().no_secret().state_home(state.path()).start().await;
    assert!(
        file.is_file(),
        "dev mode should keep its secret in {}; output:\n{}",
        file.display(),
        gw.logs_text()
    );
    assert!(
        gw.logs_text().contains(&file.display().to_string()),
        "the dev-mode banner should say where the secret is kept; output:\n{}",
        gw.logs_text()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        assert_eq!(
            mode(file.parent().unwrap()),
            0o700,
            "directory of {}",
            file.display()
        );
    }

    // A second user, with a role: minted by the CLI, accepted by the gateway.
    let alice = dev_token(&state, "alice", "admin");
    let (mut c, _) = gw.connect_user(&alice, "alice").await;
    gw.get_bearer("/ws/stats", &alice).await.assert_status(200);
    let r = gw.post_bearer("/ws/test-message/alice", &alice, b"").await;
    assert_eq!(
        r.status,
        202,
        "admin API with the CLI's token: {}",
        r.text()
    );
    assert_eq!(c.next_json().await["id"], r.json()["id"]);
    drop(c);
    drop(gw);

    // A restart reuses the secret: the token minted before still works.
    let gw = gateway().no_secret().state_home(state.path()).start().await;
    gw.connect_user(&alice, "alice").await;
    gw.get_bearer("/ws/stats", &alice).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_without_a_usable_state_directory_runs_on_a_secret_in_memory() {
    // XDG_STATE_HOME is a regular file: no directory can be created in it.
    let state = TempDir::new();
    let blocker = state.write("not-a-directory", "");
    let gw = gateway()
        .no_secret()
        .state_home(state.path())
        .env("XDG_STATE_HOME", blocker.to_str().unwrap())
        .start()
        .await;
    let ok = wait_until(WAIT_TIMEOUT, || async {
        token_from_logs(&gw.logs(), "user token").is_some()
    })
    .await;
    let logs = gw.logs_text();
    assert!(ok, "dev mode should still print tokens; output:\n{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains(blocker.to_str().unwrap())),
        "a warning should name the unusable path; output:\n{logs}"
    );
    let user = token_from_logs(&gw.logs(), "user token").unwrap();
    gw.connect_user(&user, "demo").await;
}
