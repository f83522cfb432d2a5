//! The repository's JS client (`clients/js`, the npm package
//! `ws-gateway-client`), driven from Rust through its test driver,
//! `clients/js/test/driver.mjs` (its header documents the commands and
//! events), over [`NodeDriver`].
//!
//! The package is built once per test binary ([`js_client_dir`]): `npm ci`
//! when its `node_modules` lacks what the driver imports, then `npm run
//! build` (tsc). scripts/test.sh builds and unit-tests it before `cargo
//! test`, so here that is quick.

use super::*;

/// The package's directory.
pub const JS_CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
/// How long the driver may take to start.
const JS_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `npm ci` or the build may take.
const JS_BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// `clients/js`, with its dependencies installed and `dist/` built.
pub fn js_client_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(JS_CLIENT_DIR);
        if !dir.join("node_modules/ws/package.json").is_file() {
            npm(&dir, &["ci", "--no-audit", "--no-fund"]);
        }
        npm(&dir, &["run", "build"]);
        assert!(
            dir.join("dist/index.js").is_file(),
            "`npm run build` in {} made no dist/index.js",
            dir.display()
        );
        dir
    })
}

/// Runs `npm ARGS` in `dir`, bounded; panics with its output on failure.
fn npm(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("npm");
    cmd.args(args).current_dir(dir);
    run_bounded(cmd, JS_BUILD_TIMEOUT)
        .assert_success(&format!("npm {args:?} in {}", dir.display()));
}

/// One `Gateway` of the JS client in a driver process.
pub struct JsClient {
    driver: NodeDriver,
}

impl std::ops::Deref for JsClient {
    type Target = NodeDriver;
    fn deref(&self) -> &NodeDriver {
        &self.driver
    }
}

impl std::ops::DerefMut for JsClient {
    fn deref_mut(&mut self) -> &mut NodeDriver {
        &mut self.driver
    }
}

impl JsClient {
    /// Starts a driver whose `Gateway` connects to `url` over `transport`
    /// (`"ws"` or `"sse"`), calling `token()` for the next of `tokens`
    /// each time (the last one again when they run out), with handlers for
    /// `types`.
    pub async fn start(url: &str, transport: &str, tokens: &[&str], types: &[&str]) -> JsClient {
        let dir = js_client_dir();
        let script = dir.join("test/driver.mjs");
        let mut cmd = Command::new("node");
        cmd.arg(&script).current_dir(dir);
        let mut driver = NodeDriver::start(cmd, &script.display().to_string());
        driver
            .wait_for(JS_START_TIMEOUT, |v| v["ev"] == "ready")
            .await;
        driver.send(&serde_json::json!({
            "cmd": "start",
            "url": url,
            "transport": transport,
            "tokens": tokens,
            "types": types,
        }));
        JsClient { driver }
    }

    /// Waits for the state `state` (`connecting`, `connected`, …).
    pub async fn wait_state(&mut self, timeout: Duration, state: &str) -> Value {
        self.driver
            .wait_for(timeout, |v| v["ev"] == "state" && v["state"] == state)
            .await
    }

    /// The next message the client's handlers got (skipping other events).
    pub async fn next_message(&mut self, timeout: Duration) -> Value {
        self.driver
            .wait_for(timeout, |v| v["ev"] == "message")
            .await
    }

    /// `subscribe(room)` or `unsubscribe(room)`; the driver's answer
    /// (`subscribed`/`unsubscribed`, or `rejected` with the code).
    pub async fn room(&mut self, cmd: &str, room: &str) -> Value {
        let tag = self.driver.tag();
        self.driver
            .send(&serde_json::json!({ "cmd": cmd, "room": room, "tag": tag }));
        self.driver.reply(&tag, WAIT_TIMEOUT).await
    }

    /// The client's state and `lastId` now.
    pub async fn state_now(&mut self) -> Value {
        let tag = self.driver.tag();
        self.driver
            .send(&serde_json::json!({ "cmd": "state", "tag": tag }));
        self.driver.reply(&tag, FRAME_TIMEOUT).await
    }
}
