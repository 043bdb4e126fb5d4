//! The gateway's TOML configuration, one Rust type per TOML table.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a typo in a security setting must not silently
//! fall back to a default. Every error names the file, line and key. Relative paths resolve
//! against the config file's folder so a config means the same thing from any working directory.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

/// A config problem, already formatted as `file:line:col: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub assertion: AssertionSection,
    /// The default session source (routes that name none use it).
    pub session: Option<SessionSection>,
    /// Named session sources, for one gateway in front of several apps (e.g. an Express app
    /// and an axum app): `[sessions.express]`, `[sessions.demo]`; routes pick with `sessions`.
    #[serde(default)]
    pub sessions: std::collections::BTreeMap<String, SessionSection>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Handshake rate limits, lookup cap, tunnels per user (see `admission`).
    #[serde(default)]
    pub admission: crate::admission::AdmissionConfig,
    /// The signed cookie that keeps Engine.IO polling sessions on their node across gateway
    /// processes (`gateway/src/affinity.rs`).
    #[serde(default)]
    pub affinity: crate::affinity::AffinityConfig,
    /// Folder of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Where the config came from, kept to point errors found after parsing at a line.
#[derive(Debug, Default, Clone)]
pub struct ConfigSource {
    pub file: String,
    pub text: String,
}

impl ConfigSource {
    /// `file:line:col: key: message` for a span found after parsing.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> ConfigError {
        let (line, col) = line_col(&self.text, span.start);
        ConfigError(format!("{}:{line}:{col}: {key}: {msg}", self.file))
    }
}

/// `file:line:col: key: message` for an error from the toml deserializer. Serde's own wording
/// is kept: for an unknown variant it already lists the allowed ones ("expected one of ...").
pub fn toml_error(text: &str, file: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
    let msg = e.message().trim();
    if key.is_empty() {
        ConfigError(format!("{file}:{line}:{col}: {msg}"))
    } else {
        ConfigError(format!("{file}:{line}:{col}: {key}: {msg}"))
    }
}

pub use config_errors::key_path;
use config_errors::line_col;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The assertion issuer (`iss`).
    #[serde(default = "default_id")]
    pub id: String,
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// On SIGTERM, keep serving this long while the orchestrator drains traffic.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// On SIGTERM or SIGQUIT, first keep serving this long with every response closing its
    /// connection, so keep-alive clients move off by themselves before Pingora drops the idle
    /// connections (`drain`, `LingeringSignals`). 0: no linger.
    #[serde(default = "default_keepalive_linger_ms")]
    pub keepalive_linger_ms: u64,
    /// Then give in-flight requests and upgraded connections this long to finish.
    #[serde(default = "default_grace")]
    pub shutdown_timeout_secs: u64,
    /// On SIGTERM (after `shutdown_grace_secs`) and on a binary upgrade, the WebSockets this
    /// process relays are closed one by one over this window, so clients come back in a trickle.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// And never more than this many in any one second.
    #[serde(default = "default_drain_max_per_sec")]
    pub drain_max_per_sec: u32,
    /// The Unix socket a new process (`gateway --upgrade`) takes the listening sockets over.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    /// How long an upgraded (WebSocket) connection may be silent in both directions. Socket.IO
    /// pings every 25 s, so anything well above that only cuts dead peers; Pingora's own default
    /// (60 s) would cut long-poll and quiet sockets.
    #[serde(default = "default_upgraded_idle")]
    pub upgraded_idle_timeout_secs: u64,
    /// How long an upstream may take to answer a WebSocket handshake (its `101` or a refusal).
    /// The handshake holds an upstream connection and one of its user's tunnel slots meanwhile,
    /// and the gateway does not notice a client that gave up, so the wait needs its own bound.
    #[serde(default = "default_upstream_handshake_timeout_ms")]
    pub upstream_handshake_timeout_ms: NonZeroU64,
    /// How long a request that is not upgraded waits for each read from its upstream: the
    /// response head, then every piece of its body. A hung upstream otherwise holds the client
    /// and an upstream connection for `upgraded_idle_timeout_secs`. A long poll or an event
    /// stream must send something within it (Socket.IO's polling answers within its ping
    /// interval).
    #[serde(default = "default_upstream_read_timeout_secs")]
    pub upstream_read_timeout_secs: NonZeroU64,
    /// Peers (IP or CIDR) whose `X-Forwarded-*` headers are trusted and appended to.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Which requests get an access line. Engine.IO long-polling requests of established
    /// sessions (two per client per ping interval) can be skipped or sampled; they are always
    /// counted in `gateway_requests_total` and, when not logged, in
    /// `gateway_access_log_suppressed_total`.
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

/// `[gateway] access_log = { polling = "all" | "skip" | "sample", sample_every = 100 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default)]
    pub polling: PollingLog,
    /// With `polling = "sample"`: one line per this many polling requests (the first is logged).
    #[serde(default = "default_sample_every")]
    pub sample_every: u64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            polling: PollingLog::All,
            sample_every: default_sample_every(),
        }
    }
}

fn default_sample_every() -> u64 {
    100
}

/// What the access log does with Engine.IO polling requests that are neither refused nor failed
/// (refusals, errors and 5xx answers are always logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollingLog {
    #[default]
    All,
    Skip,
    Sample,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            id: default_id(),
            threads: default_threads(),
            shutdown_grace_secs: default_grace(),
            keepalive_linger_ms: default_keepalive_linger_ms(),
            shutdown_timeout_secs: default_grace(),
            drain_secs: default_drain_secs(),
            drain_max_per_sec: default_drain_max_per_sec(),
            upgrade_sock: default_upgrade_sock(),
            upgraded_idle_timeout_secs: default_upgraded_idle(),
            upstream_handshake_timeout_ms: default_upstream_handshake_timeout_ms(),
            upstream_read_timeout_secs: default_upstream_read_timeout_secs(),
            trusted_proxies: Vec::new(),
            access_log: AccessLogConfig::default(),
        }
    }
}

fn default_id() -> String {
    "edge-gateway".into()
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> u64 {
    5
}
fn default_keepalive_linger_ms() -> u64 {
    1000
}

fn default_drain_secs() -> u64 {
    30
}
fn default_drain_max_per_sec() -> u32 {
    200
}
fn default_upgrade_sock() -> PathBuf {
    "/tmp/gateway-upgrade.sock".into()
}
fn default_upgraded_idle() -> u64 {
    3600
}
// Zero is refused where it is written (a `NonZeroU64` does not deserialize from 0).
fn default_upstream_handshake_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(10_000).unwrap() }
}
fn default_upstream_read_timeout_secs() -> NonZeroU64 {
    const { NonZeroU64::new(60).unwrap() }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, default_admin_listen().into_inner()),
        }
    }
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9180".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: Spanned<String>,
    pub tls: Option<TlsConfig>,
    /// HTTP/2 over TLS (ALPN h2). WebSocket upgrades still work: browsers open them over a
    /// separate HTTP/1.1 connection when the server does not offer RFC 8441.
    #[serde(default)]
    pub http2: bool,
    /// Per-connection socket read buffer under TLS/HTTP parsing (0 = none). Pingora's default
    /// is 64 KiB per connection, held for the connection's whole life; rustls and the HTTP
    /// parser read into their own buffers anyway, so none is the leanest choice for
    /// long-lived WebSockets (see the gateway bench).
    #[serde(default)]
    pub read_buffer_bytes: usize,
    /// Per-connection socket write buffer (default: none under TLS, Pingora's 1460 bytes in
    /// plain HTTP). rustls already gathers each flight of records before writing, so under
    /// TLS the buffer only costs 1.4 KiB per open WebSocket; in plain HTTP it joins a
    /// response's head and body into one packet.
    #[serde(default)]
    pub write_buffer_bytes: Option<usize>,
}

impl ListenerConfig {
    pub fn write_buffer(&self) -> usize {
        let plain_default = pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;
        self.write_buffer_bytes
            .unwrap_or(if self.tls.is_some() { 0 } else { plain_default })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
    /// Make a self-signed development certificate (and CA) here if the files are missing.
    #[serde(default)]
    pub generate_dev_cert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionSection {
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// First key signs; all keys are published in the JWKS.
    #[serde(default)]
    pub keys: Vec<SigningKeyConfig>,
}

impl Default for AssertionSection {
    fn default() -> Self {
        Self {
            ttl_secs: default_ttl(),
            keys: Vec::new(),
        }
    }
}

fn default_ttl() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    pub kid: String,
    /// PKCS#8 PEM: inline, from a file, or from an environment variable.
    pub private_key: Spanned<SecretSource>,
    /// Make a fresh key at `file` if it does not exist (development).
    #[serde(default)]
    pub generate_if_missing: bool,
}

/// A secret that should not have to live in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub value: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Reads the secret; exactly one of `value`, `env`, `file` must be set.
    pub fn read(&self, base: &Path) -> Result<String, String> {
        match (&self.value, &self.env, &self.file) {
            (Some(v), None, None) => Ok(v.clone()),
            (None, Some(var), None) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            (None, None, Some(path)) => {
                let path = resolve(base, path);
                std::fs::read_to_string(&path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
            _ => Err("set exactly one of `value`, `env`, `file`".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionFlavour {
    /// tower-sessions / axum-login: MessagePack records, cookie `id`.
    TowerSessions,
    /// express-session + Passport: `connect.sid`, JSON in connect-redis layout.
    Express,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    pub flavour: SessionFlavour,
    pub cookie: Option<String>,
    /// Dotted path to the user id in the session data.
    pub user_id_field: Option<String>,
    /// Dotted path to the display name; absent means the id is shown.
    pub display_name_field: Option<String>,
    /// express: the `secret` list (first signs, all verify). tower-sessions: the cookie
    /// `Key` master key(s) when cookies are signed (base64 of 64 bytes).
    #[serde(default)]
    pub secrets: Vec<Spanned<SecretSource>>,
    /// A store lookup slower than this counts as an outage (503): fail closed, fast.
    #[serde(default = "default_lookup_timeout")]
    pub lookup_timeout_ms: u64,
    pub store: Spanned<StoreConfig>,
}

fn default_lookup_timeout() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreConfig {
    Sqlite {
        path: PathBuf,
        #[serde(default = "default_table")]
        table: String,
    },
    Redis {
        /// `redis://[user:password@]host:port[/db]`, inline or, since it may carry a password,
        /// from a secret: `url = { file = "/run/secrets/redis_url" }` or `{ env = "VAR" }`
        /// (a relative file is read from the working directory).
        #[serde(deserialize_with = "string_or_secret")]
        url: String,
        /// Key prefix (connect-redis: `sess:`). tower-sessions' Redis store uses none.
        prefix: Option<String>,
    },
}

/// A plain string, or a [`SecretSource`] table read at load time.
fn string_or_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Plain(String),
        Secret(SecretSource),
    }
    match Either::deserialize(d)? {
        Either::Plain(s) => Ok(s),
        Either::Secret(s) => s.read(Path::new(".")).map_err(serde::de::Error::custom),
    }
}

fn default_table() -> String {
    "tower_sessions".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicy {
    None,
    Session,
    SocketioHandshake,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: Spanned<String>,
    pub host: Option<String>,
    pub upstreams: Spanned<Vec<String>>,
    #[serde(default = "default_auth")]
    pub auth: Spanned<AuthPolicy>,
    /// `aud` of assertions minted for this route.
    pub audience: Option<String>,
    #[serde(default = "default_header")]
    pub assertion_header: String,
    /// Origins allowed to open a Socket.IO connection (checked on handshakes).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default = "default_hc_interval")]
    pub health_check_interval_secs: u64,
    pub logout: Option<LogoutConfig>,
    /// Named session sources to authenticate with, tried in order: the first whose cookie the
    /// request carries decides. Empty: the default `[session]`.
    #[serde(default = "no_sessions")]
    pub sessions: Spanned<Vec<String>>,
    /// Socket.IO handshakes per second on this route, all clients together (0: no limit).
    #[serde(default)]
    pub max_handshakes_per_sec: u32,
}

fn no_sessions() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}

fn default_prefix() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
}
fn default_auth() -> Spanned<AuthPolicy> {
    Spanned::new(0..0, AuthPolicy::None)
}
fn default_header() -> String {
    identity_assertion::DEFAULT_HEADER.into()
}
fn default_hc_interval() -> u64 {
    2
}

/// Tell other services when a user logs out through this route, so they can end that
/// session's live connections (see docs/logout.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutConfig {
    pub path: String,
    /// URLs to POST to (first that answers 2xx wins: the receivers share state).
    pub notify: Vec<Spanned<String>>,
    pub audience: String,
    #[serde(default = "default_header")]
    pub header: String,
}

/// Resolves `path` against `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl Config {
    /// Reads and parses a config file; the error names file, line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config: {e}", path.display())))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, &path.display().to_string(), base)
    }

    pub fn parse(text: &str, file: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        // serde_path_to_error records where in the document deserialization stopped, so a type
        // error names its key (`route[1].auth`), not only the line toml points at.
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, file, "", &e))?;
        let mut cfg: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| toml_error(text, file, &key_path(e.path()), e.inner()))?;
        cfg.base_dir = base_dir;
        cfg.source = ConfigSource {
            file: file.to_string(),
            text: text.to_string(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn path(&self, p: &Path) -> PathBuf {
        resolve(&self.base_dir, p)
    }

    /// Checks that need more than types: addresses parse, names are unique, policies have what
    /// they need.
    fn validate(&self) -> Result<(), ConfigError> {
        let src = &self.source;
        // Something missing has no span of its own: point at the top of the file.
        let missing = |key: &str, msg: &str| src.error_at(0..0, key, msg);
        parse_addr(src, &self.admin.listen, "admin.listen")?;
        if self.gateway.access_log.polling == PollingLog::Sample
            && self.gateway.access_log.sample_every == 0
        {
            return Err(missing(
                "gateway.access_log.sample_every",
                "must be at least 1 with polling = \"sample\"",
            ));
        }
        if self.gateway.drain_max_per_sec == 0 {
            return Err(missing("gateway.drain_max_per_sec", "must be at least 1"));
        }
        if !crate::affinity::valid_cookie_name(&self.affinity.cookie) {
            return Err(missing(
                "affinity.cookie",
                "not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        }
        if self.listeners.is_empty() {
            return Err(missing("listener", "at least one [[listener]] is required"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            parse_addr(src, &l.listen, &format!("listener[{i}].listen"))?;
        }
        for (i, p) in self.gateway.trusted_proxies.iter().enumerate() {
            crate::forwarding::parse_cidr(p.get_ref())
                .map_err(|e| src.error_at(p.span(), &format!("gateway.trusted_proxies[{i}]"), e))?;
        }
        if self.routes.is_empty() {
            return Err(missing("route", "at least one [[route]] is required"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let name = r.name.get_ref();
            if !names.insert(name.as_str()) {
                return Err(src.error_at(
                    r.name.span(),
                    &key("name"),
                    format!("duplicate route name {name:?}"),
                ));
            }
            if !r.path_prefix.get_ref().starts_with('/') {
                return Err(src.error_at(
                    r.path_prefix.span(),
                    &key("path_prefix"),
                    "must start with '/'",
                ));
            }
            if r.upstreams.get_ref().is_empty() {
                return Err(src.error_at(
                    r.upstreams.span(),
                    &key("upstreams"),
                    "at least one upstream is required",
                ));
            }
            for (j, u) in r.upstreams.get_ref().iter().enumerate() {
                if crate::upstream::parse_upstream(u).is_err() {
                    return Err(src.error_at(
                        r.upstreams.span(),
                        &key(&format!("upstreams[{j}]")),
                        format!("{u:?} is not host:port"),
                    ));
                }
            }
            for (j, n) in r.sessions.get_ref().iter().enumerate() {
                if !self.sessions.contains_key(n) {
                    return Err(src.error_at(
                        r.sessions.span(),
                        &key(&format!("sessions[{j}]")),
                        format!("no [sessions.{n}] table"),
                    ));
                }
            }
            let has_session = self.session.is_some() || !r.sessions.get_ref().is_empty();
            let auth = *r.auth.get_ref();
            if auth != AuthPolicy::None {
                if !has_session {
                    return Err(src.error_at(
                        r.auth.span(),
                        &key("auth"),
                        format!(
                            "route {name:?}: auth = {auth:?} needs a [session] section (or `sessions`)"
                        ),
                    ));
                }
                if r.audience.is_none() {
                    return Err(src.error_at(
                        r.auth.span(),
                        &key("audience"),
                        format!(
                            "route {name:?}: auth needs `audience` (the upstream's assertion audience)"
                        ),
                    ));
                }
            }
            if let Some(l) = &r.logout {
                if !has_session {
                    return Err(src.error_at(
                        r.name.span(),
                        &key("logout"),
                        format!("route {name:?}: logout needs a [session] section"),
                    ));
                }
                for (j, n) in l.notify.iter().enumerate() {
                    if !n.get_ref().starts_with("http://") {
                        return Err(src.error_at(
                            n.span(),
                            &key(&format!("logout.notify[{j}]")),
                            "must be an http:// URL",
                        ));
                    }
                }
            }
        }
        if self.assertion.keys.is_empty() {
            return Err(missing(
                "assertion.keys",
                "at least one [[assertion.keys]] signing key is required",
            ));
        }
        for (i, k) in self.assertion.keys.iter().enumerate() {
            let s = k.private_key.get_ref();
            let set = [s.value.is_some(), s.env.is_some(), s.file.is_some()];
            if set.iter().filter(|b| **b).count() != 1 {
                return Err(src.error_at(
                    k.private_key.span(),
                    &format!("assertion.keys[{i}].private_key"),
                    "set exactly one of `value`, `env`, `file`",
                ));
            }
            if k.generate_if_missing && s.file.is_none() {
                return Err(src.error_at(
                    k.private_key.span(),
                    &format!("assertion.keys[{i}].generate_if_missing"),
                    "needs `private_key.file`",
                ));
            }
        }
        let all = self.session.iter().map(|s| ("session".to_string(), s));
        let named = self
            .sessions
            .iter()
            .map(|(n, s)| (format!("sessions.{n}"), s));
        for (key, s) in all.chain(named) {
            if s.flavour == SessionFlavour::Express && s.secrets.is_empty() {
                return Err(src.error_at(
                    s.store.span(),
                    &format!("{key}.secrets"),
                    "the express flavour needs at least one secret",
                ));
            }
            if s.flavour == SessionFlavour::Express
                && matches!(s.store.get_ref(), StoreConfig::Sqlite { .. })
            {
                return Err(src.error_at(
                    s.store.span(),
                    &format!("{key}.store"),
                    "the express flavour reads connect-redis (kind = \"redis\")",
                ));
            }
            if let StoreConfig::Redis { url, .. } = s.store.get_ref() {
                if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                    return Err(src.error_at(
                        s.store.span(),
                        &format!("{key}.store.url"),
                        "must start with redis://",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn parse_addr(
    src: &ConfigSource,
    s: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        src.error_at(
            s.span(),
            key,
            format!("{:?} is not an ip:port address", s.get_ref()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
listen = "127.0.0.1:8080"

[[assertion.keys]]
kid = "k1"
private_key = { value = "pem" }

[session]
flavour = "express"
cookie = "connect.sid"
secrets = [{ value = "s1" }]
store = { kind = "redis", url = "redis://127.0.0.1:6379", prefix = "sess:" }

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["127.0.0.1:3001"]
auth = "socketio-handshake"
audience = "presence-service"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "gw.toml", PathBuf::from("/etc/gw"))
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gateway.id, "edge-gateway");
        assert_eq!(c.admin.listen.get_ref(), "127.0.0.1:9180");
        assert_eq!(c.routes[0].assertion_header, "x-identity-assertion");
        assert_eq!(
            c.path(Path::new("certs/a.pem")),
            PathBuf::from("/etc/gw/certs/a.pem")
        );
        assert_eq!(c.path(Path::new("/abs")), PathBuf::from("/abs"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = MINIMAL.replace(
            "auth = \"socketio-handshake\"",
            "auth = \"socketio-handshake\"\nupstream_timeout = 3",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("gw.toml:20:1: route[0].upstream_timeout:"),
            "{err}"
        );
        assert!(err.contains("unknown field `upstream_timeout`"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_located() {
        let text = MINIMAL.replace("auth = \"socketio-handshake\"", "auth = \"cookie\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:19:8: route[0].auth: unknown variant `cookie`, expected one of `none`, `session`, `socketio-handshake`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_path() {
        let text = MINIMAL.replace(
            "store = { kind",
            "lookup_timeout_ms = \"1s\"\nstore = { kind",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "gw.toml:13:21: session.lookup_timeout_ms: invalid type: string \"1s\", expected u64"
        );
        let text = MINIMAL.replace("[\"127.0.0.1:3001\"]", "\"127.0.0.1:3001\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("gw.toml:18:13: route[0].upstreams: invalid type: string"),
            "{err}"
        );
        let text = MINIMAL.replace("kid = \"k1\"", "kid = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("gw.toml:6:7: assertion.keys[0].kid: invalid type: integer"),
            "{err}"
        );
        let text = MINIMAL.replace("\"redis\"", "\"memcached\"");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "gw.toml:13:18: session.store.kind: unknown variant `memcached`, expected `sqlite` or `redis`"
        );
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let text = MINIMAL.replace("127.0.0.1:3001", "nowhere");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:18:"), "{err}");
        assert!(
            err.contains("route[0].upstreams[0]") && err.contains("nowhere"),
            "{err}"
        );

        let text = MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"8080\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:3:10: listener[0].listen"), "{err}");
    }

    #[test]
    fn auth_route_needs_audience_and_session() {
        let text = MINIMAL.replace("audience = \"presence-service\"", "");
        assert!(parse(&text).unwrap_err().to_string().contains("audience"));
        let no_session = MINIMAL
            .split("[session]")
            .next()
            .unwrap()
            .to_string()
            + "[[route]]\nname = \"x\"\nupstreams = [\"127.0.0.1:1\"]\nauth = \"session\"\naudience = \"a\"\n";
        assert!(parse(&no_session)
            .unwrap_err()
            .to_string()
            .contains("[session]"));
    }

    #[test]
    fn routes_name_existing_session_sources() {
        let text = MINIMAL.replace(
            "audience = \"presence-service\"",
            "audience = \"presence-service\"\nsessions = [\"nope\"]",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("gw.toml:21:12: route[0].sessions[0]: no [sessions.nope] table"),
            "{err}"
        );
        let named = MINIMAL.replace("[session]", "[sessions.express]").replace(
            "audience = \"presence-service\"",
            "audience = \"presence-service\"\nsessions = [\"express\"]",
        );
        let c = parse(&named).unwrap();
        assert!(c.session.is_none() && c.sessions.contains_key("express"));
        let unnamed_route = MINIMAL.replace("[session]", "[sessions.express]");
        assert!(parse(&unnamed_route)
            .unwrap_err()
            .to_string()
            .contains("needs a [session]"));
    }

    #[test]
    fn secret_sources() {
        let base = std::env::temp_dir();
        let f = base.join(format!("gw-secret-{}", std::process::id()));
        std::fs::write(&f, "from-file\n").unwrap();
        let s = SecretSource {
            value: None,
            env: None,
            file: Some(f.clone()),
        };
        assert_eq!(s.read(&base).unwrap(), "from-file");
        std::fs::remove_file(f).unwrap();
        let s = SecretSource {
            value: None,
            env: Some("GW_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert!(s
            .read(&base)
            .unwrap_err()
            .contains("GW_TEST_SURELY_UNSET_VAR"));
        let s = SecretSource {
            value: Some("a".into()),
            env: Some("b".into()),
            file: None,
        };
        assert!(s.read(&base).is_err());
    }

    #[test]
    fn access_log_defaults_to_all_and_parses_skip_and_sample() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gateway.access_log.polling, PollingLog::All);
        let with = |line: &str| format!("[gateway]\n{line}\n{MINIMAL}");
        let c = parse(&with(r#"access_log = { polling = "skip" }"#)).unwrap();
        assert_eq!(c.gateway.access_log.polling, PollingLog::Skip);
        let c = parse(&with(
            r#"access_log = { polling = "sample", sample_every = 50 }"#,
        ))
        .unwrap();
        assert_eq!(c.gateway.access_log.polling, PollingLog::Sample);
        assert_eq!(c.gateway.access_log.sample_every, 50);
        let err = parse(&with(
            r#"access_log = { polling = "sample", sample_every = 0 }"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("gateway.access_log.sample_every"), "{err}");
        let err = parse(&with(r#"access_log = { polling = "some" }"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway.access_log.polling"), "{err}");
    }

    #[test]
    fn redis_url_from_a_secret_file() {
        let dir = std::env::temp_dir().join(format!("gw-cfg-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("redis_url");
        std::fs::write(&file, "redis://:s3cret@redis:6379\n").unwrap();
        let text = MINIMAL.replace(
            r#"url = "redis://127.0.0.1:6379""#,
            &format!("url = {{ file = {:?} }}", file.display().to_string()),
        );
        let c = parse(&text).unwrap();
        let Some(s) = c.sessions.values().next().or(c.session.as_ref()) else {
            panic!("no session section")
        };
        match s.store.get_ref() {
            StoreConfig::Redis { url, .. } => assert_eq!(url, "redis://:s3cret@redis:6379"),
            other => panic!("{other:?}"),
        }
        let missing = MINIMAL.replace(
            r#"url = "redis://127.0.0.1:6379""#,
            r#"url = { file = "/nonexistent/redis_url" }"#,
        );
        let err = parse(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/redis_url"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn error_columns_count_characters_not_bytes() {
        // Found by the config_parse fuzz target (fuzz/regressions/config_parse).
        let err = Config::parse("a = \"é\" b", "f.toml", ".".into()).unwrap_err();
        assert!(err.to_string().starts_with("f.toml:1:9:"), "{err}");
        assert_eq!(line_col("é\néé x", 7), (2, 3));
        // An offset inside a character is not a panic.
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
