//! A test driver in a `node` process of its own: commands go to its stdin
//! as JSON lines, and its events come back from its stdout, one JSON object
//! a line. The real socket.io-client ([`SioClient`]) and the JS client
//! (tests/js_client.rs) are driven this way.

use super::*;

use std::collections::VecDeque;
use std::io::Write;
use std::process::{ChildStdin, ExitStatus};

use tokio::sync::mpsc;

/// Events read ahead and not yet taken, at most (the reader blocks past it).
const NODE_CHANNEL: usize = 10_000;
/// Events [`NodeDriver::wait_for`] skips at most before it gives up.
const NODE_MAX_SKIPPED: usize = 10_000;
/// The last events kept for failure messages.
const NODE_SEEN_KEPT: usize = 200;
/// Driver stderr lines kept for failure messages.
const NODE_STDERR_KEPT: usize = 500;

/// One driver process, killed on drop.
pub struct NodeDriver {
    script: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Events read ahead (while waiting for a reply) and not yet taken by
    /// [`NodeDriver::next_event`].
    pending: VecDeque<Value>,
    seen: VecDeque<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
    tags: u64,
}

impl Drop for NodeDriver {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NodeDriver {
    /// Starts `cmd` (a `node` command line: stdio is set here) and reads
    /// its stdout and stderr in threads of their own.
    pub fn start(mut cmd: Command, script: &str) -> NodeDriver {
        cmd.env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `node {script}`: {e}"));
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = child.stdout.take().expect("driver stdout");
        let stderr_pipe = child.stderr.take().expect("driver stderr");

        let (tx, events) = mpsc::channel(NODE_CHANNEL);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.trim().is_empty() {
                    continue;
                }
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "ev": "stdout", "line": line }));
                if tx.blocking_send(v).is_err() {
                    break;
                }
            }
        });
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let mut kept = kept.lock().unwrap();
                if kept.len() < NODE_STDERR_KEPT {
                    kept.push(String::from_utf8_lossy(&line).into_owned());
                }
            }
        });
        NodeDriver {
            script: script.to_string(),
            child: Some(child),
            stdin: Some(stdin),
            events,
            pending: VecDeque::new(),
            seen: VecDeque::new(),
            stderr,
            tags: 0,
        }
    }

    /// Sends one command (a JSON object).
    pub fn send(&mut self, cmd: &Value) {
        let line = serde_json::to_string(cmd).expect("serialize a driver command");
        self.send_raw(&line);
    }

    /// Sends one line as it is (for malformed commands).
    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the driver's stdin is closed");
        let res = stdin
            .write_all(line.as_bytes())
            .and_then(|_| stdin.write_all(b"\n"))
            .and_then(|_| stdin.flush());
        if let Err(e) = res {
            panic!(
                "cannot write to the driver {} ({e}); {}",
                self.script,
                self.describe()
            );
        }
    }

    /// The next event, at most `timeout` from now; `None` on timeout or when
    /// the driver is gone.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let v = match self.pending.pop_front() {
            Some(v) => v,
            None => tokio::time::timeout(timeout, self.events.recv())
                .await
                .ok()??,
        };
        self.note(&v);
        Some(v)
    }

    /// The first event that satisfies `pred`, skipping (and dropping) the
    /// others; panics with what it saw when none comes within `timeout`.
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        for _ in 0..NODE_MAX_SKIPPED {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!(
                    "no matching driver event within {timeout:?}{}; {}",
                    if self.exited() {
                        " (the driver exited)"
                    } else {
                        ""
                    },
                    self.describe()
                ),
            }
        }
        panic!(
            "no matching driver event in {NODE_MAX_SKIPPED} events; {}",
            self.describe()
        )
    }

    /// Waits for the event named `ev` (`"connect"`, `"disconnect"`, …).
    pub async fn wait_ev(&mut self, timeout: Duration, ev: &str) -> Value {
        self.wait_for(timeout, |v| v["ev"] == ev).await
    }

    /// Closes the driver's stdin (it then exits by itself) and waits for it
    /// to exit, at most `timeout`; `None` if it did not.
    pub fn close_stdin_and_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until_sync(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// The events taken so far (the last [`NODE_SEEN_KEPT`]).
    pub fn seen(&self) -> Vec<Value> {
        self.seen.iter().cloned().collect()
    }

    /// What the driver wrote to stderr (the first [`NODE_STDERR_KEPT`] lines).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn tag(&mut self) -> String {
        self.tags += 1;
        format!("t{}", self.tags)
    }

    /// The event that carries `tag` (a reply to one command), keeping the
    /// others in `pending`, in order.
    pub async fn reply(&mut self, tag: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        for _ in 0..NODE_MAX_SKIPPED {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.events.recv())
                .await
                .ok()
                .flatten();
            match next {
                Some(v) if v["tag"] == tag => {
                    self.note(&v);
                    return v;
                }
                Some(v) => self.pending.push_back(v),
                None => panic!(
                    "no reply to command {tag} within {timeout:?}{}; pending: {:?}; {}",
                    if self.exited() {
                        " (the driver exited)"
                    } else {
                        ""
                    },
                    self.pending,
                    self.describe()
                ),
            }
        }
        panic!(
            "no reply to command {tag} in {NODE_MAX_SKIPPED} events; {}",
            self.describe()
        )
    }

    fn note(&mut self, v: &Value) {
        if self.seen.len() == NODE_SEEN_KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back(v.clone());
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub fn describe(&self) -> String {
        let seen: Vec<String> = self.seen.iter().map(|v| v.to_string()).collect();
        format!(
            "events seen (last {}):\n  {}\ndriver stderr:\n{}",
            NODE_SEEN_KEPT,
            if seen.is_empty() {
                "(none)".to_string()
            } else {
                seen.join("\n  ")
            },
            self.stderr_text()
        )
    }
}
