//! Command line and the settings the app is built from.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags mirror the environment variables so that dev-stack.sh and a newcomer can use either.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "demo-service",
    about = "Demo login service behind the edge gateway"
)]
pub struct Cli {
    /// Address to listen on (loopback: only the gateway should reach it).
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// SQLite file holding the sessions; the gateway reads the same file.
    #[arg(long, env = "DEMO_SESSIONS_DB", default_value = "var/sessions.db")]
    pub sessions_db: PathBuf,
    /// The built single-page app (`npm run build` in integration/web).
    #[arg(long, env = "DEMO_WEB_DIST", default_value = "integration/web/dist")]
    pub web_dist: PathBuf,
    /// Drop the cookie's Secure flag, for plain-HTTP use without the TLS gateway.
    #[arg(long, env = "DEMO_INSECURE_COOKIE")]
    pub insecure_cookie: bool,
    /// A session expires after this many seconds without a request.
    #[arg(long, env = "DEMO_SESSION_IDLE_SECS", default_value_t = 86_400)]
    pub session_idle_secs: i64,
}

/// What the app needs, apart from where it listens (tests bind their own port).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub sessions_db: PathBuf,
    pub web_dist: PathBuf,
    pub secure_cookie: bool,
    pub session_idle: time::Duration,
}

impl From<&Cli> for AppConfig {
    fn from(cli: &Cli) -> Self {
        Self {
            sessions_db: cli.sessions_db.clone(),
            web_dist: cli.web_dist.clone(),
            secure_cookie: !cli.insecure_cookie,
            session_idle: time::Duration::seconds(cli.session_idle_secs),
        }
    }
}
