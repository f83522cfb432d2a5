//! The gateway binary: starting, stopping, its logs, its CLI.

use super::*;

/// How to start a gateway.
pub struct GatewayBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    secret: Option<String>,
    wait_ready: bool,
    in_process: bool,
    /// The open-files limit to start the binary under, if not inherited.
    nofile: Option<u64>,
}

/// A builder with the suite defaults: secret [`SECRET`], no per-IP connect
/// rate limit, embedded broker, `--listen 127.0.0.1:0`.
pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        env: vec![("GATEWAY_CONNECTION_CONNECT_RATE_PER_IP".into(), "0".into())],
        args: Vec::new(),
        secret: Some(SECRET.to_string()),
        wait_ready: true,
        in_process: false,
        nofile: None,
    }
}

impl GatewayBuilder {
    pub fn redis(self, redis: &Redis) -> Self {
        self.env("GATEWAY_REDIS_URL", &redis.url())
    }

    /// Sets (or overrides) an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(ek, _)| ek != k);
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Listens on 127.0.0.1:`port`: a test that restarts "the same
    /// instance" on the port its clients reconnect to.
    pub fn listen_port(self, port: u16) -> Self {
        self.arg("--listen").arg(&format!("127.0.0.1:{port}"))
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// No key material at all: dev mode.
    pub fn no_secret(mut self) -> Self {
        self.secret = None;
        self
    }

    /// Starts the binary under this open-files limit (soft and hard).
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Do not wait for `/readyz` to return 200 after start.
    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Runs the gateway inside the test's own runtime (`server::run_until`
    /// on port 0), for tests that need no process boundary: no CLI flags, no
    /// logs to read, no signals; its environment is the builder's `env`.
    pub fn in_process(mut self) -> Self {
        self.in_process = true;
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = TempDir::new();
        if self.in_process {
            return self.start_in_process(dir).await;
        }
        let mut cmd = match self.nofile {
            None => gateway_command(dir.path()),
            Some(limit) => gateway_command_with_nofile(dir.path(), limit),
        };
        cmd.env("RUST_LOG", "info");
        if let Some(s) = &self.secret {
            cmd.env("GATEWAY_AUTH_SECRET", s);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let has_listen = self.args.iter().any(|a| a == "--listen");
        cmd.arg("serve");
        if !has_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ws-gateway");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        for (pipe, prefix) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                "",
            ),
            (Box::new(child.stderr.take().unwrap()), "[stderr] "),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let reader = BufReader::new(pipe);
                for line in reader.split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&String::from_utf8_lossy(&line));
                    logs.lock().unwrap().push(format!("{prefix}{line}"));
                }
            });
        }
        let mut gw = Gateway {
            child: Some(child),
            in_process: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            logs,
            _dir: dir,
        };

        // Wait for the "listening ... addr=127.0.0.1:PORT" line.
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(a) = gw.find_listen_addr() {
                break a;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                // Give the reader threads a moment to collect the output.
                wait_until_sync(Duration::from_millis(500), || false);
                panic!(
                    "ws-gateway exited early with {status}; output:\n{}",
                    gw.logs_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "ws-gateway did not log `listening ... addr=` within 20 s; output:\n{}",
                    gw.logs_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        gw.addr = addr;
        if self.wait_ready {
            gw.wait_ready().await;
        }
        gw
    }

    async fn start_in_process(self, dir: TempDir) -> Gateway {
        assert!(
            self.args.is_empty(),
            "an in-process gateway takes no CLI flags: {:?}",
            self.args
        );
        // Dev mode would keep its secret in this process's home directory.
        let secret = self.secret.expect("an in-process gateway needs a secret");
        let mut env: BTreeMap<String, String> = self.env.into_iter().collect();
        env.insert("GATEWAY_AUTH_SECRET".into(), secret);
        let overrides = ws_gateway::config::Overrides {
            env,
            flags: Vec::new(),
        };
        let file = dir.write("gateway.toml", "");
        let loaded = ws_gateway::config::load(Some(&file), &overrides).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ws_gateway::server::run_until(
            loaded,
            Some(listener),
            async {
                let _ = stopped.await;
            },
        ));
        let gw = Gateway {
            child: None,
            in_process: Some(InProcess { stop, task }),
            addr,
            logs: Arc::default(),
            _dir: dir,
        };
        if self.wait_ready {
            gw.wait_ready().await;
        }
        gw
    }
}

/// A gateway running in the test's runtime, and how to stop it.
struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Option<Child>,
    in_process: Option<InProcess>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(server) = self.in_process.take() {
            server.task.abort();
        }
    }
}

/// Extracts `127.0.0.1:PORT` from a log line with `addr=...` (text) or
/// `"addr":"..."` (JSON).
pub fn parse_addr_field(line: &str) -> Option<SocketAddr> {
    let (idx, field) = ["addr=", "\"addr\":"]
        .iter()
        .find_map(|field| Some((line.find(field)?, field.len())))?;
    let rest = &line[idx + field..];
    let value: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
        .collect();
    value.parse().ok()
}

impl Gateway {
    fn find_listen_addr(&self) -> Option<SocketAddr> {
        self.logged_addr("listening")
    }

    /// The `addr=` of the first log line containing `message`.
    pub fn logged_addr(&self, message: &str) -> Option<SocketAddr> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|l| l.contains(message))
            .find_map(|l| parse_addr_field(l))
    }

    async fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(20), || async {
            matches!(self.try_get("/readyz").await, Some(r) if r.status == 200)
        })
        .await;
        assert!(
            ok,
            "GET /readyz did not return 200 within 20 s; output:\n{}",
            self.logs_text()
        );
    }

    /// Stops an in-process gateway as a signal would (it drains), and
    /// returns what `run_until` returned, bounded by `timeout`.
    pub async fn stop_in_process(&mut self, timeout: Duration) -> Option<Result<(), String>> {
        let server = self.in_process.take().expect("an in-process gateway");
        let _ = server.stop.send(());
        match tokio::time::timeout(timeout, server.task).await {
            Ok(Ok(ended)) => Some(ended),
            Ok(Err(join)) => Some(Err(format!("the server task failed: {join}"))),
            Err(_) => None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().expect("running").try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line the process printed so far (stdout, then stderr lines
    /// prefixed with `[stderr] `, interleaved in arrival order).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn logs_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Opens a WebSocket; returns the raw result (to inspect refusals).
    pub async fn connect_raw(&self, opts: &ConnectOpts) -> Result<Client, tungstenite::Error> {
        connect_ws(self.addr, opts).await
    }

    /// Opens a WebSocket with `?token=` and asserts the handshake succeeded
    /// (does not read the CONNECTED frame).
    pub async fn connect_token(&self, token: &str) -> Client {
        self.connect_raw(&ConnectOpts::token(token))
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake failed: {}", describe_ws_error(&e)))
    }

    /// Opens a WebSocket with `?token=`, reads the CONNECTED frame and
    /// checks its user id. Returns the client and the CONNECTED `data`.
    pub async fn connect_user(&self, token: &str, expected_user: &str) -> (Client, Value) {
        let mut c = self.connect_token(token).await;
        let data = c.expect_connected(expected_user).await;
        (c, data)
    }

    /// Shorthand: connect a user with a fresh one-hour token and the given roles.
    pub async fn user(&self, user: &str, roles: &[&str]) -> Client {
        self.connect_user(&token(user, roles), user).await.0
    }

    /// Performs an HTTP request against this gateway.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http_request(self.addr, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
    }

    pub async fn try_get(&self, path: &str) -> Option<HttpResponse> {
        http_request(self.addr, "GET", path, &[], None).await.ok()
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.http("GET", path, &[], None).await
    }

    pub async fn get_bearer(&self, path: &str, bearer: &str) -> HttpResponse {
        let auth = format!("Bearer {bearer}");
        self.http("GET", path, &[("Authorization", &auth)], None)
            .await
    }

    pub async fn post_bearer(&self, path: &str, bearer: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {bearer}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.http("POST", path, &headers, Some(body)).await
    }

    /// `GET /ws/health` as JSON.
    pub async fn health(&self) -> Value {
        let r = self.get("/ws/health").await;
        r.json()
    }

    /// `GET /ws/stats` with an admin token; asserts 200.
    pub async fn stats(&self) -> Value {
        let r = self.get_bearer("/ws/stats", &admin_token()).await;
        assert_eq!(r.status, 200, "GET /ws/stats as admin: {r:?}");
        r.json()
    }

    /// Waits until `/ws/health` reports exactly `n` connections.
    pub async fn wait_connections(&self, n: u64) {
        let ok = wait_until(WAIT_TIMEOUT, || async {
            self.health().await["connections"].as_u64() == Some(n)
        })
        .await;
        assert!(
            ok,
            "expected /ws/health connections == {n} within {WAIT_TIMEOUT:?}, last: {}",
            self.health().await
        );
    }
}

/// Opens a WebSocket to the gateway at `addr` (`/ws` with the options'
/// token, query and headers); the handshake's error when it is refused.
pub async fn connect_ws(
    addr: SocketAddr,
    opts: &ConnectOpts,
) -> Result<Client, tungstenite::Error> {
    let mut params: Vec<String> = Vec::new();
    if let Some(t) = &opts.token {
        params.push(format!("token={t}"));
    }
    params.extend(opts.query.iter().map(|(k, v)| format!("{k}={v}")));
    let query = params.join("&");
    let mut req = ws_url_at(addr, &query).into_client_request()?;
    for (k, v) in &opts.headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    let (ws, resp) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake did not finish within 5 s")?;
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    Ok(Client {
        ws,
        response_headers: headers,
    })
}

/// `ws://ADDR/ws`, with `query` when it is not empty.
pub fn ws_url_at(addr: SocketAddr, query: &str) -> String {
    if query.is_empty() {
        format!("ws://{addr}/ws")
    } else {
        format!("ws://{addr}/ws?{query}")
    }
}
