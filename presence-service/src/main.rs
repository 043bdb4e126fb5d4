//! `presence-service --config config/presence.toml`: Socket.IO presence behind the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod announcer;
mod app;
mod backend;
mod cluster_link;
mod config;
mod diff;
mod drain;
mod fanout;
mod handshake_check;
mod handshake_memory;
mod http_api;
mod listener;
mod metrics;
mod mirror;
mod model;
mod modes;
mod paging;
mod payloads;
mod sockets;
mod trust;
mod wire;

/// Tests that allocate megabytes, and the one that measures what stays allocated, take turns:
/// jemalloc's counters are the process's, and the tests of this binary run in parallel.
#[cfg(test)]
static BIG_ALLOCATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// jemalloc, returning freed pages to the system within about a second, and without thread
/// caches. A connect storm (every new socket gets the online list page by page, every socket
/// gets the joins) allocates and frees millions of short-lived buffers while each new socket's
/// long-lived state is being allocated. glibc's malloc kept that churn resident for good (several
/// times the idle socket's own size). jemalloc's thread caches hand a new socket's state the
/// slots that transient buffers just freed, scattered over many slabs that then can never be
/// returned: measurably more per idle socket, for a few percent less CPU per broadcast
/// (`integration/bench/presence/run.sh` shows both; `/metrics` shows allocated vs resident).
/// Freed pages are returned by jemalloc's background thread: without it they are purged only
/// when the process next allocates, and a quiet node kept the ramp's freed pages for as long as
/// it stayed quiet.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc at startup; `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

#[derive(Parser)]
#[command(about = "Socket.IO presence that trusts only the gateway's signed assertion")]
struct Cli {
    /// TOML config; without it the embedded default runs (127.0.0.1:3001, in memory).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "presence_service=info,socketioxide=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cfg = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("presence-service: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    match app::run(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presence-service: {e}");
            ExitCode::FAILURE
        }
    }
}
