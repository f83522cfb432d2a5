//! The real `socket.io-client` (tests/socketio/package.json pins it), driven
//! through `node tests/socketio/driver.mjs`: commands go to its stdin and
//! its events come back from its stdout, one JSON object a line (the
//! driver's header lists both, and records how the client recovers).
//!
//! The package is installed by tests/socketio/install.sh into the directory
//! `WS_GATEWAY_SOCKETIO_DEPS` names (scripts/test.sh exports it), or, without
//! the variable, into `<target dir>/socketio-client` by the harness itself
//! ([`socketio_deps`]). Set `WS_GATEWAY_SIO_DEBUG=1` to get the client's own
//! `debug` output in the driver's stderr (shown when a wait fails).

use super::*;

/// The driver the tests spawn.
pub const SIO_DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/socketio/driver.mjs");
const SIO_INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/socketio/install.sh");

/// How long the driver may take to start and load the client.
const SIO_START_TIMEOUT: Duration = Duration::from_secs(15);
/// The ack timeout the driver is given (`socket.timeout(ms)`), in ms.
pub const SIO_ACK_TIMEOUT_MS: u64 = 5000;

/// The options of one `connect`: what `io(url, opts)` takes, as JSON.
///
/// Defaults: `transports: ["websocket"]` (the gateway serves no polling,
/// SPEC §11), `path: "/socket.io/"`, reconnection on (as in the client) but
/// fast, `reconnectionDelay: 100`, `reconnectionDelayMax: 500`. The driver
/// adds `forceNew`, `reconnectionAttempts: 20` and `timeout: 10000` unless
/// set here.
#[derive(Clone, Debug)]
pub struct SioConnect {
    fields: serde_json::Map<String, Value>,
}

impl SioConnect {
    /// Options for `url` (`http://127.0.0.1:PORT`).
    pub fn new(url: &str) -> SioConnect {
        let mut fields = serde_json::Map::new();
        fields.insert("url".into(), Value::from(url));
        fields.insert("path".into(), Value::from("/socket.io/"));
        fields.insert("transports".into(), serde_json::json!(["websocket"]));
        fields.insert("reconnection".into(), Value::Bool(true));
        fields.insert("reconnectionDelay".into(), Value::from(100));
        fields.insert("reconnectionDelayMax".into(), Value::from(500));
        SioConnect { fields }
    }

    /// Options for the gateway at `addr`.
    pub fn to(addr: SocketAddr) -> SioConnect {
        SioConnect::new(&format!("http://{addr}"))
    }

    /// Sets any `io()` option (or overrides one of the defaults).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.to_string(), value);
        self
    }

    /// `auth: {token}`, as a frontend passes it.
    pub fn token(self, token: &str) -> Self {
        self.set("auth", serde_json::json!({ "token": token }))
    }

    pub fn auth(self, auth: Value) -> Self {
        self.set("auth", auth)
    }

    pub fn path(self, path: &str) -> Self {
        self.set("path", Value::from(path))
    }

    pub fn transports(self, transports: &[&str]) -> Self {
        self.set("transports", serde_json::json!(transports))
    }

    /// Adds a query parameter (sent on the upgrade request).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        let query = self
            .fields
            .entry("query")
            .or_insert_with(|| Value::Object(Default::default()));
        query
            .as_object_mut()
            .expect("query is an object")
            .insert(key.to_string(), Value::from(value));
        self
    }

    pub fn reconnection(self, on: bool) -> Self {
        self.set("reconnection", Value::Bool(on))
    }

    /// `reconnectionDelay` and `reconnectionDelayMax`, in ms.
    pub fn reconnection_delay(self, min_ms: u64, max_ms: u64) -> Self {
        self.set("reconnectionDelay", Value::from(min_ms))
            .set("reconnectionDelayMax", Value::from(max_ms))
    }

    /// Also report every Engine.IO packet, both ways, as
    /// `{"ev":"packet","dir":"in"|"out","type":"open"|"message"|"ping"|…,"data":…}`
    /// (a Socket.IO packet is `type:"message"`, `data:"40{…}"` without the
    /// Engine.IO `4`).
    pub fn raw(self) -> Self {
        self.set("raw", Value::Bool(true))
    }

    /// The driver command.
    pub fn command(&self) -> Value {
        let mut cmd = self.fields.clone();
        cmd.insert("cmd".into(), Value::from("connect"));
        Value::Object(cmd)
    }
}

/// One `socket.io-client` in a `node` process of its own, killed on drop.
/// The generic driver calls (`next_event`, `wait_for`, `wait_ev`, …) are
/// [`NodeDriver`]'s, through `Deref`.
pub struct SioClient {
    driver: NodeDriver,
    /// The client's version, as its package.json says.
    pub version: String,
}

impl std::ops::Deref for SioClient {
    type Target = NodeDriver;
    fn deref(&self) -> &NodeDriver {
        &self.driver
    }
}

impl std::ops::DerefMut for SioClient {
    fn deref_mut(&mut self) -> &mut NodeDriver {
        &mut self.driver
    }
}

impl SioClient {
    /// Starts the driver and waits (bounded) for it to have loaded the client.
    pub async fn start() -> SioClient {
        let modules = socketio_deps().join("node_modules");
        let mut cmd = Command::new("node");
        cmd.arg(SIO_DRIVER)
            .env("NODE_PATH", &modules)
            .env_remove("DEBUG");
        if std::env::var_os("WS_GATEWAY_SIO_DEBUG").is_some() {
            cmd.env("DEBUG", "socket.io-client*,engine.io-client*");
        }
        let mut driver = NodeDriver::start(cmd, SIO_DRIVER);
        let ready = driver
            .wait_for(SIO_START_TIMEOUT, |v| v["ev"] == "ready")
            .await;
        let version = ready["version"].as_str().unwrap_or_default().to_string();
        SioClient { driver, version }
    }

    /// `io(url, opts)`; returns at once (see [`SioClient::expect_connect`]).
    pub fn connect(&mut self, opts: &SioConnect) {
        self.driver.send(&opts.command());
    }

    /// Waits for `connect` and returns it (`{"ev":"connect","id","recovered","pid"}`);
    /// panics on a `connect_error` or on timeout.
    pub async fn expect_connect(&mut self, timeout: Duration) -> Value {
        let v = self
            .wait_for(timeout, |v| {
                v["ev"] == "connect" || v["ev"] == "connect_error"
            })
            .await;
        if v["ev"] != "connect" {
            panic!("expected connect, got {v}; {}", self.driver.describe());
        }
        v
    }

    /// Emits `event` with `args`. With `ack`, waits (bounded) for the
    /// server's acknowledgement and returns its arguments; `None` when the
    /// client gave up (no ack within [`SIO_ACK_TIMEOUT_MS`], or the socket
    /// disconnected first). Without `ack`, returns `None` once the driver
    /// has handed the packet to the client. Events that arrive meanwhile
    /// stay for [`SioClient::next_event`].
    pub async fn emit(&mut self, event: &str, args: Vec<Value>, ack: bool) -> Option<Vec<Value>> {
        let tag = self.driver.tag();
        self.driver.send(&serde_json::json!({
            "cmd": "emit",
            "event": event,
            "args": args,
            "ack": ack,
            "tag": tag,
            "timeout": SIO_ACK_TIMEOUT_MS,
        }));
        let bound = Duration::from_millis(SIO_ACK_TIMEOUT_MS) + FRAME_TIMEOUT;
        let reply = self.driver.reply(&tag, bound).await;
        match reply["ev"].as_str() {
            Some("ack") => Some(reply["args"].as_array().cloned().unwrap_or_default()),
            Some("ack_timeout") | Some("emitted") => None,
            _ => panic!("emit {event:?} failed: {reply}; {}", self.driver.describe()),
        }
    }

    /// `subscribe` `{"room"}` with an ack; returns the ack's first argument
    /// (`{"ok":true}` or `{"error":…}`), panics when there is none.
    pub async fn subscribe(&mut self, room: &str) -> Value {
        let args = self
            .emit("subscribe", vec![serde_json::json!({ "room": room })], true)
            .await
            .unwrap_or_else(|| panic!("subscribe {room:?}: no ack; {}", self.driver.describe()));
        args.into_iter().next().unwrap_or(Value::Null)
    }

    /// The driver's view of the socket: `{"ev":"state","connected","active",
    /// "id","recovered","pid","offset"}` (`offset` is the client's
    /// `_lastOffset`, what its next CONNECT would carry).
    pub async fn state(&mut self) -> Value {
        let tag = self.driver.tag();
        self.driver
            .send(&serde_json::json!({ "cmd": "state", "tag": tag }));
        let reply = self.driver.reply(&tag, FRAME_TIMEOUT).await;
        if reply["ev"] != "state" {
            panic!("state failed: {reply}; {}", self.driver.describe());
        }
        reply
    }

    /// `socket.disconnect()`: no reconnection follows.
    pub fn disconnect(&mut self) {
        self.driver
            .send(&serde_json::json!({ "cmd": "disconnect" }));
    }

    /// `socket.connect()` on the same socket (it keeps its pid and offset).
    pub fn connect_again(&mut self) {
        self.driver
            .send(&serde_json::json!({ "cmd": "connect_again" }));
    }

    /// Drops the WebSocket under the client without a close frame (a network
    /// drop): the client reconnects by itself, with recovery.
    pub fn close_transport(&mut self) {
        self.driver
            .send(&serde_json::json!({ "cmd": "close_transport" }));
    }

    /// Waits for the server event `name` (`{"ev":"event","name",…}`).
    pub async fn wait_event(&mut self, timeout: Duration, name: &str) -> Value {
        self.driver
            .wait_for(timeout, |v| v["ev"] == "event" && v["name"] == name)
            .await
    }
}

/// The directory whose `node_modules` holds socket.io-client, installed by
/// tests/socketio/install.sh.
///
/// scripts/test.sh runs that script before `cargo test` and exports
/// `WS_GATEWAY_SOCKETIO_DEPS`, so the (networked) install shows in its own
/// step. Without the variable (a plain `cargo test`) the harness runs the
/// same script itself, into `<target dir>/socketio-client`: it is idempotent
/// and installs only what is missing (a few seconds the first time), as
/// tests/readme.rs does for the recipes.
pub fn socketio_deps() -> &'static Path {
    static DEPS: OnceLock<PathBuf> = OnceLock::new();
    DEPS.get_or_init(|| {
        let deps = Deps {
            env: "WS_GATEWAY_SOCKETIO_DEPS",
            subdir: "socketio-client",
            script: Path::new(SIO_INSTALL),
            needs: "node, npm and the npm registry",
        };
        deps.dir(|dir| {
            dir.join("node_modules/socket.io-client/package.json")
                .is_file()
        })
    })
}

/// A Socket.IO connection spoken by hand: the open packet, CONNECT with the
/// `token`, the CONNECT reply; then it reads and answers only when the
/// test does.
pub async fn raw_socketio(addr: SocketAddr, token: &str) -> Client {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", addr);
    let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the upgrade within 5 s")
        .expect("the upgrade");
    let mut client = Client {
        ws,
        response_headers: Vec::new(),
    };
    let open = client.next_text().await;
    assert!(open.starts_with("0{"), "open packet: {open}");
    let connect = serde_json::json!({ "token": token });
    client.send_text(&format!("40{connect}")).await;
    let reply = client.next_text().await;
    assert!(reply.starts_with("40{"), "CONNECT reply: {reply}");
    client
}
