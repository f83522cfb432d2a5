//! The built-in test console in a real browser: headless Chromium opens
//! `/socket-test.html` as a new user would (from the dev-mode link with the
//! tokens in the URL fragment), connects, and shows events published with
//! the admin API; at laptop window sizes the page fits, and it reconnects
//! by itself, by close code, resuming where it stopped. Driven over the
//! Chrome DevTools Protocol with the same WebSocket client the other tests
//! use.
//!
//! `scripts/test.sh` installs Chromium. Run without it, each test says so
//! and passes, except under CI (`CI` set), where a missing browser fails it.

mod common;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Bound for the page to reach a state it should reach by itself.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Chromium, or `None` (after saying so) when it is not installed and the
/// test should pass without it. Under CI a missing browser fails the test.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED {test}: chromium is not installed");
    }
    found
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
/// a window of `width`x`height`, and returns it with its DevTools WebSocket
/// URL.
fn start_browser(
    binary: &PathBuf,
    profile: &TempDir,
    (width, height): (u32, u32),
) -> (Browser, String) {
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
            "about:blank",
        ])
        .arg(format!("--window-size={width},{height}"))
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

/// A minimal DevTools Protocol client: one request at a time. The events
/// that arrive meanwhile are kept, to be inspected afterwards.
struct Cdp {
    ws: Ws,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(devtools: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(devtools)
            .await
            .expect("connect to chromium DevTools");
        Cdp {
            ws,
            next_id: 0,
            events: Vec::new(),
        }
    }

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
        // Events may come before the answer; keep them (bounded by time).
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
            if value.get("method").is_some() {
                self.events.push(value);
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
        if let Some(e) = result.get("exceptionDetails") {
            panic!("the page threw evaluating {expression}: {e}");
        }
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

    /// Opens `url` in a new tab with a `width`x`height` viewport, with the
    /// network and log domains enabled before the page loads (so that every
    /// response, favicon included, is seen). Returns the session id.
    async fn open_page(&mut self, url: &str, (width, height): (u32, u32)) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
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
        for domain in [
            "Page.enable",
            "Network.enable",
            "Log.enable",
            "Runtime.enable",
        ] {
            self.call(Some(&session), domain, json!({})).await;
        }
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        self.call(Some(&session), "Page.navigate", json!({ "url": url }))
            .await;
        let path = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
            .unwrap_or("/");
        let path = path.split(['#', '?']).next().unwrap_or(path);
        let loaded = self
            .wait_for(
                &session,
                &format!("document.readyState === 'complete' && location.pathname === {path:?}"),
                PAGE_TIMEOUT,
            )
            .await;
        assert!(loaded, "{url} did not load within {PAGE_TIMEOUT:?}");
        session
    }

    /// A real click (mouse pressed and released) at the centre of the
    /// first element matching `selector`, scrolled into view first (as
    /// a user scrolls to what they click).
    async fn click(&mut self, session: &str, selector: &str) {
        let at = self
            .eval(
                session,
                &format!(
                    "(() => {{ const e = document.querySelector({selector:?}); \
                     e.scrollIntoView({{ block: 'nearest', inline: 'nearest' }}); \
                     const r = e.getBoundingClientRect(); \
                     return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
                ),
            )
            .await;
        let (x, y) = (at[0].as_f64().expect("x"), at[1].as_f64().expect("y"));
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(session),
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Every 404 the page met so far: responses with status 404, and log
    /// entries (network errors) that mention one.
    fn not_found(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.events {
            match e["method"].as_str() {
                Some("Network.responseReceived") if e["params"]["response"]["status"] == 404 => {
                    out.push(format!("404 {}", e["params"]["response"]["url"]));
                }
                Some("Log.entryAdded") => {
                    let entry = &e["params"]["entry"];
                    let text = entry["text"].as_str().unwrap_or_default();
                    if text.contains("404") {
                        out.push(format!("log: {text} {}", entry["url"]));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Console errors and exceptions the page logged so far.
    fn page_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.events {
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => out.push(e["params"].to_string()),
                Some("Log.entryAdded") if e["params"]["entry"]["level"] == "error" => {
                    out.push(e["params"]["entry"].to_string())
                }
                _ => {}
            }
        }
        out
    }

    async fn screenshot(&mut self, session: &str, name: &str) {
        let shot = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        if let Some(data) = shot["data"].as_str() {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
            if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(data) {
                let _ = std::fs::write(out, png);
            }
        }
    }
}

/// The console in one tab of its own browser.
struct Console {
    cdp: Cdp,
    session: String,
    _browser: Browser,
    _profile: TempDir,
}

impl Console {
    /// Opens the console on the gateway at `port` as the dev-mode link does
    /// (`#token=…&admin=…&autoconnect`) in a `viewport`-sized window.
    async fn open(
        binary: &PathBuf,
        port: u16,
        user: &str,
        admin: &str,
        viewport: (u32, u32),
    ) -> Console {
        let fragment = format!("token={user}&admin={admin}&autoconnect");
        Console::open_with(binary, port, &fragment, viewport).await
    }

    /// Opens the console with `fragment` after the `#` of its URL.
    async fn open_with(
        binary: &PathBuf,
        port: u16,
        fragment: &str,
        viewport: (u32, u32),
    ) -> Console {
        let url = format!("http://127.0.0.1:{port}/socket-test.html#{fragment}");
        Console::open_url(binary, &url, viewport).await
    }

    /// Opens any page `url` (not only the console) the same way.
    async fn open_url(binary: &PathBuf, url: &str, viewport: (u32, u32)) -> Console {
        let profile = TempDir::new();
        let (browser, devtools) = start_browser(binary, &profile, viewport);
        let mut cdp = Cdp::connect(&devtools).await;
        let session = cdp.open_page(url, viewport).await;
        Console {
            cdp,
            session,
            _browser: browser,
            _profile: profile,
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        self.cdp.eval(&self.session, expression).await
    }

    async fn wait_for(&mut self, expression: &str, limit: Duration) -> bool {
        self.cdp.wait_for(&self.session, expression, limit).await
    }

    async fn click(&mut self, selector: &str) {
        self.cdp.click(&self.session, selector).await
    }

    /// Picks `transport` (`ws`, `sse`, `socketio`) in the selector, as a
    /// keyboard user does (the value changes, then `change` fires), and
    /// checks that the address keeps it.
    async fn choose_transport(&mut self, transport: &str) {
        let chosen = self
            .eval(&format!(
                "(() => {{ const s = document.getElementById('transport'); s.focus(); \
                 s.value = {transport:?}; s.dispatchEvent(new Event('change', {{ bubbles: true }})); \
                 return {{ value: s.value, hash: location.hash }}; }})()"
            ))
            .await;
        assert_eq!(chosen["value"], json!(transport), "{chosen}");
        assert_eq!(
            chosen["hash"],
            json!(format!("#transport={transport}")),
            "the transport is kept in the URL fragment: {chosen}"
        );
    }

    /// Waits until a received row of type `ty` mentions `needle`.
    async fn wait_typed_event(&mut self, ty: &str, needle: &str) {
        let shown = self
            .wait_for(
                &format!("({}) > 0", typed_entries_containing(ty, needle)),
                PAGE_TIMEOUT,
            )
            .await;
        let log = self.log_text().await;
        assert!(
            shown,
            "no {ty} event with {needle} appeared in the console's log: {log}"
        );
    }

    /// Keeps a picture (in the target dir) for people reviewing the console.
    async fn screenshot(&mut self, name: &str) {
        self.cdp.screenshot(&self.session, name).await
    }

    /// The state badge's text (`connected`, `reconnecting · in 1.2 s …`).
    /// Checks that `expression` keeps its value for `window` (a retry that
    /// must not come: the silence is the assertion, bounded).
    async fn expect_no_change(&mut self, expression: &str, window: Duration) {
        let before = self.eval(expression).await;
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            let now = self.eval(expression).await;
            assert_eq!(now, before, "{expression} changed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn state(&mut self) -> Value {
        self.eval("document.getElementById('state')?.textContent")
            .await
    }

    async fn log_text(&mut self) -> Value {
        self.eval("document.getElementById('log')?.innerText").await
    }

    /// Waits until the state badge says `connected`, or panics showing it.
    async fn wait_connected(&mut self) {
        let connected = self
            .wait_for(
                "document.getElementById('state')?.dataset.state === 'connected'",
                PAGE_TIMEOUT,
            )
            .await;
        let state = self.state().await;
        assert!(connected, "the console did not connect; state: {state}");
    }

    /// Waits until an event whose summary contains `needle` is in the log.
    async fn wait_event(&mut self, needle: &str) {
        let shown = self
            .wait_for(
                &format!("({}) > 0", entries_containing(needle)),
                PAGE_TIMEOUT,
            )
            .await;
        let log = self.log_text().await;
        assert!(
            shown,
            "no event with {needle} appeared in the console's log: {log}"
        );
    }

    /// How many received-message entries of the log mention `needle`.
    async fn count_events(&mut self, needle: &str) -> u64 {
        self.eval(&entries_containing(needle))
            .await
            .as_u64()
            .expect("a count")
    }
}

/// JS: the number of received-message rows (not the console's own notes)
/// whose summary line contains `needle`.
fn entries_containing(needle: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log .entry:not(.local)')]\
         .filter((e) => e.querySelector('summary')?.textContent.includes({needle:?})).length"
    )
}

/// JS: the number of received-message rows of type `ty` whose summary
/// line contains `needle`.
fn typed_entries_containing(ty: &str, needle: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log .entry:not(.local)')]\
         .filter((e) => e.dataset.type === {ty:?} \
           && e.querySelector('.ty')?.textContent === {ty:?} \
           && e.querySelector('summary')?.textContent.includes({needle:?})).length"
    )
}

/// JS: where an element is, and whether it is entirely inside the viewport
/// and not covered at its centre.
const IN_VIEW: &str = "(sel) => { const e = document.querySelector(sel); \
     if (!e) return { sel, missing: true, inside: false }; \
     const r = e.getBoundingClientRect(); \
     const inside = r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 \
       && r.right <= window.innerWidth && r.bottom <= window.innerHeight; \
     const top = inside ? document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) : null; \
     return { sel, left: r.left, right: r.right, top: r.top, bottom: r.bottom, \
       inside: inside && !!top && (top === e || e.contains(top)) }; }";

/// Asserts that the page is no wider than the window and that every
/// element of `selectors` is in view; `when` names the moment.
async fn assert_fits(console: &mut Console, selectors: &[&str], when: &str) {
    let list = serde_json::to_string(selectors).unwrap();
    let layout = console
        .eval(&format!(
            "(() => {{ const inView = {IN_VIEW}; return {{ \
               innerWidth: window.innerWidth, innerHeight: window.innerHeight, \
               scrollWidth: document.documentElement.scrollWidth, \
               scrollX: window.scrollX, scrollY: window.scrollY, \
               items: {list}.map(inView) }}; }})()"
        ))
        .await;
    let inner = layout["innerWidth"].as_u64().expect("innerWidth");
    let scroll = layout["scrollWidth"].as_u64().expect("scrollWidth");
    assert!(
        scroll <= inner,
        "{when}: the page is {scroll} px wide in a {inner} px window (horizontal scroll): {layout}"
    );
    for item in layout["items"].as_array().expect("items") {
        assert_eq!(
            item["inside"],
            json!(true),
            "{when}: {} is not in view: {layout}",
            item["sel"]
        );
    }
}

/// An event whose summary is about 900 characters: longer than any window
/// is wide. Its id comes first, so that it is in the shown part.
fn long_event(id: &str) -> String {
    let note = "spent more than planned on dining this month ".repeat(20);
    json!({ "type": "BUDGET_ALERT", "id": id, "data": { "category": "dining", "spent": 460.0, "limit": 400.0, "note": note } })
        .to_string()
}

/// The console at one laptop window size: it fits, its tokens are hidden,
/// it shows events from the admin API, and one can be opened and closed
/// without the controls leaving the screen.
async fn console_at(test: &str, viewport: (u32, u32)) {
    let Some(binary) = chromium_or_skip(test) else {
        return;
    };
    let gw = gateway().start().await;
    let user = token("42", &[]);
    let admin = admin_token();
    let mut console = Console::open(&binary, gw.port(), &user, &admin, viewport).await;
    let size = format!("{}x{}", viewport.0, viewport.1);

    console.wait_connected().await;
    gw.wait_connections(1).await;
    assert_fits(
        &mut console,
        &["#clear", "#log-count", "#connect"],
        &format!("{size}, connected"),
    )
    .await;

    // Both token fields are password fields with a show/hide toggle.
    for (field, toggle) in [
        ("token", "token-reveal"),
        ("admin-token", "admin-token-reveal"),
    ] {
        let field_type = format!("document.getElementById('{field}').type");
        assert_eq!(
            console.eval(&field_type).await,
            json!("password"),
            "#{field} starts hidden"
        );
        console.click(&format!("#{toggle}")).await;
        assert_eq!(
            console.eval(&field_type).await,
            json!("text"),
            "#{toggle} shows #{field}"
        );
        console.click(&format!("#{toggle}")).await;
        assert_eq!(
            console.eval(&field_type).await,
            json!("password"),
            "#{toggle} hides #{field} again"
        );
    }
    assert_eq!(
        console.eval("document.getElementById('token').value").await,
        json!(user),
        "the token from the link is in the field"
    );

    // The backend (here: the admin API, as the README's curl) publishes; the
    // page shows it. A long event first, then enough short ones to fill the
    // events pane.
    let long_id = ulid::Ulid::new().to_string();
    let r = gw
        .post_bearer(
            "/ws/test-message/42",
            &admin,
            long_event(&long_id).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    assert_eq!(
        r.json()["id"],
        json!(long_id),
        "the admin API keeps a given id"
    );
    console.wait_event(&long_id).await;
    let mut last = String::new();
    for n in 0..30 {
        let body = format!(r#"{{"type":"NOTIFICATION","data":{{"n":{n}}}}}"#);
        let r = gw
            .post_bearer("/ws/test-message/42", &admin, body.as_bytes())
            .await;
        assert_eq!(r.status, 202, "publish: {r:?}");
        last = r.json()["id"].as_str().expect("id").to_string();
    }
    console.wait_event(&last).await;
    assert!(
        console
            .log_text()
            .await
            .as_str()
            .unwrap_or_default()
            .contains("BUDGET_ALERT"),
        "the event's type is shown"
    );
    assert_fits(
        &mut console,
        &["#clear", "#log-count", "#connect"],
        &format!("{size}, with a long event"),
    )
    .await;

    // The long summary is cut with an ellipsis inside the window.
    let row = format!(
        "[...document.querySelectorAll('#log .entry')].find((e) => e.querySelector('summary').textContent.includes({long_id:?}))"
    );
    let summary = console
        .eval(&format!(
            "(() => {{ const s = {row}.querySelector('.sum'); const r = s.getBoundingClientRect(); \
             return {{ right: r.right, innerWidth: window.innerWidth, cut: s.scrollWidth > s.clientWidth, \
               ellipsis: getComputedStyle(s).textOverflow === 'ellipsis' }}; }})()"
        ))
        .await;
    assert!(
        summary["right"].as_f64().unwrap_or(f64::INFINITY)
            <= summary["innerWidth"].as_f64().unwrap_or(0.0)
            && summary["cut"] == json!(true)
            && summary["ellipsis"] == json!(true),
        "{size}: the long summary should be ellipsized inside the window: {summary}"
    );

    // Expand the long event, bring its body into view as a reader would,
    // and the connect controls are still on screen.
    console
        .eval(&format!(
            "{row}.querySelector('summary').setAttribute('id', 'long-summary')"
        ))
        .await;
    console
        .eval(&format!("{row}.setAttribute('id', 'long-event')"))
        .await;
    console.click("#long-summary").await;
    let opened = console
        .wait_for(
            "(() => { const d = document.getElementById('long-event'); \
             return d.open && d.querySelector('pre').checkVisibility() \
             && d.getBoundingClientRect().height > 100; })()",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        opened,
        "{size}: clicking the event's summary did not expand it"
    );
    console
        .eval("document.querySelector('#long-event pre').scrollIntoView({ block: 'nearest', inline: 'nearest' })")
        .await;
    assert_fits(
        &mut console,
        &[
            "#connect",
            "#token",
            "#state",
            "#clear",
            "#log-count",
            "#long-event pre",
        ],
        &format!("{size}, event expanded"),
    )
    .await;
    console
        .screenshot(&format!("socket-test-console-{size}.png"))
        .await;

    console.click("#long-summary").await;
    let closed = console
        .wait_for(
            "(() => { const d = document.getElementById('long-event'); \
             return !d.open && !d.querySelector('pre').checkVisibility() \
             && d.getBoundingClientRect().height < 40; })()",
            Duration::from_secs(5),
        )
        .await;
    let shown = console
        .eval(
            "(() => { const d = document.getElementById('long-event'); \
             return { open: d.open, height: d.getBoundingClientRect().height, \
               body_visible: d.querySelector('pre').checkVisibility() }; })()",
        )
        .await;
    assert!(
        closed,
        "{size}: clicking the summary again did not collapse the event: {shown}"
    );
    assert_fits(
        &mut console,
        &["#connect", "#clear", "#log-count"],
        &format!("{size}, event collapsed"),
    )
    .await;

    // PING from the page gets its PONG (the round trip is displayed).
    console.click("#ping").await;
    let ponged = console
        .wait_for(
            &format!("({}) > 0", entries_containing("PONG")),
            Duration::from_secs(10),
        )
        .await;
    assert!(ponged, "no PONG in the console's log");

    // No 404 (a favicon the page does not declare is requested and missing).
    let icon = console
        .eval("document.querySelector(\"link[rel~='icon']\")?.href.startsWith('data:') === true")
        .await;
    assert_eq!(icon, json!(true), "the page declares an inline icon");
    let not_found = console.cdp.not_found();
    assert!(not_found.is_empty(), "the page met 404s: {not_found:?}");
    let errors = console.cdp.page_errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_fits_a_1024x768_window() {
    console_at("console_fits_a_1024x768_window", (1024, 768)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_fits_a_1280x800_window() {
    console_at("console_fits_a_1280x800_window", (1280, 800)).await;
}

/// The gateway goes away (killed) and comes back on the same address: the
/// console reconnects by itself with `since=<last id>`, the gateway reports
/// `recovered: true`, and the one event published meanwhile is shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reconnects_after_a_gateway_restart_and_shows_the_missed_event_once() {
    let test = "console_reconnects_after_a_gateway_restart_and_shows_the_missed_event_once";
    let Some(binary) = chromium_or_skip(test) else {
        return;
    };
    let redis = Redis::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let start = || gateway().redis(&redis).arg("--listen").arg(&listen).start();
    let gw = start().await;
    let user = token("7", &[]);
    let admin = admin_token();
    let mut console = Console::open(&binary, gw.port(), &user, &admin, (1280, 800)).await;
    console.wait_connected().await;
    gw.wait_connections(1).await;

    let r = gw
        .post_bearer(
            "/ws/test-message/7",
            &admin,
            br#"{"type":"BEFORE_RESTART"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    let before = r.json()["id"].as_str().expect("id").to_string();
    console.wait_event(&before).await;
    assert_eq!(
        console.eval("wsConsole.lastId").await,
        json!(before),
        "last id follows the event"
    );

    drop(gw);
    let waiting = console
        .wait_for(
            "document.getElementById('state')?.dataset.state === 'reconnecting' \
             && /in \\d+\\.\\d s/.test(document.getElementById('state').textContent)",
            PAGE_TIMEOUT,
        )
        .await;
    let state = console.state().await;
    assert!(
        waiting,
        "the console does not show a reconnect countdown: {state}"
    );

    // Published while no gateway runs: only in the history.
    let missed_id = ulid::Ulid::new().to_string();
    let missed =
        json!({ "type": "MISSED_WHILE_DOWN", "id": missed_id, "data": { "n": 1 } }).to_string();
    let acked = redis
        .conn()
        .await
        .publish_canonical("7", missed.as_bytes(), 100, WAIT_TIMEOUT)
        .await
        .expect("publish into Redis");
    assert!(acked, "Redis refused the canonical publish");

    let gw = start().await;
    // Short backoff after 1006: the first attempts fail while it is down,
    // and the next one (well within 20 s) finds it.
    let recovered = console
        .wait_for(
            "document.getElementById('state')?.dataset.state === 'connected' \
             && wsConsole.connected?.recovered === true",
            Duration::from_secs(40),
        )
        .await;
    let state = console.state().await;
    let log = console.log_text().await;
    assert!(
        recovered,
        "the console did not reconnect with recovered: true; state: {state}; log: {log}"
    );
    let connects = console.eval("wsConsole.connects.map((c) => c.url)").await;
    let resumed = connects
        .as_array()
        .and_then(|c| c.last())
        .and_then(|u| u.as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        resumed.ends_with(&format!("?since={before}")),
        "the reconnect resumes from the last id {before}: {connects}"
    );
    assert!(
        console
            .eval("document.getElementById('st-recovered').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.starts_with("true")),
        "the page shows recovered: true"
    );
    console.wait_event(&missed_id).await;

    // A live event after the replay: once it is in, nothing more of the
    // replay can come, so the counts are final.
    let r = gw
        .post_bearer("/ws/test-message/7", &admin, br#"{"type":"AFTER_RESTART"}"#)
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    let after = r.json()["id"].as_str().expect("id").to_string();
    console.wait_event(&after).await;
    assert_eq!(
        console.count_events(&missed_id).await,
        1,
        "the missed event is shown once"
    );
    assert_eq!(
        console.count_events(&before).await,
        1,
        "the event before the restart is shown once"
    );
    assert_eq!(
        console.eval("wsConsole.lastId").await,
        json!(after),
        "last id follows the live event"
    );
    console
        .screenshot("socket-test-console-reconnected.png")
        .await;
}

/// A refused token (4001) stops the console, which asks for a new token
/// and schedules nothing; too many connections (4029) backs off for tens
/// of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_backs_off_by_close_code() {
    let Some(binary) = chromium_or_skip("console_backs_off_by_close_code") else {
        return;
    };
    let gw = gateway()
        .env("GATEWAY_CONNECTION_MAX_CONNECTIONS_PER_USER", "1")
        .start()
        .await;
    let admin = admin_token();

    // 4001: a token signed with another secret.
    let bad = mint_with_secret("not-the-gateway-secret", "8", &[], "1h");
    let mut console = Console::open(&binary, gw.port(), &bad, &admin, (1280, 800)).await;
    let stopped = console
        .wait_for(
            "document.getElementById('state')?.dataset.state === 'token'",
            PAGE_TIMEOUT,
        )
        .await;
    let state = console.state().await;
    assert!(
        stopped,
        "after 4001 the console should ask for a new token: {state}"
    );
    assert!(
        state.as_str().is_some_and(|s| s.contains("4001")),
        "the state names the close code: {state}"
    );
    let after = console
        .eval("({ retry: wsConsole.retry, connects: wsConsole.connects.length, focused: document.activeElement?.id })")
        .await;
    assert_eq!(
        after["retry"],
        Value::Null,
        "no reconnect is scheduled after 4001: {after}"
    );
    assert_eq!(after["connects"], json!(1), "one attempt only: {after}");
    assert_eq!(
        after["focused"],
        json!("token"),
        "the token field is focused: {after}"
    );
    drop(console);

    // 4029: the user's one allowed connection is taken.
    let _holder = gw.user("9", &[]).await;
    let mut console =
        Console::open(&binary, gw.port(), &token("9", &[]), &admin, (1280, 800)).await;
    let backing_off = console
        .wait_for(
            "document.getElementById('state')?.dataset.state === 'reconnecting' && wsConsole.retry?.code === 4029",
            PAGE_TIMEOUT,
        )
        .await;
    let state = console.state().await;
    assert!(
        backing_off,
        "after 4029 the console should wait to reconnect: {state}"
    );
    let retry = console.eval("wsConsole.retry").await;
    assert_eq!(
        retry["kind"],
        json!("long"),
        "long backoff after 4029: {retry}"
    );
    assert!(
        retry["delay"].as_f64().is_some_and(|d| d >= 10_000.0),
        "a long backoff is tens of seconds: {retry}"
    );
}

/// SSE in the console: chosen in the selector (PING goes away), it
/// connects with an `EventSource` (the token in the query, never in what
/// the page records), shows CONNECTED, an event published with the admin
/// API, and one of a type it did not know, published from its own form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_events_over_sse() {
    let Some(binary) = chromium_or_skip("console_shows_events_over_sse") else {
        return;
    };
    let gw = gateway().start().await;
    let user = token("42", &[]);
    let admin = admin_token();
    let fragment = format!("token={user}&admin={admin}");
    let mut console = Console::open_with(&binary, gw.port(), &fragment, (1280, 800)).await;
    console.choose_transport("sse").await;
    assert_eq!(
        console
            .eval("document.getElementById('ping').checkVisibility()")
            .await,
        json!(false),
        "PING is for /ws only"
    );
    console.click("#connect").await;
    console.wait_connected().await;
    let subscribed = console
        .wait_for("wsConsole.connected?.user_id === '42'", PAGE_TIMEOUT)
        .await;
    let log = console.log_text().await;
    assert!(subscribed, "no CONNECTED event over SSE: {log}");
    let connects = console.eval("wsConsole.connects").await;
    let url = connects[0]["url"].as_str().unwrap_or_default().to_string();
    assert!(
        url.starts_with("/sse?token=") && !url.contains(&user),
        "the SSE URL is recorded without the token: {connects}"
    );

    let id = ulid::Ulid::new().to_string();
    let alert = json!({ "type": "BUDGET_ALERT", "id": id, "data": { "category": "dining" } });
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, alert.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    console.wait_typed_event("BUDGET_ALERT", &id).await;
    assert_eq!(
        console.eval("wsConsole.lastId").await,
        json!(id),
        "last id follows the event"
    );

    // A type outside the console's list, published from its own form: the
    // page listens for it before it posts.
    console
        .eval(
            "document.getElementById('msg-type').value = 'CUSTOM_FROM_FORM'; \
             document.getElementById('msg-data').value = '{\"n\": 7}'",
        )
        .await;
    console.click("#publish").await;
    let posted = console
        .wait_for(
            "document.getElementById('publish-result').dataset.status === '202'",
            PAGE_TIMEOUT,
        )
        .await;
    let result = console
        .eval("document.getElementById('publish-result').textContent")
        .await;
    assert!(posted, "the form's publish failed: {result}");
    console
        .wait_typed_event("CUSTOM_FROM_FORM", "\"n\":7")
        .await;
    // The page's own EventSource read it: on the connection that loaded
    // the page, /sse is a 307 to a fresh one, which EventSource follows.
    let reader = console.eval("wsConsole.sseReader").await;
    assert_eq!(
        reader,
        json!("eventsource"),
        "the stream was read with {reader}"
    );
    console.screenshot("socket-test-console-sse.png").await;
    let errors: Vec<String> = console.cdp.page_errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

/// Socket.IO in the console: its hand-written Engine.IO client connects
/// with the token in the CONNECT packet, shows an event under its mapped
/// name, and after a dropped transport (4008: reconnect) comes back with
/// its pid and offset, `recovered: true`, and the event it missed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_events_over_socketio_and_recovers() {
    let test = "console_shows_events_over_socketio_and_recovers";
    let Some(binary) = chromium_or_skip(test) else {
        return;
    };
    let gw = gateway().start().await;
    let user = token("42", &[]);
    let admin = admin_token();
    let fragment = format!("token={user}&admin={admin}");
    let mut console = Console::open_with(&binary, gw.port(), &fragment, (1280, 800)).await;
    console.choose_transport("socketio").await;
    assert_eq!(
        console
            .eval("document.getElementById('ping').checkVisibility()")
            .await,
        json!(false),
        "PING is for /ws only"
    );
    console.click("#connect").await;
    console.wait_connected().await;
    gw.wait_connections(1).await;
    let connected = console.eval("wsConsole.connected").await;
    assert_eq!(connected["recovered"], Value::Null, "{connected}");
    assert_eq!(connected["user_id"], json!("42"), "{connected}");
    assert!(
        connected["pid"].as_str().is_some_and(|p| !p.is_empty()),
        "the CONNECT reply's pid is kept: {connected}"
    );
    assert_eq!(
        console
            .eval("document.getElementById('user-id').value")
            .await,
        json!("42"),
        "the publish form's user id comes from the token"
    );

    let id = ulid::Ulid::new().to_string();
    let alert = json!({ "type": "BUDGET_ALERT", "id": id, "data": { "category": "dining" } });
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, alert.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    console
        .wait_typed_event("budget:threshold_exceeded", &id)
        .await;
    assert_eq!(
        console.eval("wsConsole.sio.offset").await,
        json!(id),
        "the offset is the event's last argument"
    );

    // The transport drops (as a slow consumer's would): the console
    // reconnects with its short backoff, sending pid and offset.
    let pid = connected["pid"].clone();
    console.eval("wsConsole.ws.close(4008, 'test')").await;
    let waiting = console
        .wait_for(
            "wsConsole.retry?.kind === 'short' || document.getElementById('state')?.dataset.state !== 'connected'",
            PAGE_TIMEOUT,
        )
        .await;
    assert!(waiting, "the console did not notice the close");
    let missed_id = ulid::Ulid::new().to_string();
    let missed = json!({ "type": "BALANCE_UPDATE", "id": missed_id, "data": { "n": 1 } });
    let r = gw
        .post_bearer("/ws/test-message/42", &admin, missed.to_string().as_bytes())
        .await;
    assert_eq!(r.status, 202, "publish: {r:?}");
    let recovered = console
        .wait_for(
            "document.getElementById('state')?.dataset.state === 'connected' \
             && wsConsole.connected?.recovered === true",
            PAGE_TIMEOUT,
        )
        .await;
    let state = console.state().await;
    let log = console.log_text().await;
    assert!(
        recovered,
        "the console did not come back with recovered: true; state: {state}; log: {log}"
    );
    assert_eq!(console.eval("wsConsole.connected.pid").await, pid);
    console
        .wait_typed_event("balance:updated", &missed_id)
        .await;
    assert_eq!(
        console.count_events(&missed_id).await,
        1,
        "the missed event is shown once"
    );
    assert!(
        console
            .eval("document.getElementById('st-recovered').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.starts_with("true")),
        "the page shows recovered: true"
    );
    console.screenshot("socket-test-console-socketio.png").await;
    let errors = console.cdp.page_errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

/// The README's `EventSource` snippet (`<!-- recipe: sse -->`), as printed
/// but for its origin, in a page of the gateway's origin: its CONNECTED
/// listener logs the connection, and its stream carries a BUDGET_ALERT
/// published to the room it asked for and one to the user. Named `readme_`
/// so that `scripts/test.sh readme` runs it with the other snippets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_sse_snippet_as_printed() {
    let Some(binary) = chromium_or_skip("readme_sse_snippet_as_printed") else {
        return;
    };
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let snippet = pointed_at(&readme_recipe("sse"), &format!("127.0.0.1:{}", gw.port()));
    let token = mint_claims(&json!({
        "sub": "42",
        "channels": ["household-*"],
        "exp": now_secs() + 600,
    }));
    let mut page = Console::open_with(&binary, gw.port(), "", (1024, 768)).await;
    // The page's side of the harness: the token the snippet reads, and a
    // record of what it logs.
    page.eval(&format!(
        "window.token = {}; window.logged = []; \
         {{ const log = console.log; console.log = (...a) => {{ logged.push(a); log(...a); }}; }} true",
        json!(token)
    ))
    .await;
    page.eval(&format!("{snippet}; true")).await;
    let connected = page
        .wait_for(
            "logged.some(a => a[0] === 'connected' && a[1].user_id === '42')",
            PAGE_TIMEOUT,
        )
        .await;
    assert!(
        connected,
        "the snippet did not log CONNECTED: {}",
        page.eval("JSON.stringify(logged)").await
    );
    page.eval("window.alerts = []; es.addEventListener('BUDGET_ALERT', (e) => alerts.push(e.lastEventId)); true")
        .await;
    redis.wait_numsub("ws:room:household-7", 1).await;
    for channel in ["ws:room:household-7", "ws:user:42"] {
        let id = ulid::Ulid::new().to_string();
        let alert = json!({ "type": "BUDGET_ALERT", "id": id, "data": { "category": "dining" } });
        redis.publish(channel, alert.to_string()).await;
        let got = page
            .wait_for(&format!("alerts.includes({})", json!(id)), PAGE_TIMEOUT)
            .await;
        assert!(
            got,
            "no BUDGET_ALERT from {channel}: {}",
            page.eval("JSON.stringify(alerts)").await
        );
    }
    assert_eq!(
        page.eval("es.readyState").await,
        json!(1),
        "the stream stays open"
    );
    let errors = page.cdp.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:?}");
}

/// A refused token over SSE and over Socket.IO, at 1024x768: the console
/// shows the SPEC code (SSE: from its fetch() of the refused request, since
/// `EventSource` does not tell; Socket.IO: the `44`), says why it stops,
/// and does not retry by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_token_refusals_over_sse_and_socketio() {
    let Some(binary) = chromium_or_skip("console_shows_token_refusals_over_sse_and_socketio")
    else {
        return;
    };
    let gw = gateway().start().await;
    let expired = mint_claims(&json!({ "sub": "42", "exp": now_secs() - 600 }));
    let code = "token_expired";
    for transport in ["sse", "socketio"] {
        let fragment = format!("token={expired}&admin={}", admin_token());
        let mut console = Console::open_with(&binary, gw.port(), &fragment, (1024, 768)).await;
        console.choose_transport(transport).await;
        console.click("#connect").await;
        let shown = console
            .wait_for(
                &format!("wsConsole.lastError?.code === {code:?} && !['connecting', 'connected', 'reconnecting'].includes(document.getElementById('state').dataset.state)"),
                PAGE_TIMEOUT,
            )
            .await;
        let state = console.state().await;
        assert!(
            shown,
            "{transport}: no {code} shown; state {state}, log {}",
            console.log_text().await
        );
        let help = console
            .eval("document.getElementById('close-help').innerText")
            .await;
        let help = help.as_str().unwrap_or_default();
        assert!(
            help.contains(code) && help.contains("get a new token, then press Connect"),
            "{transport}: the close help says why and what to do: {help:?}"
        );
        assert_fits(
            &mut console,
            &["#close-help", "#connect"],
            &format!("{transport}, refused"),
        )
        .await;
        let connects = console.eval("wsConsole.connects.length").await;
        console
            .expect_no_change("wsConsole.connects.length", Duration::from_secs(2))
            .await;
        assert_eq!(
            connects,
            json!(1),
            "{transport}: one attempt, no retry loop"
        );
        // The refused requests themselves are logged by the browser; any
        // other error is the page's.
        let errors: Vec<String> = console
            .cdp
            .page_errors()
            .into_iter()
            .filter(|e| !e.contains("status of 401 (Unauthorized)"))
            .collect();
        assert!(errors.is_empty(), "{transport}: page errors: {errors:?}");
    }
}

/// Issue 14, and the README's client example (`<!-- recipe: client -->`)
/// as printed but for its host: a page imports it as a module, with an
/// import map that resolves `ws-gateway-client` to the built
/// `clients/js/dist/index.js`. It connects through the `bearer.`
/// subprotocol, no token in any URL, joins its room, and shows an event
/// published with curl. The page is served by a static server on loopback,
/// another origin the gateway allows; it provides what the example calls
/// (`/api/ws-token`, `showBudgetAlert`, `refetchStateOverRest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_client_example_in_chromium_shows_an_event_published_with_curl() {
    let Some(binary) =
        chromium_or_skip("readme_client_example_in_chromium_shows_an_event_published_with_curl")
    else {
        return;
    };
    let dist = js_client_dir().join("dist");
    let redis = Redis::start();
    let site = TempDir::new();
    std::os::unix::fs::symlink(&dist, site.path().join("dist")).expect("link dist");
    let user = mint_claims(&json!({
        "sub": "42",
        "channels": ["household-*"],
        "exp": now_secs() + 600,
    }));
    let (_static_server, static_port) = static_server(site.path()).await;
    let origin = format!("http://127.0.0.1:{static_port}");
    let gw = gateway()
        .redis(&redis)
        .env("GATEWAY_SERVER_ALLOWED_ORIGINS", &origin)
        .start()
        .await;
    let example = pointed_at(
        &readme_recipe("client"),
        &format!("127.0.0.1:{}", gw.port()),
    );
    std::fs::create_dir(site.path().join("api")).expect("mkdir api");
    site.write("api/ws-token", &user);
    site.write(
        "index.html",
        &format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>client</title>
<script type="importmap">{{"imports": {{"ws-gateway-client": "/dist/index.js"}}}}</script>
<script>
  window.alerts = []; window.gaps = 0; window.states = [];
  window.showBudgetAlert = (data) => alerts.push(data);
  window.refetchStateOverRest = () => gaps++;
  {{ const log = console.log; console.log = (...a) => {{ if (a[0] === "gateway:") states.push(a[1]); log(...a); }}; }}
</script>
<script type="module">
{example}
window.subscribed = true;
</script>
</head><body></body></html>"#
        ),
    );
    let url = format!("{origin}/index.html");
    let mut page = Console::open_url(&binary, &url, (1024, 768)).await;
    let joined = page
        .wait_for("window.subscribed === true", PAGE_TIMEOUT)
        .await;
    assert!(
        joined,
        "the example did not connect and subscribe: states {}, errors {:?}",
        page.eval("JSON.stringify(states)").await,
        page.cdp.page_errors()
    );
    assert_eq!(page.eval("states.at(-1)").await, json!("connected"));
    redis.wait_numsub("ws:room:household-7", 1).await;

    let body = r#"{"type":"BUDGET_ALERT","data":{"category":"dining","percent":92}}"#;
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {}", admin_token())])
        .args(["-H", "Content-Type: application/json", "-d", body])
        .arg(format!("http://127.0.0.1:{}/ws/test-message/42", gw.port()))
        .output()
        .expect("run curl");
    assert!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let shown = page
        .wait_for(
            "alerts.some((a) => a.category === 'dining' && a.percent === 92)",
            PAGE_TIMEOUT,
        )
        .await;
    assert!(
        shown,
        "showBudgetAlert was not called: {}",
        page.eval("JSON.stringify(alerts)").await
    );

    // The token went in the subprotocol, never in the URL.
    let sockets: Vec<String> = page
        .cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Network.webSocketCreated")
        .map(|e| e["params"]["url"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!sockets.is_empty(), "no WebSocket seen");
    assert!(
        sockets
            .iter()
            .all(|u| !u.contains(&user) && !u.contains("token=")),
        "a token in a WebSocket URL: {sockets:?}"
    );
    assert_eq!(page.eval("gaps").await, json!(0));
    let errors = page.cdp.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:?}");
}

/// `python3 -m http.server` serving `dir` on a free loopback port, once it
/// accepts connections; killed on drop.
async fn static_server(dir: &Path) -> (ChildGuard, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    let guard = ChildGuard(Some(child));
    let up = wait_until(PAGE_TIMEOUT, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the static server did not start on {port}");
    (guard, port)
}
