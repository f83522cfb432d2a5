//! The README's publishing recipes, run exactly as printed (SPEC §3, §4).
//!
//! Every runnable block of README.md is marked by an HTML comment line
//! `<!-- recipe: NAME -->` right before its fence (invisible on GitHub). This
//! test extracts the marked blocks, fails loudly when one is missing, and runs
//! the shell (redis-cli MULTI/EXEC), Lua, Python and Node recipes against a
//! real redis-server and the real gateway: a WebSocket client of user 42 must
//! receive the message live, and `notifications:42` must hold it, trimmed and
//! with a TTL. The recipes read `REDIS_URL` (default in the README), so the
//! test only sets environment variables and never edits the text. The Go
//! recipe cannot run here (no Go module proxy) and is only checked to be a
//! complete file; the browser snippet's reconnect policy is checked in Node
//! with a fake WebSocket (tests/recipes/browser_check.js). Every test name
//! starts with `readme_`, so `scripts/test.sh readme` runs exactly these.
//!
//! Python needs redis-py and Node needs node-redis, installed into a
//! directory of their own, never globally, by tests/recipes/install.sh (see
//! [`recipe_deps`]).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Every marker the README may carry; each must mark exactly one block.
const RECIPES: &[&str] = &[
    "shell-helpers",
    "redis-cli",
    "lua-script",
    "lua",
    "python",
    "node",
    "go",
    "browser",
    "socketio",
    "sse",
    "client",
];

/// How long one recipe may run. They take well under a second; the bound
/// only turns a hang (a client that is never closed) into a failure.
const RECIPE_TIMEOUT: Duration = Duration::from_secs(60);

/// The history size and TTL the recipes use (the gateway's defaults).
const HISTORY_SIZE: usize = 100;
const HISTORY_TTL_SECS: i64 = 604_800;

/// The body of the block marked `<!-- recipe: NAME -->` (one of [`RECIPES`]).
fn recipe(name: &str) -> String {
    assert!(RECIPES.contains(&name), "unknown recipe name {name:?}");
    readme_recipe(name)
}

#[test]
fn readme_every_recipe_is_marked_once_and_every_marker_is_known() {
    for name in RECIPES {
        recipe(name);
    }
    for (i, line) in README_TEXT.lines().enumerate() {
        if let Some(rest) = line.trim().strip_prefix("<!-- recipe:") {
            let name = rest.trim_end_matches("-->").trim();
            assert!(
                RECIPES.contains(&name),
                "README.md line {}: unknown recipe marker {name:?} (known: {RECIPES:?}); \
                 add it to RECIPES in tests/readme.rs and run it",
                i + 1
            );
        }
    }
}

#[test]
fn readme_go_recipe_is_a_complete_program() {
    // Go cannot be fetched here, so the Go recipe is not run; it must at
    // least be a whole file a user can `go run`.
    let go = recipe("go");
    assert!(
        go.starts_with("package main\n"),
        "the Go recipe must be a complete file starting with `package main`"
    );
    for needed in [
        "import (",
        "\"context\"",
        "\"encoding/json\"",
        "\"os\"",
        "\"time\"",
        "\"github.com/oklog/ulid/v2\"",
        "\"github.com/redis/go-redis/v9\"",
        "func main() {",
        "os.Getenv(\"REDIS_URL\")",
        "ulid.Make()",
        "UnixMilli()",
    ] {
        assert!(go.contains(needed), "the Go recipe lacks {needed:?}");
    }
}

/// The Socket.IO snippet of "Migrating from Socket.IO", in Node with the
/// real socket.io-client (tests/recipes/socketio_check.mjs): it connects,
/// its `subscribe` is acked, and its `budget:threshold_exceeded` listener
/// gets the message's data and id, for a room message and a user message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_socketio_snippet_as_printed() {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;
    let dir = TempDir::new();
    let modules = socketio_deps().join("node_modules");
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules"))
        .expect("link node_modules");
    let snippet = dir.write(
        "snippet.mjs",
        &pointed_at(&recipe("socketio"), &gw.addr.to_string()),
    );
    let check =
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("tests/recipes/socketio_check.mjs"))
            .expect("read socketio_check.mjs");
    let check = dir.write("check.mjs", &check);
    let token = mint_claims(&serde_json::json!({
        "sub": "42",
        "channels": ["household-*"],
        "exp": now_secs() + 600,
    }));
    let mut node = LineReader::spawn(
        Command::new("node")
            .arg(&check)
            .arg(&snippet)
            .env("TOKEN", &token),
    );

    let ack = node.wait_line(|l| l.contains("ok: true"));
    assert!(
        ack.is_some(),
        "the snippet's subscribe was not acked: {}",
        node.output()
    );
    redis.wait_numsub("ws:room:household-7", 1).await;
    for (channel, n) in [("ws:room:household-7", 1), ("ws:user:42", 2)] {
        let id = ulid::Ulid::new().to_string();
        let message = serde_json::json!({"type": "BUDGET_ALERT", "id": id, "data": {"n": n}});
        redis.publish(channel, message.to_string()).await;
        let line = node.wait_line(|l| l.contains("budget:threshold_exceeded"));
        let line =
            line.unwrap_or_else(|| panic!("no budget event for {channel}: {}", node.output()));
        let call: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(call["args"], serde_json::json!([{"n": n}, id]), "{line}");
    }
}

#[test]
fn readme_browser_snippet_reconnect_policy() {
    let dir = TempDir::new();
    let snippet = dir.write("browser.js", &recipe("browser"));
    let check = Path::new(MANIFEST_DIR).join("tests/recipes/browser_check.js");
    let mut cmd = Command::new("node");
    cmd.arg(&check).arg(&snippet);
    let run = run_bounded(cmd, RECIPE_TIMEOUT);
    run.assert_success("the browser snippet's reconnect check (tests/recipes/browser_check.js)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_redis_cli_recipe_as_printed() {
    check_recipe("redis-cli", |dir| {
        let script = format!("{}\n{}", recipe("shell-helpers"), recipe("redis-cli"));
        bash(dir, &script)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_lua_recipe_as_printed() {
    check_recipe("lua", |dir| {
        std::fs::write(dir.join("publish.lua"), recipe("lua-script")).expect("write publish.lua");
        let script = format!("{}\n{}", recipe("shell-helpers"), recipe("lua"));
        bash(dir, &script)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_python_recipe_as_printed() {
    let python = recipe_deps().join("venv/bin/python");
    check_recipe("python", move |dir| {
        let file = dir.join("publish.py");
        std::fs::write(&file, recipe("python")).expect("write publish.py");
        let mut cmd = Command::new(&python);
        cmd.arg(&file);
        cmd
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_node_recipe_as_printed() {
    let modules = recipe_deps().join("node/node_modules");
    check_recipe("node", move |dir| {
        let file = dir.join("publish.js");
        std::fs::write(&file, recipe("node")).expect("write publish.js");
        let mut cmd = Command::new("node");
        // A CommonJS require() finds packages in NODE_PATH, so the script
        // runs from a directory of its own, as a user's would.
        cmd.arg(&file).env("NODE_PATH", &modules);
        cmd
    })
    .await;
}

/// A bash running `script` as a file (strict mode, so that a failing line
/// fails the recipe instead of going unnoticed).
fn bash(dir: &Path, script: &str) -> Command {
    let file = dir.join("recipe.sh");
    std::fs::write(&file, script).expect("write recipe.sh");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail"]).arg(&file);
    cmd
}

/// Runs one recipe against a real Redis and gateway and checks what it did.
async fn check_recipe(name: &str, build: impl FnOnce(&Path) -> Command + Send + 'static) {
    let redis = Redis::start();
    let gw = gateway().redis(&redis).start().await;

    // A full history without a TTL, so that the recipe's LTRIM and EXPIRE
    // are visible: the oldest entry must go, a TTL must appear.
    let key = "notifications:42";
    let old: Vec<String> = (0..HISTORY_SIZE)
        .map(|i| format!(r#"{{"type":"OLD","id":"old-{i}"}}"#))
        .collect();
    let mut conn = redis.conn().await;
    let mut rpush: Vec<&[u8]> = vec![b"RPUSH", key.as_bytes()];
    rpush.extend(old.iter().map(|s| s.as_bytes()));
    assert_eq!(conn.command(&rpush).await.int(), HISTORY_SIZE as i64);

    let mut client = gw.user("42", &[]).await;
    redis.wait_numsub("ws:user:42", 1).await;

    let dir = TempDir::new();
    let path = dir.path().to_path_buf();
    let url = redis.url();
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = build(&path);
        cmd.current_dir(&path).env("REDIS_URL", url);
        run_bounded(cmd, RECIPE_TIMEOUT)
    })
    .await
    .expect("recipe runner thread");
    run.assert_success(&format!("the README's {name} recipe"));

    // Live delivery: the published bytes, a fresh ULID id, a current ts.
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let live = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_frame(left).await {
            Some(Frame::Text(t)) => break t,
            Some(Frame::Ping) => continue,
            other => panic!(
                "{name} recipe exited 0 but user 42 received no message within {WAIT_TIMEOUT:?} \
             (got {other:?}).\n{}",
                run.output()
            ),
        }
    };
    let msg: Value = serde_json::from_str(&live)
        .unwrap_or_else(|e| panic!("{name} recipe: live frame is not JSON ({e}): {live:?}"));
    assert_eq!(msg["type"], "BUDGET_ALERT", "{name} recipe: type in {msg}");
    assert_eq!(
        msg["data"]["category"], "dining",
        "{name} recipe: data in {msg}"
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let id = msg["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} recipe: no string id in {msg}"));
    let id_ms = ulid_time_ms(id).unwrap_or_else(|e| panic!("{name} recipe: id {id:?}: {e}"));
    assert!(
        (now_ms - id_ms).abs() < 60_000,
        "{name} recipe: the id's ULID time {id_ms} is not within a minute of now ({now_ms}): \
         a fixed id was copied?"
    );
    let ts = msg["ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} recipe: no integer ts in {msg}"));
    assert!(
        (now_ms - ts).abs() < 60_000,
        "{name} recipe: ts {ts} is not within a minute of now ({now_ms})"
    );

    // History: trimmed to HISTORY_SIZE, the oldest entry gone, the new
    // message last, byte for byte, and nothing empty or invalid.
    let entries: Vec<String> = conn
        .command(&[b"LRANGE", key.as_bytes(), b"0", b"-1"])
        .await
        .array()
        .iter()
        .map(|r| r.string().expect("history entry"))
        .collect();
    for (i, e) in entries.iter().enumerate() {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|err| {
            panic!("{name} recipe: history entry #{i} is not JSON ({err}): {e:?}")
        });
        assert!(
            v["type"].is_string(),
            "{name} recipe: history entry #{i} has no string type: {e:?}"
        );
    }
    let new: Vec<&String> = entries.iter().filter(|e| !old.contains(e)).collect();
    assert_eq!(
        new,
        vec![&live],
        "{name} recipe: the history should hold exactly the delivered message besides the old \
         entries; LRANGE {key} 0 -1 = {entries:?}"
    );
    assert_eq!(
        entries.len(),
        HISTORY_SIZE,
        "{name} recipe: LTRIM should keep the {HISTORY_SIZE} newest entries"
    );
    assert_eq!(
        entries.last(),
        Some(&live),
        "{name} recipe: the new message should be the newest entry"
    );
    assert_eq!(
        entries.first(),
        old.get(1),
        "{name} recipe: the oldest entry should have been trimmed"
    );
    let ttl = conn.command(&[b"TTL", key.as_bytes()]).await.int();
    assert!(
        ttl > HISTORY_TTL_SECS - 60 && ttl <= HISTORY_TTL_SECS,
        "{name} recipe: TTL {key} = {ttl}, expected about {HISTORY_TTL_SECS}"
    );

    // Published once: nothing else arrives.
    client.ping_pong(7).await;
}

/// The millisecond time of a canonical ULID (26 upper-case Crockford base32
/// characters, 48-bit time first).
fn ulid_time_ms(id: &str) -> Result<i64, String> {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if id.len() != 26 {
        return Err(format!("a ULID has 26 characters, this has {}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !ALPHABET.contains(*c)) {
        return Err(format!(
            "{c:?} is not an upper-case Crockford base32 character"
        ));
    }
    if id.as_bytes()[0] > b'7' {
        return Err("the first character of a ULID is at most 7 (128 bits)".into());
    }
    let parsed = ulid::Ulid::from_string(id).map_err(|e| format!("not a ULID: {e}"))?;
    Ok(parsed.timestamp_ms() as i64)
}

// ---------------------------------------------------------------------------
// The Python and Node packages the recipes import
// ---------------------------------------------------------------------------

/// The directory holding `venv/` (redis-py) and `node/node_modules`
/// (node-redis), installed by tests/recipes/install.sh.
///
/// scripts/test.sh runs that script before `cargo test` and exports
/// `WS_GATEWAY_RECIPE_DEPS`, so the (networked) install shows in its own step
/// and CI's test time is the recipes' alone. Without the variable (a plain
/// `cargo test`), the test runs the same script itself, into
/// `<target dir>/readme-recipes`: it is idempotent and installs only what is
/// missing (about 10 s the first time, nothing after), which is simpler and
/// more robust than failing and asking for a manual step, and keeps one
/// install procedure for both paths.
fn recipe_deps() -> &'static Path {
    static DEPS: OnceLock<PathBuf> = OnceLock::new();
    DEPS.get_or_init(|| {
        let script = Path::new(MANIFEST_DIR).join("tests/recipes/install.sh");
        let deps = Deps {
            env: "WS_GATEWAY_RECIPE_DEPS",
            subdir: "readme-recipes",
            script: &script,
            needs: "python3 with venv, npm, and access to PyPI and npm; scripts/test.sh \
                    installs the system packages",
        };
        deps.dir(|dir| {
            dir.join("venv/bin/python").is_file()
                && dir.join("node/node_modules/redis/package.json").is_file()
        })
    })
}

/// A long-running recipe process whose stdout the test reads line by line
/// (bounded waits); killed, with its process group, on drop.
struct LineReader {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// How long [`LineReader::wait_line`] waits.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

impl LineReader {
    fn spawn(cmd: &mut Command) -> LineReader {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the recipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::<std::sync::Mutex<String>>::default();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            *kept.lock().unwrap() = text;
        });
        LineReader {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next line that satisfies `pred`, within [`LINE_TIMEOUT`].
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// What it printed so far, for failure messages.
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
