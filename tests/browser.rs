//! The built-in test console in a real browser: headless Chromium opens
//! `/socket-test.html` as a new user would (from the dev-mode link with the
//! tokens in the URL fragment), connects, and shows an event published with
//! the admin API. Driven over the Chrome DevTools Protocol with the same
//! WebSocket client the other tests use.
//!
//! `scripts/test.sh` installs Chromium. Run without it, the test says so and
//! passes, except under CI (`CI` set), where a missing browser fails it.

mod common;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Chromium, killed on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts headless Chromium with remote debugging on a loopback port and
/// returns it with its DevTools WebSocket URL.
fn start_browser(binary: &PathBuf, profile: &TempDir) -> (Browser, String) {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("chromium stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let browser = Browser(child);
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not print its DevTools URL within 30 s");
    (browser, url)
}

/// A minimal DevTools Protocol client: one request at a time.
struct Cdp {
    ws: Ws,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            request["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .expect("send to chromium");
        let deadline = Instant::now() + Duration::from_secs(20);
        // Events may come before the answer; skip them (bounded by time).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"))
                .expect("chromium closed the DevTools socket")
                .expect("DevTools read");
            let Message::Text(text) = frame else { continue };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"] == json!(id) {
                assert!(value.get("error").is_none(), "{method} failed: {value}");
                return value["result"].clone();
            }
        }
    }

    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it returns true, at most `limit`.
    async fn wait_for(&mut self, session: &str, expression: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(session, expression).await == json!(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_connects_and_shows_a_published_event() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (scripts/test.sh installs it)"
        );
        eprintln!(
            "SKIPPED console_connects_and_shows_a_published_event: chromium is not installed"
        );
        return;
    };
    let gw = gateway().start().await;
    let user = token("42", &[]);
    let admin = admin_token();
    let profile = TempDir::new();
    let (_browser, devtools) = start_browser(&binary, &profile);
    let (ws, _) = tokio_tungstenite::connect_async(devtools.as_str())
        .await
        .expect("connect to chromium DevTools");
    let mut cdp = Cdp { ws, next_id: 0 };

    let page = format!(
        "http://127.0.0.1:{}/socket-test.html#token={user}&admin={admin}&autoconnect",
        gw.port()
    );
    let target = cdp
        .call(None, "Target.createTarget", json!({ "url": page }))
        .await;
    let attached = cdp
        .call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    let session = attached["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_string();

    let connected = cdp
        .wait_for(
            &session,
            "document.getElementById('state')?.dataset.state === 'connected'",
            Duration::from_secs(20),
        )
        .await;
    let state = cdp
        .eval(&session, "document.getElementById('state')?.textContent")
        .await;
    assert!(connected, "the console did not connect; state: {state}");
    gw.wait_connections(1).await;

    // The backend (here: the admin API) publishes; the page shows it.
    let body =
        br#"{"type":"BUDGET_ALERT","data":{"category":"dining","spent":460.0,"limit":400.0}}"#;
    let r = gw.post_bearer("/ws/test-message/42", &admin, body).await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    let id = r.json()["id"].as_str().expect("id").to_string();
    let shown = cdp
        .wait_for(
            &session,
            &format!(
                "(() => {{ const t = document.getElementById('log')?.innerText || ''; \
                 return t.includes('BUDGET_ALERT') && t.includes('{id}'); }})()"
            ),
            Duration::from_secs(20),
        )
        .await;
    let log = cdp
        .eval(&session, "document.getElementById('log')?.innerText")
        .await;
    assert!(
        shown,
        "the event did not appear in the console's log: {log}"
    );

    // PING from the page gets its PONG (the round trip is displayed).
    cdp.eval(&session, "document.getElementById('ping').click()")
        .await;
    let ponged = cdp
        .wait_for(
            &session,
            "(document.getElementById('log')?.innerText || '').includes('PONG')",
            Duration::from_secs(10),
        )
        .await;
    assert!(ponged, "no PONG in the console's log");

    // Keep a picture for people reviewing the console.
    let shot = cdp
        .call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )
        .await;
    if let Some(data) = shot["data"].as_str() {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("socket-test-console.png");
        if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(data) {
            let _ = std::fs::write(out, png);
        }
    }
}
