//! Configuration: `gateway.toml`, then `GATEWAY_<SECTION>_<KEY>` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Everything is merged as TOML values first and deserialized once, so a key
//! has exactly one type and one default (the `Default` impls below). Unknown
//! keys and bad values are errors that name the key (or the variable), so an
//! operator finds a typo at start-up rather than in production behaviour.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The whole configuration, one struct per section of `gateway.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub connection: ConnectionConfig,
    pub socketio: SocketIoConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub metrics_listen: String,
    pub allowed_origins: Vec<String>,
    pub max_message_bytes: usize,
    /// 0 = derived from the open-files limit (see [`ServerConfig::capacity`]).
    pub max_connections: usize,
    /// CIDRs whose `X-Forwarded-For` / `Forwarded` give the client IP.
    pub trusted_proxies: Vec<String>,
    /// On SIGTERM, how long the instance stays not ready before the drain:
    /// for load balancers that find out by health checks.
    pub shutdown_delay_secs: u64,
    pub shutdown_drain_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: String::new(),
            allowed_origins: Vec::new(),
            max_message_bytes: 65536,
            max_connections: 0,
            trusted_proxies: Vec::new(),
            shutdown_delay_secs: 0,
            shutdown_drain_secs: 10,
        }
    }
}

/// The listen address when nothing sets one (SPEC §2); dev mode narrows it
/// to loopback (SPEC §9).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEV_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub secret: String,
    pub secret_file: String,
    /// HMAC secrets still accepted during a rotation (verify only).
    pub previous_secrets: Vec<String>,
    pub public_key_file: String,
    pub jwks_file: String,
    pub algorithms: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub user_claim: String,
    pub roles_claim: String,
    pub channels_claim: String,
    pub admin_role: String,
    pub admin_api_key: String,
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            secret_file: String::new(),
            previous_secrets: Vec::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            algorithms: vec!["HS256".into()],
            issuer: String::new(),
            audience: String::new(),
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            channels_claim: "channels".into(),
            admin_role: "admin".into(),
            admin_api_key: String::new(),
            leeway_secs: 30,
        }
    }
}

impl AuthConfig {
    /// True when no key material is configured: the gateway then runs in dev
    /// mode with a generated secret (SPEC §9).
    pub fn has_no_keys(&self) -> bool {
        self.secret.is_empty()
            && self.secret_file.is_empty()
            && self.public_key_file.is_empty()
            && self.jwks_file.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub user_channel_prefix: String,
    pub broadcast_channel: String,
    pub role_channel_prefix: String,
    pub room_channel_prefix: String,
    pub history_key_prefix: String,
    pub history_size: usize,
    pub history_ttl_secs: u64,
    pub canary_interval_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            user_channel_prefix: "ws:user:".into(),
            broadcast_channel: "ws:broadcast".into(),
            role_channel_prefix: "ws:role:".into(),
            room_channel_prefix: "ws:room:".into(),
            history_key_prefix: "notifications:".into(),
            history_size: 100,
            history_ttl_secs: 604800,
            canary_interval_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    pub ping_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub send_queue: usize,
    /// ... or this many bytes queued, whichever comes first.
    pub send_queue_bytes: usize,
    pub max_connections_per_user: usize,
    /// Concurrent connections per client IP; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Rooms one connection may subscribe to.
    pub max_rooms: usize,
    pub connect_rate_per_ip: u32,
    pub client_messages_per_sec: u32,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            send_queue: 1024,
            send_queue_bytes: 524_288,
            max_connections_per_user: 16,
            max_connections_per_ip: 0,
            max_rooms: 64,
            connect_rate_per_ip: 20,
            client_messages_per_sec: 20,
        }
    }
}

/// Socket.IO clients (SPEC §11).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    pub enabled: bool,
    pub path: String,
    /// "data": a message's `data` field (else the whole message);
    /// "message": the whole message.
    pub payload: String,
    /// Message type → event name. `[socketio.events]` in the file and
    /// `GATEWAY_SOCKETIO_EVENTS="TYPE=event,…"` extend and override this.
    pub events: BTreeMap<String, String>,
}

/// Seed 000's event names, which the finance app's frontends listen for.
const SEED_EVENTS: &[(&str, &str)] = &[
    ("NEW_TRANSACTION", "transaction:created"),
    ("TRANSACTION_UPDATED", "transaction:updated"),
    ("TRANSACTION_DELETED", "transaction:deleted"),
    ("BUDGET_ALERT", "budget:threshold_exceeded"),
    ("BUDGET_UPDATED", "budget:updated"),
    ("GOAL_PROGRESS_UPDATE", "goal:progress_updated"),
    ("GOAL_ACHIEVED", "goal:milestone_reached"),
    ("BALANCE_UPDATE", "balance:updated"),
];

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/socket.io/".into(),
            payload: "data".into(),
            events: SEED_EVENTS
                .iter()
                .map(|(kind, event)| (kind.to_string(), event.to_string()))
                .collect(),
        }
    }
}

/// A configuration error; the message always names the key or variable.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Where configuration strings come from, besides the file. Kept apart from
/// the process environment so tests can feed a map.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `GATEWAY_*` variables, name → value.
    pub env: BTreeMap<String, String>,
    /// Command-line flags as `(section, key, value)`.
    pub flags: Vec<(&'static str, &'static str, String)>,
}

impl Overrides {
    /// Collects the `GATEWAY_*` variables of this process.
    pub fn from_process_env() -> Self {
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self {
            env,
            flags: Vec::new(),
        }
    }
}

const ENV_PREFIX: &str = "GATEWAY_";

/// Variables with the `GATEWAY_` prefix that are not config keys: flags that
/// clap reads from the environment.
const NON_CONFIG_ENV: &[&str] = &["GATEWAY_LOG_FORMAT", "GATEWAY_CONFIG"];

/// The loaded configuration plus facts about how it was loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// True when `server.listen` was set by the file, env or a flag.
    pub listen_was_set: bool,
}

/// Loads the configuration: `path`, else `./gateway.toml` if it exists, then
/// the overrides, then validation.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("gateway.toml")).filter(|p| p.exists()),
    };
    let text = match &file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| ConfigError(format!("config file {}: {e}", p.display())))?,
        None => String::new(),
    };
    let mut loaded = from_sources(&text, overrides)?;
    loaded.file = file;
    Ok(loaded)
}

/// Merges file text and overrides over the defaults, then validates.
pub fn from_sources(file_text: &str, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let defaults = defaults_table();
    let mut merged = defaults.clone();
    let mut listen_was_set = false;

    let file: Table = toml::from_str(file_text)
        .map_err(|e| ConfigError(format!("config file: {}", e.message())))?;
    for (section, value) in file {
        let Some(Value::Table(keys)) = defaults.get(&section) else {
            return err(format!("{section}: unknown section"));
        };
        let Value::Table(keys_in_file) = value else {
            return err(format!("{section}: expected a table ([{section}])"));
        };
        for (key, value) in keys_in_file {
            let name = format!("{section}.{key}");
            let Some(default) = keys.get(&key) else {
                return err(format!("{name}: unknown key"));
            };
            if !same_type(default, &value) {
                return err(format!("{name}: expected {}", type_name(default)));
            }
            listen_was_set |= name == "server.listen";
            set(&mut merged, &section, &key, value);
        }
    }

    for (var, raw) in &overrides.env {
        if NON_CONFIG_ENV.contains(&var.as_str()) {
            continue;
        }
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        // Only variables of a known section are ours: Kubernetes injects
        // `<SERVICE>_PORT`-style variables for a Service named "gateway".
        let Some(Value::Table(keys)) = defaults.get(section) else {
            continue;
        };
        let Some(default) = keys.get(key) else {
            return err(format!("{var}: unknown key {section}.{key}"));
        };
        let value =
            parse_env_value(default, raw).map_err(|e| ConfigError(format!("{var}: {e}")))?;
        listen_was_set |= section == "server" && key == "listen";
        set(&mut merged, section, key, value);
    }

    for (section, key, raw) in &overrides.flags {
        listen_was_set |= *section == "server" && *key == "listen";
        set(&mut merged, section, key, Value::String(raw.clone()));
    }

    let config: Config = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError(e.message().to_string()))?;
    validate(&config)?;
    Ok(Loaded {
        config,
        file: None,
        listen_was_set,
    })
}

fn defaults_table() -> Table {
    // Serializing a plain struct of strings, numbers and lists cannot fail.
    match toml::Table::try_from(Config::default()) {
        Ok(t) => t,
        Err(e) => unreachable!("default config serializes: {e}"),
    }
}

/// Sets `section.key`; a table (`[socketio.events]`) extends the one
/// there, entry by entry.
fn set(table: &mut Table, section: &str, key: &str, value: Value) {
    let Some(Value::Table(keys)) = table.get_mut(section) else {
        return;
    };
    match (keys.get_mut(key), value) {
        (Some(Value::Table(old)), Value::Table(new)) => old.extend(new),
        (_, value) => {
            keys.insert(key.to_string(), value);
        }
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(_), Value::Array(items)) => items.iter().all(Value::is_str),
        (Value::Table(_), Value::Table(entries)) => entries.values().all(Value::is_str),
        (Value::Integer(_), Value::Integer(n)) => *n >= 0,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a non-negative integer",
        Value::Array(_) => "a list of strings",
        Value::Boolean(_) => "true or false",
        Value::Table(_) => "a table of strings",
        _ => "a value",
    }
}

fn parse_env_value(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::Integer(_) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .map(Value::Integer)
            .ok_or_else(|| format!("expected a non-negative integer, got {raw:?}")),
        Value::Boolean(_) => raw
            .trim()
            .parse::<bool>()
            .map(Value::Boolean)
            .map_err(|_| format!("expected true or false, got {raw:?}")),
        Value::Array(_) => Ok(Value::Array(
            list_items(raw)
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        // "KEY=value,KEY=value"
        Value::Table(_) => list_items(raw)
            .map(|item| match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), Value::String(v.trim().to_string())))
                }
                _ => Err(format!("expected KEY=value pairs, got {item:?}")),
            })
            .collect::<Result<Table, String>>()
            .map(Value::Table),
        _ => Ok(Value::String(raw.to_string())),
    }
}

/// The items of a comma-separated list, trimmed, empty ones left out.
fn list_items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// URL schemes of `redis.url` (fred's): plain, TLS, cluster and sentinel.
const REDIS_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

/// Semantic checks that types alone cannot express.
fn validate(c: &Config) -> Result<(), ConfigError> {
    parse_addr("server.listen", &c.server.listen)?;
    if !c.server.metrics_listen.is_empty() {
        parse_addr("server.metrics_listen", &c.server.metrics_listen)?;
    }
    for origin in &c.server.allowed_origins {
        if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return err(format!(
                "server.allowed_origins: {origin:?} must be \"*\" or start with http:// or https://"
            ));
        }
    }
    for cidr in &c.server.trusted_proxies {
        if Cidr::parse(cidr).is_none() {
            return err(format!(
                "server.trusted_proxies: {cidr:?} is not an address block (e.g. \"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.7\")"
            ));
        }
    }
    positive(
        "server.max_message_bytes",
        c.server.max_message_bytes as u64,
    )?;
    if c.auth.algorithms.is_empty() {
        return err("auth.algorithms: at least one algorithm is required");
    }
    for alg in &c.auth.algorithms {
        if alg.eq_ignore_ascii_case("none") {
            return err("auth.algorithms: \"none\" is never accepted");
        }
        if alg.parse::<jsonwebtoken::Algorithm>().is_err() {
            return err(format!(
                "auth.algorithms: unknown algorithm {alg:?} (HS256/384/512, RS*, PS*, ES256/384, EdDSA)"
            ));
        }
    }
    for (name, value) in [
        ("auth.user_claim", &c.auth.user_claim),
        ("auth.roles_claim", &c.auth.roles_claim),
        ("auth.channels_claim", &c.auth.channels_claim),
        ("auth.admin_role", &c.auth.admin_role),
        ("redis.user_channel_prefix", &c.redis.user_channel_prefix),
        ("redis.broadcast_channel", &c.redis.broadcast_channel),
        ("redis.role_channel_prefix", &c.redis.role_channel_prefix),
        ("redis.room_channel_prefix", &c.redis.room_channel_prefix),
        ("redis.history_key_prefix", &c.redis.history_key_prefix),
    ] {
        if value.is_empty() {
            return err(format!("{name}: must not be empty"));
        }
    }
    if !c.redis.url.is_empty() {
        let scheme = c.redis.url.split("://").next().unwrap_or_default();
        if !REDIS_SCHEMES.contains(&scheme) {
            return err(format!(
                "redis.url: scheme must be one of {}",
                REDIS_SCHEMES.join(", ")
            ));
        }
        fred::types::config::Config::from_url(&c.redis.url)
            .map_err(|e| ConfigError(format!("redis.url: {}", e.details())))?;
    }
    positive("redis.history_size", c.redis.history_size as u64)?;
    positive("redis.history_ttl_secs", c.redis.history_ttl_secs)?;
    positive("redis.canary_interval_secs", c.redis.canary_interval_secs)?;
    positive(
        "connection.ping_interval_secs",
        c.connection.ping_interval_secs,
    )?;
    positive(
        "connection.idle_timeout_secs",
        c.connection.idle_timeout_secs,
    )?;
    positive("connection.send_queue", c.connection.send_queue as u64)?;
    positive(
        "connection.send_queue_bytes",
        c.connection.send_queue_bytes as u64,
    )?;
    positive(
        "connection.max_connections_per_user",
        c.connection.max_connections_per_user as u64,
    )?;
    if !matches!(c.socketio.payload.as_str(), "data" | "message") {
        return err(format!(
            "socketio.payload: {:?} must be \"data\" or \"message\"",
            c.socketio.payload
        ));
    }
    let path = &c.socketio.path;
    if !path.starts_with('/') || path.contains(['?', '#']) || path == "/" {
        return err(format!(
            "socketio.path: {path:?} must be a path of its own, such as \"/socket.io/\""
        ));
    }
    if let Some((kind, _)) = c.socketio.events.iter().find(|(_, e)| e.is_empty()) {
        return err(format!("socketio.events: {kind} has an empty event name"));
    }
    Ok(())
}

fn positive(name: &str, n: u64) -> Result<(), ConfigError> {
    if n == 0 {
        return err(format!("{name}: must be greater than 0"));
    }
    Ok(())
}

fn parse_addr(name: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError(format!("{name}: {s:?} is not an IP:port address")))
}

impl Config {
    /// The configuration as TOML with every secret replaced, for
    /// `check-config` and the start-up log.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for secret in [&mut c.auth.secret, &mut c.auth.admin_api_key]
            .into_iter()
            .chain(c.auth.previous_secrets.iter_mut())
        {
            if !secret.is_empty() {
                *secret = REDACTED.into();
            }
        }
        c.redis.url = redact_url(&c.redis.url);
        toml::to_string(&c).unwrap_or_default()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `validate`.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// How the open-files limit is shared out (SPEC §2 `max_connections = 0`).
/// Every client holds a descriptor; so do Redis, the listeners, logs and
/// the runtime, and each HTTP request before its upgrade (a probe too).
/// Keeping the sum below the limit means `accept` never fails with EMFILE,
/// so `/healthz` and `/readyz` always get a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The soft RLIMIT_NOFILE this was derived from.
    pub open_files: u64,
    /// WebSockets at once; more are refused with 503 over_capacity.
    pub max_connections: usize,
    /// HTTP connections not (yet) upgraded; past it the oldest is closed.
    pub http_connections: usize,
    /// Descriptors left for Redis, listeners, logs and the runtime.
    pub reserved: usize,
}

impl ServerConfig {
    /// The limits under an open-files limit of `open_files`. A configured
    /// `max_connections` is kept unless the limit cannot hold it (then the
    /// derived value wins: past the limit, the probes die first).
    pub fn capacity(&self, open_files: u64) -> Capacity {
        let files = usize::try_from(open_files).unwrap_or(usize::MAX);
        let reserved = (files / 16).clamp(32, 1024);
        let http_connections = (files / 16).clamp(16, 1024);
        let derived = files.saturating_sub(reserved + http_connections).max(1);
        let max_connections = match self.max_connections {
            0 => derived,
            configured => configured.min(derived),
        };
        Capacity {
            open_files,
            max_connections,
            http_connections,
            reserved,
        }
    }
}

/// One entry of `server.trusted_proxies`: an address block, IPv4 or IPv6
/// (a bare address is a block of one). Parsed here, in a few lines, rather
/// than with a crate: containment is all the gateway needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits)?,
            None => bits,
        };
        Some(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reached over an IPv6 socket (::ffff:a.b.c.d).
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let keep = |bits: u32| -> u128 {
            match u32::from(self.prefix) {
                0 => 0,
                p => u128::MAX << (bits - p.min(bits)),
            }
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = keep(32) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = keep(128);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl ServerConfig {
    /// `trusted_proxies`, parsed (validated at load: none is dropped then).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.trusted_proxies
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect()
    }
}

const REDACTED: &str = "<redacted>";

/// Hides the password of a `redis://user:password@host` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:{REDACTED}@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        Overrides {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: Vec::new(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let loaded = from_sources("", &Overrides::default()).unwrap();
        assert_eq!(loaded.config.server.listen, "0.0.0.0:8080");
        assert_eq!(loaded.config.connection.send_queue, 1024);
        assert!(!loaded.listen_was_set);
    }

    #[test]
    fn precedence_is_flag_env_file() {
        let file = "[server]\nlisten = \"127.0.0.1:1\"\nmax_connections = 5\n";
        let mut o = env(&[("GATEWAY_SERVER_LISTEN", "127.0.0.1:2")]);
        let c = from_sources(file, &o).unwrap().config;
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.server.max_connections, 5);
        o.flags.push(("server", "listen", "127.0.0.1:3".into()));
        let loaded = from_sources(file, &o).unwrap();
        assert_eq!(loaded.config.server.listen, "127.0.0.1:3");
        assert!(loaded.listen_was_set);
    }

    #[test]
    fn errors_name_the_key() {
        let e = from_sources("[server]\nbogus = 1\n", &Overrides::default()).unwrap_err();
        assert!(e.0.contains("server.bogus"), "{e}");
        let e = from_sources("[nope]\na = 1\n", &Overrides::default()).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
        let e =
            from_sources("[server]\nmax_connections = \"x\"\n", &Overrides::default()).unwrap_err();
        assert!(e.0.contains("server.max_connections"), "{e}");
        let e = from_sources("", &env(&[("GATEWAY_SERVER_MAX_CONNECTIONS", "abc")])).unwrap_err();
        assert!(e.0.contains("GATEWAY_SERVER_MAX_CONNECTIONS"), "{e}");
        let e = from_sources("", &env(&[("GATEWAY_REDIS_NOPE", "1")])).unwrap_err();
        assert!(e.0.contains("GATEWAY_REDIS_NOPE"), "{e}");
        let e =
            from_sources("[auth]\nalgorithms = [\"none\"]\n", &Overrides::default()).unwrap_err();
        assert!(e.0.contains("auth.algorithms"), "{e}");
        let e = from_sources("", &env(&[("GATEWAY_REDIS_URL", "http://x")])).unwrap_err();
        assert!(e.0.contains("redis.url"), "{e}");
        let e = from_sources("", &env(&[("GATEWAY_CONNECTION_SEND_QUEUE", "0")])).unwrap_err();
        assert!(e.0.contains("connection.send_queue"), "{e}");
    }

    /// SPEC §11: `[socketio.events]` and `GATEWAY_SOCKETIO_EVENTS` extend
    /// and override seed 000's table; they do not replace it.
    #[test]
    fn socketio_events_extend_the_seed_table() {
        let c = from_sources("", &Overrides::default()).unwrap().config;
        assert_eq!(
            c.socketio.events["BUDGET_ALERT"],
            "budget:threshold_exceeded"
        );
        assert_eq!(c.socketio.events.len(), 8);
        let file = "[socketio.events]\nBUDGET_ALERT = \"budget:alert\"\nPAYDAY = \"pay:day\"\n";
        let c = from_sources(file, &Overrides::default()).unwrap().config;
        assert_eq!(c.socketio.events["BUDGET_ALERT"], "budget:alert");
        assert_eq!(c.socketio.events["PAYDAY"], "pay:day");
        assert_eq!(c.socketio.events["NEW_TRANSACTION"], "transaction:created");
        let o = env(&[(
            "GATEWAY_SOCKETIO_EVENTS",
            "PAYDAY=pay:env, GOAL_ACHIEVED = goal:done",
        )]);
        let c = from_sources(file, &o).unwrap().config;
        assert_eq!(c.socketio.events["PAYDAY"], "pay:env");
        assert_eq!(c.socketio.events["GOAL_ACHIEVED"], "goal:done");
        assert_eq!(c.socketio.events["BUDGET_ALERT"], "budget:alert");
        assert_eq!(c.socketio.events.len(), 9);
    }

    #[test]
    fn socketio_refuses_what_it_cannot_use() {
        let cases = [
            ("[socketio]\npayload = \"all\"\n", "socketio.payload"),
            ("[socketio]\npath = \"socket.io\"\n", "socketio.path"),
            ("[socketio.events]\nX = 1\n", "socketio.events"),
            ("[socketio.events]\nX = \"\"\n", "socketio.events"),
        ];
        for (file, key) in cases {
            let e = from_sources(file, &Overrides::default()).unwrap_err();
            assert!(e.0.contains(key), "{file:?}: {e}");
        }
        let e = from_sources("", &env(&[("GATEWAY_SOCKETIO_EVENTS", "NOPAIR")])).unwrap_err();
        assert!(e.0.contains("GATEWAY_SOCKETIO_EVENTS"), "{e}");
    }

    #[test]
    fn env_lists_are_comma_separated_and_foreign_vars_ignored() {
        let o = env(&[
            (
                "GATEWAY_SERVER_ALLOWED_ORIGINS",
                "http://a.example, https://b.example",
            ),
            ("GATEWAY_SERVICE_HOST", "10.0.0.1"),
            ("GATEWAY_LOG_FORMAT", "json"),
        ]);
        let c = from_sources("", &o).unwrap().config;
        assert_eq!(
            c.server.allowed_origins,
            vec!["http://a.example", "https://b.example"]
        );
    }

    #[test]
    fn trusted_proxies_are_address_blocks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")) && !c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(!c.contains(ip("fd00::1")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        assert!(!Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.8")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "proxy",
            "10.0.0.0/x",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        let e = from_sources(
            "",
            &env(&[("GATEWAY_SERVER_TRUSTED_PROXIES", "10.0.0.0/8,nope")]),
        )
        .unwrap_err();
        assert!(
            e.0.contains("server.trusted_proxies") && e.0.contains("nope"),
            "{e}"
        );
        let ok = from_sources(
            "[server]\ntrusted_proxies = [\"127.0.0.0/8\", \"::1\"]\n",
            &Overrides::default(),
        );
        assert_eq!(ok.unwrap().config.server.trusted_proxies().len(), 2);
    }

    #[test]
    fn capacity_leaves_room_for_probes_and_redis() {
        let mut server = ServerConfig::default();
        let c = server.capacity(256);
        assert_eq!(
            (c.max_connections, c.http_connections, c.reserved),
            (208, 16, 32)
        );
        let c = server.capacity(1 << 20);
        assert_eq!(c.http_connections + c.reserved, 2048);
        assert_eq!(c.max_connections, (1 << 20) - 2048);
        server.max_connections = 100;
        assert_eq!(server.capacity(256).max_connections, 100);
        server.max_connections = 10_000;
        assert_eq!(server.capacity(256).max_connections, 208);
        assert_eq!(server.capacity(10).max_connections, 1);
    }

    #[test]
    fn redaction_hides_secrets() {
        let mut c = Config::default();
        c.auth.secret = "s3cret".into();
        c.auth.admin_api_key = "k3y".into();
        c.auth.previous_secrets = vec!["0ld-s3cret".into()];
        c.redis.url = "redis://user:pw@host:6379/0".into();
        let text = c.redacted_toml();
        assert!(!text.contains("s3cret") && !text.contains("k3y") && !text.contains(":pw@"));
        assert!(text.contains("redis://user:<redacted>@host:6379/0"));
    }
}
