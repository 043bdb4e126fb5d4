//! The TOML config, one struct per table, mirroring the file one to one.
//!
//! Every field has a default, so `presence-service` with no config file runs the embedded default:
//! 127.0.0.1:3001, in-memory presence, keys from the gateway's JWKS on 127.0.0.1:9180.
//! Errors name the file, the line and the key; relative paths resolve against the config's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_errors::{key_path, line_col};
use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax or type error. The first line is `file:line:col: key: message`; the toml
    /// crate's rendering (the offending line, underlined) follows for the reader.
    #[error("{path}:{line}:{col}: {key}{message}\n{source}", key = key_prefix(key))]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        /// Dotted key path (`presence.mode`); empty for a syntax error.
        key: String,
        message: String,
        source: Box<toml::de::Error>,
    },
    /// A value of the right type that makes no sense.
    #[error("{path}:{line}:{col}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        key: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub trust: TrustConfig,
    pub presence: PresenceConfig,
    pub limits: LimitsConfig,
    pub backend: BackendConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    pub listen: Spanned<String>,
    /// On SIGTERM, this node's sockets are closed a few at a time over this window (the
    /// clients reconnect to the other nodes in a trickle; `src/drain.rs`).
    pub drain_ms: u64,
    /// And never more than this many in any one second.
    pub drain_max_per_sec: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:3001".into()),
            drain_ms: 5000,
            drain_max_per_sec: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed on `exp` / `iat`.
    pub leeway_secs: u64,
    /// Header that carries the assertion on the handshake and on `/presence`.
    pub header: String,
    /// Where the gateway publishes its keys. Used when `public_keys` is empty.
    pub jwks_url: String,
    /// After a fetch that brought keys, at most one refetch per this interval, however many
    /// unknown kids arrive: a flood of forged kids must not turn into a flood of requests to the
    /// gateway. A failed or empty fetch is retried without waiting for it (see `trust`).
    pub jwks_refetch_min_interval_ms: u64,
    pub jwks_timeout_ms: u64,
    /// Static public keys (SPKI PEM files). When set, the JWKS is not used.
    pub public_keys: Vec<PublicKeyFile>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            issuer: "edge-gateway".into(),
            audience: "presence-service".into(),
            leeway_secs: 5,
            header: identity_assertion::DEFAULT_HEADER.into(),
            jwks_url: "http://127.0.0.1:9180/.well-known/jwks.json".into(),
            jwks_refetch_min_interval_ms: 1_000,
            jwks_timeout_ms: 2_000,
            public_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub kid: String,
    /// Path of the PEM file, relative to the config file's folder.
    pub pem: Spanned<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventMode {
    /// Exactly the seed's events: whole list on every change.
    #[default]
    Compat,
    /// Snapshot on connect, then batched `presence_diff`.
    Diff,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub mode: EventMode,
    /// How long a user stays online after their last socket left (reload without flapping).
    pub grace_ms: u64,
    /// Diff mode: changes within this window go out as one `presence_diff`.
    pub diff_window_ms: u64,
    /// Diff mode: how many frames per second (one per socket per `presence_diff`) the node's
    /// broadcasts may cost while changes come in bursts. With many sockets the window then grows
    /// so that a burst (a reconnect storm) costs this, however fast users join; changes one at a
    /// time still go out after the window. 0: no budget, the window alone.
    pub diff_budget_per_sec: u64,
    /// Sockets one user may hold on one node.
    pub max_sockets_per_user: usize,
    /// Diff mode: users per frame of the connect snapshot, and changes per `presence_diff`. A
    /// longer list goes out as `online_users` with the first page, then `presence_diff` joins
    /// one page at a time; a larger batch of changes as several `presence_diff`s. Bounds the
    /// largest frame (~40 bytes per user); a socket gives the buffer back once it is written.
    pub snapshot_page_size: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            mode: EventMode::Compat,
            grace_ms: 3_000,
            diff_window_ms: 50,
            diff_budget_per_sec: 10_000,
            max_sockets_per_user: 64,
            snapshot_page_size: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest HTTP long-polling body accepted (engine.io `maxHttpBufferSize`).
    pub max_payload: u64,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Packets queued per socket before the socket is closed as too slow.
    pub max_buffer_size: usize,
    /// Per-websocket read buffer; the main per-idle-socket memory cost.
    pub ws_read_buffer_size: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        // Socket.IO's heartbeat defaults; a payload limit well below Socket.IO's (presence
        // clients send only small events); buffers sized for many idle sockets (see README).
        Self {
            max_payload: 100_000,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_buffer_size: 128,
            // Clients send almost nothing (pongs, acks); a bigger message still fits, the buffer
            // grows for it. Every idle socket holds this much.
            ws_read_buffer_size: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub redis_url: Spanned<String>,
    /// A file holding the whole Redis URL (`redis://:password@host:port`), read at load time in
    /// place of `redis_url`, so the password lives in a secret (e.g. `/run/secrets/redis_url`),
    /// not in the config. Relative to the config file's folder.
    pub redis_url_file: Option<Spanned<PathBuf>>,
    /// Prefix of every presence key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// This node's id in Redis; empty picks a random one at start.
    pub node_id: String,
    pub heartbeat_interval_ms: u64,
    /// A node whose heartbeat is older than this is dead: its users are removed. A crashed node's
    /// users are therefore gone within `node_ttl_ms + heartbeat_interval_ms`.
    pub node_ttl_ms: u64,
    /// Bound on each Redis call, so an unreachable Redis never stalls sockets.
    pub op_timeout_ms: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Memory,
            redis_url: Spanned::new(0..0, "redis://127.0.0.1:6379".into()),
            redis_url_file: None,
            key_prefix: "presence".into(),
            node_id: String::new(),
            heartbeat_interval_ms: 1_000,
            node_ttl_ms: 3_000,
            op_timeout_ms: 1_000,
        }
    }
}

impl Config {
    /// Loads and checks `path`; `None` gives the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (for error messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |key: String, mut e: toml::de::Error| {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            // Lets the toml crate render the offending line under our summary line.
            e.set_input(Some(text));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                col,
                key,
                message: e.message().trim().to_string(),
                source: Box::new(e),
            }
        };
        // serde_path_to_error tracks where deserialization stopped, so a type error names its
        // key (`presence.grace_ms`) and not only the line.
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(String::new(), e))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(e.path());
            parse_error(key, e.into_inner())
        })?;
        let invalid = |span: std::ops::Range<usize>, key: &'static str, reason: String| {
            // A checked value without a span of its own (a plain number) is found by its key.
            let start = if span.is_empty() {
                key_offset(text, key)
            } else {
                span.start
            };
            let (line, col) = line_col(text, start);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                key,
                reason,
            }
        };
        let listen = &config.server.listen;
        if listen.get_ref().parse::<SocketAddr>().is_err() {
            return Err(invalid(
                listen.span(),
                "server.listen",
                format!("{:?} is not an ip:port", listen.get_ref()),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for key in &mut config.trust.public_keys {
            let span = key.pem.span();
            let resolved = base.join(key.pem.get_ref());
            if !resolved.is_file() {
                return Err(invalid(
                    span,
                    "trust.public_keys.pem",
                    format!("no such file {}", resolved.display()),
                ));
            }
            key.pem = Spanned::new(span, resolved);
        }
        if let Some(file) = config.backend.redis_url_file.take() {
            let span = file.span();
            let resolved = base.join(file.get_ref());
            let text = std::fs::read_to_string(&resolved).map_err(|e| {
                invalid(
                    span.clone(),
                    "backend.redis_url_file",
                    format!("cannot read {}: {e}", resolved.display()),
                )
            })?;
            let url = text.trim().to_string();
            if redis::Client::open(url.as_str()).is_err() {
                // The URL may carry a password: name the file, never print its contents.
                return Err(invalid(
                    span,
                    "backend.redis_url_file",
                    format!("{} does not hold a redis URL", resolved.display()),
                ));
            }
            config.backend.redis_url = Spanned::new(span, url);
            config.backend.redis_url_file = Some(Spanned::new(0..0, resolved));
        }
        let url = &config.backend.redis_url;
        if config.backend.kind == BackendKind::Redis
            && redis::Client::open(url.get_ref().as_str()).is_err()
        {
            return Err(invalid(
                url.span(),
                "backend.redis_url",
                format!("{:?} is not a redis URL", url.get_ref()),
            ));
        }
        if config.server.drain_max_per_sec == 0 {
            return Err(invalid(
                0..0,
                "server.drain_max_per_sec",
                "must be at least 1".into(),
            ));
        }
        if config.presence.snapshot_page_size == 0 {
            return Err(invalid(
                0..0,
                "presence.snapshot_page_size",
                "must be at least 1".into(),
            ));
        }
        if config.backend.heartbeat_interval_ms == 0 {
            return Err(invalid(
                0..0,
                "backend.heartbeat_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if config.backend.node_ttl_ms <= config.backend.heartbeat_interval_ms {
            return Err(invalid(
                0..0,
                "backend.node_ttl_ms",
                "must be larger than heartbeat_interval_ms".into(),
            ));
        }
        Ok(config)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Checked in `parse`; the default is a valid literal.
        self.server
            .listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 3001)))
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Byte offset of the value of `table.key` (`key = value` under `[table]`); else of the
/// `[table]` header (the key was left at its default); else 0. Only for errors: plain numbers
/// carry no span after parsing.
fn key_offset(text: &str, dotted: &str) -> usize {
    let Some((table, key)) = dotted.rsplit_once('.') else {
        return 0;
    };
    let mut current = String::new();
    let mut offset = 0;
    let mut header_at = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            // `[table]` or `[[array.of.tables]]`.
            current = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            if current == table && header_at.is_none() {
                header_at = Some(offset + line.len() - trimmed.len());
            }
        } else if current == table {
            if let Some(rest) = trimmed.strip_prefix(key) {
                if let Some(value) = rest.trim_start().strip_prefix('=') {
                    let value_at = line.len() - value.trim_start().len();
                    return offset + value_at;
                }
            }
        }
        offset += line.len();
    }
    header_at.unwrap_or(0)
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:3001");
        assert_eq!(c.presence.mode, EventMode::Compat);
        assert_eq!(c.backend.kind, BackendKind::Memory);
        assert_eq!(
            c.trust.jwks_url,
            "http://127.0.0.1:9180/.well-known/jwks.json"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse(
            "[presence]\nmode = \"diff\"\ngrace = 3\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("p.toml") && msg.contains("line 3") && msg.contains("grace"),
            "{msg}"
        );
    }

    #[test]
    fn bad_listen_names_line_and_key() {
        let err =
            Config::parse("\n[server]\nlisten = \"nope\"\n", Path::new("p.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:3:10: server.listen: \"nope\" is not an ip:port"
        );
    }

    #[test]
    fn pem_paths_resolve_against_the_config_folder() {
        let dir = std::env::temp_dir().join(format!("presence-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join("keys/k.pem"), "x").unwrap();
        let text = "[[trust.public_keys]]\nkid = \"k\"\npem = \"keys/k.pem\"\n";
        let c = Config::parse(text, &dir.join("p.toml")).unwrap();
        assert_eq!(
            c.trust.public_keys[0].pem.get_ref(),
            &dir.join("keys/k.pem")
        );
        let err = Config::parse(text, Path::new("/nonexistent/p.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/p.toml:3:7: trust.public_keys.pem"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn snapshot_page_size_zero_is_refused() {
        let err = Config::parse(
            "[presence]\nmode = \"diff\"\nsnapshot_page_size = 0\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:3:22: presence.snapshot_page_size: must be at least 1"
        );
    }

    #[test]
    fn bad_mode_is_refused() {
        let err = Config::parse("[presence]\nmode = \"full\"\n", Path::new("p.toml")).unwrap_err();
        let first = err
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            first,
            "p.toml:2:8: presence.mode: unknown variant `full`, expected `compat` or `diff`"
        );
    }

    /// Type errors name file, line, column and the dotted key, not only "invalid type".
    #[test]
    fn type_errors_name_the_key_path() {
        let cases = [
            (
                "[presence]\ngrace_ms = \"3s\"\n",
                "p.toml:2:12: presence.grace_ms: invalid type: string \"3s\", expected u64",
            ),
            (
                "[backend]\nkind = \"postgres\"\n",
                "p.toml:2:8: backend.kind: unknown variant `postgres`, expected `memory` or `redis`",
            ),
            (
                "[server]\nlisten = 3001\n",
                "p.toml:2:10: server.listen: invalid type: integer `3001`, expected a string",
            ),
            (
                "[[trust.public_keys]]\nkid = \"k\"\npem = [\"a\"]\n",
                "p.toml:3:7: trust.public_keys[0].pem: invalid type: sequence, expected path string",
            ),
            (
                "[presence]\ngrace = 3\n",
                "p.toml:2:1: presence.grace: unknown field `grace`",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "want {want:?}\n got {err}");
            // The toml crate's rendering of the line follows the summary.
            assert!(err.contains("TOML parse error at line"), "{err}");
        }
        let err = Config::parse(
            "[presence]\nmode = \"diff\"\n[backend]\nheartbeat_interval_ms = 5000\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:3:1: backend.node_ttl_ms: must be larger than heartbeat_interval_ms"
        );
        // A zero heartbeat would stop the announcer at start (a zero-period timer panics).
        let err = Config::parse(
            "[backend]\nheartbeat_interval_ms = 0\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:2:25: backend.heartbeat_interval_ms: must be at least 1"
        );
    }

    #[test]
    fn redis_url_from_a_file_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("presence-cfg-url-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("redis_url"), "redis://:s3cret@redis:6379\n").unwrap();
        let text = "[backend]\nkind = \"redis\"\nredis_url_file = \"redis_url\"\n";
        let c = Config::parse(text, &dir.join("presence.toml")).unwrap();
        assert_eq!(c.backend.redis_url.get_ref(), "redis://:s3cret@redis:6379");
        std::fs::write(dir.join("redis_url"), "not a url with s3cret").unwrap();
        let err = Config::parse(text, &dir.join("presence.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend.redis_url_file"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Config::parse(
            "[backend]\nredis_url_file = \"missing\"\n",
            &dir.join("presence.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
