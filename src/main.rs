//! The `ws-gateway` command line (SPEC §1): parse, load the config, run.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use ws_gateway::broker::redis::{FirstConnect, Publisher};
use ws_gateway::broker::BrokerError;
use ws_gateway::config::{self, Loaded, Overrides};
use ws_gateway::names::Names;
use ws_gateway::{auth, dev_secret, publish, server};

#[derive(Parser)]
#[command(
    name = "ws-gateway",
    version,
    about = "A stateless WebSocket gateway for Redis-published events"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve` flags, also accepted without the word `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig(ConfigArg),
    /// Mint a token with the configured HMAC secret.
    Token {
        /// The user id (`sub` claim, or auth.user_claim).
        #[arg(long)]
        sub: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Publish a message through the canonical path (history + PUBLISH).
    Publish {
        /// Publish to this user's channel, with history.
        #[arg(
            long,
            conflicts_with = "broadcast",
            required_unless_present = "broadcast"
        )]
        user: Option<String>,
        /// Publish on the broadcast channel (live only).
        #[arg(long)]
        broadcast: bool,
        /// The message type, e.g. BUDGET_ALERT.
        #[arg(long = "type")]
        kind: String,
        /// The message's `data`, as JSON.
        #[arg(long)]
        data: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args, Clone, Default)]
struct ConfigArg {
    /// Config file (default: ./gateway.toml if it exists).
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Address to listen on (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Redis URL (redis.url); empty for the embedded broker.
    #[arg(long)]
    redis_url: Option<String>,
    /// Log format.
    #[arg(long, value_enum, env = "GATEWAY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Default, PartialEq)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::CheckConfig(c)) => check_config(c),
        Some(Command::Token {
            sub,
            roles,
            ttl,
            config,
        }) => token(config, &sub, &roles, ttl),
        Some(Command::Publish {
            user,
            broadcast: _,
            kind,
            data,
            config,
        }) => publish_cmd(config, user, &kind, data.as_deref()),
    }
}

fn load(
    config: &ConfigArg,
    flags: Vec<(&'static str, &'static str, String)>,
) -> Result<Loaded, String> {
    let mut overrides = Overrides::from_process_env();
    overrides.flags = flags;
    config::load(config.config.as_deref(), &overrides).map_err(|e| e.to_string())
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn serve(args: ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    // One descriptor per client: take the hard limit, as servers usually do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let mut flags = Vec::new();
    if let Some(listen) = args.listen {
        flags.push(("server", "listen", listen));
    }
    if let Some(url) = args.redis_url {
        flags.push(("redis", "url", url));
    }
    let loaded = match load(&args.config, flags) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(file) = &loaded.file {
        tracing::info!(file = %file.display(), "configuration loaded");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(server::run(loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(e)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in files break log parsers.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == LogFormat::Json {
        // One flat object per line: the event's fields at the top level,
        // where log pipelines look for them.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

fn check_config(config: ConfigArg) -> ExitCode {
    match load(&config, Vec::new()) {
        Ok(loaded) => {
            let from = loaded
                .file
                .as_ref()
                .map_or("built-in defaults and environment".to_string(), |f| {
                    f.display().to_string()
                });
            println!("# effective configuration (from {from}); secrets redacted");
            if loaded.config.auth.has_no_keys() {
                let secret = match dev_secret::path() {
                    Ok(path) => format!(
                        "`serve` and `token` sign with the secret kept in {} (created on first use)",
                        path.display()
                    ),
                    Err(e) => format!("{e}: `serve` generates a secret for each run"),
                };
                println!(
                    "# dev mode: no auth key material; {secret}{}",
                    if loaded.listen_was_set {
                        ""
                    } else {
                        "; `serve` listens on 127.0.0.1:8080"
                    }
                );
            }
            print!("{}", loaded.config.redacted_toml());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn token(config: ConfigArg, sub: &str, roles: &[String], ttl: Duration) -> ExitCode {
    let mut loaded = match load(&config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let auth = &mut loaded.config.auth;
    if auth.has_no_keys() {
        // Dev mode (SPEC §9): sign with the secret a dev-mode `serve` uses.
        match dev_secret::load_or_create() {
            Ok(kept) => {
                eprintln!(
                    "note: no auth key configured: signed with the dev-mode secret kept in {}",
                    kept.path.display()
                );
                auth.secret = kept.secret;
            }
            Err(e) => {
                return fail(format!(
                    "no auth key is configured (auth.secret or GATEWAY_AUTH_SECRET, secret_file, \
                     public_key_file, jwks_file) and the dev-mode secret cannot be used: {e}"
                ))
            }
        }
    }
    match auth::mint(auth, &auth::Mint { sub, roles, ttl }) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn publish_cmd(
    config: ConfigArg,
    user: Option<String>,
    kind: &str,
    data: Option<&str>,
) -> ExitCode {
    let loaded = match load(&config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let r = &loaded.config.redis;
    if r.url.is_empty() {
        return fail(
            "no redis.url configured: the embedded broker lives inside the running gateway; \
             POST the message to its /ws/test-message/{user_id} (or /ws/broadcast) instead",
        );
    }
    let data = match data.map(serde_json::from_str).transpose() {
        Ok(d) => d,
        Err(e) => return fail(format!("--data is not valid JSON: {e}")),
    };
    let message = match publish::from_parts(kind, data) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let names = Names::from_config(r, "cli");
    let channel = match &user {
        Some(id) => names.user(id),
        None => names.broadcast.clone(),
    };
    let result = runtime.block_on(async {
        let publisher = Publisher::start(
            &r.url,
            r.history_size,
            r.history_ttl_secs,
            FirstConnect::Fail,
        )?;
        publisher.wait_connected(Duration::from_secs(5)).await?;
        let sent = match &user {
            Some(id) => {
                let key = names.history_key(id);
                publisher
                    .publish_with_history(&key, &channel, message.bytes)
                    .await
            }
            None => publisher.publish(&channel, message.bytes).await,
        };
        sent.map_err(|e| match e {
            BrokerError::OutcomeUnknown(_) => {
                format!("{e}: message {} may still be delivered", message.id)
            }
            BrokerError::Unavailable(_) => format!("{e}; nothing was published"),
        })
    });
    match result {
        Ok(()) => {
            println!(
                "{}",
                serde_json::json!({ "id": message.id, "channel": channel })
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
