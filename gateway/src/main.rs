//! `gateway`: the edge-auth gateway. See README.md and DESIGN.md.

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config (syntax, keys, files) without starting.
    Check,
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
    // Pingora logs every refused or failed request itself at error level; the gateway logs
    // each request once, with its reason, so Pingora's own lines are kept to real faults.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,pingora_core=warn,pingora_proxy=off,pingora_load_balancing=error".into()
            }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
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
            let server = match Config::load(&cli.config).and_then(gateway::app::build) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::info!(config = %cli.config.display(), "gateway starting");
            server.run_forever()
        }
    }
}
