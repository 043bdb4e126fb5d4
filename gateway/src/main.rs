//! `gateway`: the edge-auth gateway. See README.md and docs/design.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gateway::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "Edge-auth gateway for Socket.IO apps (Pingora + rustls)"
)]
struct Cli {
    /// The TOML config; relative paths inside it resolve against its folder.
    #[arg(long, global = true, default_value = "config/gateway.toml")]
    config: PathBuf,
    /// Serve by taking the listening sockets over from the running gateway (binary upgrade):
    /// start this, then send the old process SIGQUIT; it hands its sockets over through
    /// `[gateway] upgrade_sock` and drains (docs/operations.md).
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config (syntax, keys, files) without starting.
    Check,
    /// Tell the running gateway to re-read its config file (the one it was started with),
    /// through its admin listener; prints the result. A refused file changes nothing.
    /// `kill -HUP <pid>` does the same without the answer.
    Reload {
        /// The admin listener (default: `admin.listen` from --config, else 127.0.0.1:9180).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Make a development CA, a localhost server certificate and an Ed25519 signing key.
    DevCerts {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Extra DNS names for the server certificate (e.g. a compose service name).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Pingora logs every refused or failed request itself at error level; the gateway logs
    // each request once, with its reason, so Pingora's own lines are kept to real faults.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,pingora_core=warn,pingora_proxy=off,pingora_load_balancing=error".into()
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    tracing_subscriber::registry()
        .with(filter)
        .with(HandshakeNoise::default())
        .with(fmt)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::DevCerts { out, names } => {
            let result = gateway::devcerts::make_tls(&out, &names).and_then(|()| {
                gateway::devcerts::make_signing_key(&out.join("assertion-signing.pem"))
            });
            match result {
                Ok(()) => {
                    println!(
                        "wrote {}/{{ca.crt,ca.key,server.crt,server.key,assertion-signing.pem}}",
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload { admin } => {
            let admin = admin.unwrap_or_else(|| admin_address(&cli.config));
            match post_reload(&admin) {
                Ok((ok, body)) => {
                    print!("{body}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    }
                }
                Err(e) => {
                    eprintln!("error: cannot reach the gateway's admin listener at {admin}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // Writes nothing: files the config asks to generate on first run may be missing.
        Command::Check => {
            match Config::load(&cli.config).and_then(|c| gateway::app::check(&c).map(|()| c)) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} listeners, {} routes)",
                        cli.config.display(),
                        c.listeners.len(),
                        c.routes.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run => {
            let upgrade = cli.upgrade;
            let path = cli.config.clone();
            let built =
                Config::load(&cli.config).and_then(|c| gateway::app::build_with(c, path, upgrade));
            let server = match built {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::info!(config = %cli.config.display(), upgrade, "gateway starting");
            server.run_forever()
        }
    }
}

/// `admin.listen` from the config file, read leniently: the file may be the broken one the
/// running gateway is about to refuse (it says why; this command only needs the address).
fn admin_address(config: &std::path::Path) -> String {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("admin")?.get("listen")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1:9180".into())
}

/// `POST /reload` on the admin listener: (accepted, the gateway's answer).
fn post_reload(admin: &str) -> std::io::Result<(bool, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)?;
    // A reload opens stores and resolves upstreams; it is bounded by their own timeouts.
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    Ok((ok, body.to_string()))
}

/// Pingora logs every failed TLS handshake as `ERROR Downstream handshake error from ...`
/// (pingora-core `services::listening`, through the `log` crate). Most are expected client
/// behaviour: a browser that does not trust the certificate (the dev CA) aborts the handshake,
/// and retries. This layer drops those lines and says it once a minute, at info, with how many
/// there were; other Pingora errors, including a handshake timeout, are untouched.
#[derive(Default)]
struct HandshakeNoise {
    /// When the last summary was written, and failures seen since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

const HANDSHAKE_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The event's message and its target (a `log` record's own target, not "log").
#[derive(Default)]
struct MessageAndTarget {
    message: String,
    target: Option<String>,
}

impl tracing::field::Visit for MessageAndTarget {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "log.target" => self.target = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// Whether an event is Pingora's line for a failed downstream TLS handshake.
fn is_handshake_failure(event: &tracing::Event<'_>) -> Option<String> {
    if *event.metadata().level() != tracing::Level::ERROR {
        return None;
    }
    let mut v = MessageAndTarget::default();
    event.record(&mut v);
    let target = v.target.as_deref().unwrap_or(event.metadata().target());
    (target == "pingora_core::services::listening"
        && v.message.starts_with("Downstream handshake error"))
    .then_some(v.message)
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HandshakeNoise {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let Some(message) = is_handshake_failure(event) else {
            return true;
        };
        // Our own info line already covers a plain-HTTP request answered on a TLS port, and a
        // connection closed before its first byte is a probe, not a client failing TLS.
        if message.contains(gateway::app::PLAIN_HTTP_REFUSED)
            || message.contains(gateway::app::CLOSED_BEFORE_ANY_BYTE)
        {
            return false;
        }
        let due = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.1 += 1;
            let due = state
                .0
                .is_none_or(|last| last.elapsed() >= HANDSHAKE_SUMMARY_EVERY);
            if due {
                let failed = state.1;
                *state = (Some(std::time::Instant::now()), 0);
                Some(failed)
            } else {
                None
            }
        };
        // Emitted outside the lock. The subscriber is the global default, so this nested event
        // is dispatched normally (it is not one of Pingora's, so it is not dropped here).
        if let Some(failed) = due {
            tracing::info!(
                failed,
                last = %message.trim_start_matches("Downstream handshake error "),
                "TLS handshakes failed: clients that do not trust the certificate (e.g. the dev \
                 CA) or do not speak TLS; expected, summarised at most once a minute"
            );
        }
        false
    }
}
