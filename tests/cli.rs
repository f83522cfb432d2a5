//! The command line: check-config, token, publish, config precedence (SPEC §1).

mod common;

use common::*;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a command failed with exit code 1 and named `what` on stderr.
fn assert_fails_naming(out: &std::process::Output, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(stderr.contains(what), "stderr should name {what}: {stderr}");
}

#[test]
fn check_config_prints_effective_config_without_secrets() {
    let secret = "s3cr3t-value-that-must-not-leak";
    let out = run_cli(
        &["check-config"],
        &[
            ("GATEWAY_AUTH_SECRET", secret),
            ("GATEWAY_AUTH_ADMIN_API_KEY", "api-key-that-must-not-leak"),
            ("GATEWAY_CONNECTION_SEND_QUEUE", "77"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "check-config should exit 0: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(
        stdout.contains("listen"),
        "effective config on stdout:\n{stdout}"
    );
    assert!(
        stdout.contains("77"),
        "effective config reflects the environment (send_queue = 77):\n{stdout}"
    );
    for s in [secret, "api-key-that-must-not-leak"] {
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "secret {s:?} printed by check-config:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn unknown_key_in_file_is_an_error_naming_it() {
    let dir = TempDir::new();
    let cfg = dir.write("gw.toml", "[server]\nbogus = 1\n");
    let out = run_cli(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("GATEWAY_AUTH_SECRET", SECRET)],
    );
    assert_fails_naming(&out, "server.bogus");
}

#[test]
fn gateway_toml_in_working_directory_is_picked_up() {
    let dir = TempDir::new();
    dir.write("gateway.toml", "[server]\nbogus = 1\n");
    let out = run_cli_in(
        dir.path(),
        &["check-config"],
        &[("GATEWAY_AUTH_SECRET", SECRET)],
    );
    assert_fails_naming(&out, "server.bogus");
}

#[test]
fn invalid_env_value_is_an_error_naming_the_variable() {
    let out = run_cli(
        &["check-config"],
        &[
            ("GATEWAY_AUTH_SECRET", SECRET),
            ("GATEWAY_SERVER_MAX_CONNECTIONS", "abc"),
        ],
    );
    assert_fails_naming(&out, "GATEWAY_SERVER_MAX_CONNECTIONS");
}

#[test]
fn serve_refuses_an_invalid_config() {
    let out = run_cli(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("GATEWAY_AUTH_SECRET", SECRET),
            ("GATEWAY_SERVER_MAX_CONNECTIONS", "abc"),
        ],
    );
    assert_fails_naming(&out, "GATEWAY_SERVER_MAX_CONNECTIONS");
}

#[test]
fn env_overrides_file_and_file_overrides_default() {
    let dir = TempDir::new();
    let cfg = dir.write("gw.toml", "[server]\nlisten = \"127.0.0.1:1111\"\n");
    let cfg = cfg.to_str().unwrap();

    let out = run_cli(
        &["check-config", "--config", cfg],
        &[("GATEWAY_AUTH_SECRET", SECRET)],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("127.0.0.1:1111"), "file value:\n{stdout}");

    let out = run_cli(
        &["check-config", "--config", cfg],
        &[
            ("GATEWAY_AUTH_SECRET", SECRET),
            ("GATEWAY_SERVER_LISTEN", "127.0.0.1:2222"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("127.0.0.1:2222"),
        "env beats file:\n{stdout}"
    );
    assert!(
        !stdout.contains("127.0.0.1:1111"),
        "env beats file:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_flag_overrides_env_and_file() {
    // The env and file name ports that are busy; only the flag's address works.
    let busy1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new();
    let cfg = dir.write(
        "gw.toml",
        &format!("[server]\nlisten = \"{}\"\n", busy1.local_addr().unwrap()),
    );
    let gw = gateway()
        .env(
            "GATEWAY_SERVER_LISTEN",
            &busy2.local_addr().unwrap().to_string(),
        )
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .start()
        .await;
    assert_ne!(gw.addr, busy1.local_addr().unwrap());
    assert_ne!(gw.addr, busy2.local_addr().unwrap());
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_mints_a_working_token() {
    let gw = gateway().start().await;
    let out = run_cli(
        &["token", "--sub", "42", "--roles", "ops", "--ttl", "1h"],
        &[("GATEWAY_AUTH_SECRET", SECRET)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "token prints the JWT alone: {stdout:?}");
    let jwt = lines[0].trim();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt:?}");
    gw.connect_user(jwt, "42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_command_user_and_broadcast() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let mut a = gw.user("42", &[]).await;
    let mut b = gw.user("43", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;
    redis.wait_deliverable("ws:broadcast").await;
    let env = [
        ("GATEWAY_AUTH_SECRET", SECRET),
        ("GATEWAY_REDIS_URL", &redis.url() as &str),
    ];

    let out = run_cli(
        &[
            "publish",
            "--user",
            "42",
            "--type",
            "BUDGET_ALERT",
            "--data",
            r#"{"a":1}"#,
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "publish --user: {:?} {}",
        out.status,
        text(&out.stderr)
    );
    let res: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("publish prints JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(res["channel"], "ws:user:42", "{res}");
    let id = res["id"].as_str().expect("id").to_string();
    let v = a.next_json().await;
    assert_eq!(v["type"], "BUDGET_ALERT", "{v}");
    assert_eq!(v["data"], serde_json::json!({"a":1}), "{v}");
    assert_eq!(v["id"], id.as_str(), "{v}");
    let hist = redis.cli(&["LRANGE", "notifications:42", "0", "-1"]);
    assert!(
        hist.contains(&id),
        "history of 42 holds the message: {hist}"
    );

    let out = run_cli(&["publish", "--broadcast", "--type", "X"], &env);
    assert!(
        out.status.success(),
        "publish --broadcast: {}",
        text(&out.stderr)
    );
    let res: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("publish prints JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(res["channel"], "ws:broadcast", "{res}");
    for c in [&mut a, &mut b] {
        let v = c.next_json().await;
        assert_eq!(v["type"], "X", "{v}");
        assert_eq!(v["id"], res["id"], "{v}");
    }
}

#[test]
fn publish_without_redis_points_to_the_http_api() {
    let out = run_cli(
        &["publish", "--user", "42", "--type", "X"],
        &[("GATEWAY_AUTH_SECRET", SECRET)],
    );
    assert_fails_naming(&out, "/ws/test-message");
}

/// Whether `jwt` is an HS256 token signed with `secret`.
fn signed_with(jwt: &str, secret: &str) -> bool {
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<Value>(jwt, &key, &validation).is_ok()
}

#[test]
fn token_without_key_material_uses_the_dev_secret_under_home() {
    // No XDG_STATE_HOME: the file goes under $HOME/.local/state. Several
    // `token` processes started at once must agree on one secret.
    let dir = TempDir::new();
    let no_xdg = [("XDG_STATE_HOME", "")];
    let outs: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let sub = format!("user-{i}");
                let dir = dir.path();
                s.spawn(move || run_cli_with_state(dir, &["token", "--sub", &sub], &no_xdg))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let file = dir.path().join("home/.local/state/ws-gateway/dev-secret");
    let secret = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string();
    for out in outs {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        assert!(
            signed_with(stdout.trim(), &secret),
            "the token on stdout ({stdout:?}) should be signed with the secret in {}",
            file.display()
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "a note on stderr names the file: {stderr:?}"
        );
    }
}

#[test]
fn token_without_key_material_fails_clearly_when_the_dev_secret_is_unusable() {
    let dir = TempDir::new();
    let blocker = dir.write("not-a-directory", "");
    let out = run_cli_with_state(
        dir.path(),
        &["token", "--sub", "alice"],
        &[("XDG_STATE_HOME", blocker.to_str().unwrap())],
    );
    assert_fails_naming(&out, blocker.to_str().unwrap());
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
}

#[test]
fn check_config_in_dev_mode_names_the_dev_secret_file() {
    let dir = TempDir::new();
    let out = run_cli_with_state(dir.path(), &["check-config"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dev_secret_file(dir.path());
    assert!(
        stdout.contains(&file.display().to_string()),
        "check-config should say where dev mode keeps its secret:\n{stdout}"
    );
    assert!(
        !file.exists(),
        "check-config only looks: {}",
        file.display()
    );
}
