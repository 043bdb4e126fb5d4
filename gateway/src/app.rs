//! The one place where the gateway is assembled from its config: read this file to see the
//! whole runtime shape (listeners → proxy pipeline, admin listener, reloader). What the
//! pipeline reads from the config (routes, upstream pools with their health checks, session
//! sources, signer, certificates) is one reloadable value built in `live`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use identity_assertion::{AssertionSigner, SigningKey};
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use sha2::{Digest, Sha256};

use arc_swap::ArcSwap;

use crate::admin::AdminApp;
use crate::admission::{Admission, LookupSlots};
use crate::affinity::Affinity;
use crate::config::{Config, ConfigError, SessionFlavour, SessionSection, StoreConfig};
use crate::drain::{Drain, DrainSettings, LingeringSignals};
use crate::first_request::AnswerFirstRequests;
use crate::listening::ListenerProbes;
use crate::live::{CurrentCert, Live, LiveState, Reloader};
use crate::logout::LogoutNotifier;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::session::{self, SessionSource, Store};

/// Creates the development certificate and signing key the config asks for, if missing.
pub fn ensure_dev_files(cfg: &Config) -> Result<(), ConfigError> {
    for (i, l) in cfg.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let (cert, key) = (cfg.path(tls.cert.get_ref()), cfg.path(tls.key.get_ref()));
        if tls.generate_dev_cert && (!cert.exists() || !key.exists()) {
            let dir = cert.parent().unwrap_or(Path::new("."));
            crate::devcerts::make_tls(dir, &[]).map_err(|e| {
                cfg.source
                    .error_at(tls.cert.span(), &format!("listener[{i}].tls.cert"), e)
            })?;
            tracing::info!(dir = %dir.display(), "made a development CA and server certificate");
        }
    }
    for (i, k) in cfg.assertion.keys.iter().enumerate() {
        if let (true, Some(file)) = (k.generate_if_missing, &k.private_key.get_ref().file) {
            let path = cfg.path(file);
            if !path.exists() {
                crate::devcerts::make_signing_key(&path).map_err(|e| {
                    cfg.source.error_at(
                        k.private_key.span(),
                        &format!("assertion.keys[{i}].private_key"),
                        e,
                    )
                })?;
                tracing::info!(path = %path.display(), "made a development assertion signing key");
            }
        }
    }
    Ok(())
}

/// Loads signing keys and checks TLS files: everything `gateway check` can verify offline.
/// Also returns the listed keys' PEM text, in order: the default affinity keys derive from it.
pub fn load_signer(cfg: &Config) -> Result<(AssertionSigner, Vec<Vec<u8>>), ConfigError> {
    load_signer_with(cfg, false)
}

/// `gateway check`: like [`load_signer`], but files the config asks to generate on first run
/// may be missing (check writes nothing).
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    load_signer_with(cfg, true)?;
    // The affinity keys' sources (a missing variable or file) fail here as they would at start.
    Affinity::from_config(cfg, &[Vec::new()]).map(|_| ())
}

fn will_be_generated(cfg: &Config, file: Option<&std::path::PathBuf>, generate: bool) -> bool {
    generate && file.is_some_and(|f| !cfg.path(f).exists())
}

fn load_signer_with(
    cfg: &Config,
    checking: bool,
) -> Result<(AssertionSigner, Vec<Vec<u8>>), ConfigError> {
    let mut keys = Vec::new();
    let mut pems = Vec::new();
    for (i, k) in cfg.assertion.keys.iter().enumerate() {
        if checking
            && will_be_generated(
                cfg,
                k.private_key.get_ref().file.as_ref(),
                k.generate_if_missing,
            )
        {
            keys.push(SigningKey::generate(k.kid.clone()));
            continue;
        }
        let err = |e: String| {
            cfg.source.error_at(
                k.private_key.span(),
                &format!("assertion.keys[{i}].private_key"),
                e,
            )
        };
        let pem = k.private_key.get_ref().read(&cfg.base_dir).map_err(err)?;
        let key =
            SigningKey::from_pkcs8_pem(k.kid.clone(), &pem).map_err(|e| err(e.to_string()))?;
        pems.push(pem.into_bytes());
        keys.push(key);
    }
    let signer = AssertionSigner::new(cfg.gateway.id.clone(), cfg.assertion.ttl_secs, keys)
        .map_err(|e| {
            let span = cfg
                .assertion
                .keys
                .first()
                .map_or(0..0, |k| k.private_key.span());
            cfg.source.error_at(span, "assertion.keys", e)
        })?;
    for (i, l) in cfg.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let cert_missing =
            !cfg.path(tls.cert.get_ref()).exists() || !cfg.path(tls.key.get_ref()).exists();
        if checking && tls.generate_dev_cert && cert_missing {
            continue;
        }
        for (path, key) in [
            (&tls.cert, format!("listener[{i}].tls.cert")),
            (&tls.key, format!("listener[{i}].tls.key")),
        ] {
            let full = cfg.path(path.get_ref());
            let text = std::fs::read_to_string(&full).map_err(|e| {
                cfg.source
                    .error_at(path.span(), &key, format!("{}: {e}", full.display()))
            })?;
            if !text.contains("-----BEGIN") {
                return Err(cfg.source.error_at(
                    path.span(),
                    &key,
                    format!("{} is not PEM", full.display()),
                ));
            }
        }
        // The pair as a handshake will use it: a key that does not match is refused here.
        crate::live::load_cert(cfg, i, tls)?;
    }
    Ok((signer, pems))
}

/// Opens one session source's store on `rt`, the runtime that owns store connections for the
/// life of the process (Pingora gives each service its own runtime; clients must outlive them).
/// When `prev` has the same source built from the same settings and secrets, it
/// is kept (with its store connections) instead.
fn build_session(
    cfg: &Config,
    key: &str,
    s: &SessionSection,
    rt: &tokio::runtime::Runtime,
    prev: Option<&SessionSources>,
    lookup_slots: Arc<LookupSlots>,
) -> Result<(Arc<SessionSource>, Vec<u8>), ConfigError> {
    let timeout = Duration::from_millis(s.lookup_timeout_ms);
    let mut secrets = Vec::new();
    for sec in &s.secrets {
        let err = |e: String| {
            cfg.source
                .error_at(sec.span(), &format!("{key}.secrets"), e)
        };
        let value = sec.get_ref().read(&cfg.base_dir).map_err(err)?;
        secrets.push(match s.flavour {
            SessionFlavour::Express => value.into_bytes(),
            SessionFlavour::TowerSessions => {
                session::signing_key_from_master(&value).map_err(err)?
            }
        });
    }
    let fingerprint = session_fingerprint(s, &secrets);
    if let Some(same) = prev.and_then(|p| p.same(key, &fingerprint)) {
        return Ok((same, fingerprint));
    }
    let span = s.store.span();
    let store = match s.store.get_ref() {
        StoreConfig::Sqlite { path, table } => {
            let file = cfg.path(path);
            rt.block_on(Store::sqlite(&file, table, timeout))
                .map_err(|e| {
                    cfg.source
                        .error_at(span.clone(), &format!("{key}.store.path"), e)
                })?
        }
        StoreConfig::Redis { url, prefix } => {
            let _guard = rt.enter();
            let pool = Store::redis_pool(url, timeout).map_err(|e| {
                cfg.source
                    .error_at(span.clone(), &format!("{key}.store.url"), e)
            })?;
            match s.flavour {
                SessionFlavour::Express => {
                    Store::connect_redis(pool, prefix.clone().unwrap_or_else(|| "sess:".into()))
                }
                SessionFlavour::TowerSessions => Store::tower_redis(pool),
            }
        }
    };
    let source = Arc::new(SessionSource {
        name: key.to_string(),
        flavour: s.flavour,
        cookie_name: s
            .cookie
            .clone()
            .unwrap_or_else(|| session::default_cookie(s.flavour).into()),
        secrets,
        user_id_field: s
            .user_id_field
            .clone()
            .unwrap_or_else(|| session::default_user_field(s.flavour).into()),
        display_name_field: s.display_name_field.clone(),
        lookup_timeout: timeout,
        store,
        rt: rt.handle().clone(),
        lookup_slots,
    });
    Ok((source, fingerprint))
}

/// Everything a session source is built from (not where in the file it is written).
fn session_fingerprint(s: &SessionSection, secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut h = Sha256::new_with_prefix(format!(
        "{:?}\0{:?}\0{:?}\0{:?}\0{}\0{:?}\0",
        s.flavour,
        s.cookie,
        s.user_id_field,
        s.display_name_field,
        s.lookup_timeout_ms,
        s.store.get_ref()
    ));
    for secret in secrets {
        h.update((secret.len() as u64).to_le_bytes());
        h.update(secret);
    }
    h.finalize().to_vec()
}

/// Every configured session source: the default `[session]` and the named `[sessions.*]`.
pub struct SessionSources {
    default: Option<Arc<SessionSource>>,
    named: std::collections::BTreeMap<String, Arc<SessionSource>>,
    /// By config key (`session`, `sessions.<name>`): what each source was built from.
    fingerprints: std::collections::BTreeMap<String, Vec<u8>>,
}

impl SessionSources {
    pub fn build(
        cfg: &Config,
        rt: &tokio::runtime::Runtime,
        prev: Option<&SessionSources>,
        slots: &Arc<LookupSlots>,
    ) -> Result<Self, ConfigError> {
        let mut fingerprints = std::collections::BTreeMap::new();
        let default = match &cfg.session {
            Some(s) => {
                let (source, fp) = build_session(cfg, "session", s, rt, prev, slots.clone())?;
                fingerprints.insert("session".to_string(), fp);
                Some(source)
            }
            None => None,
        };
        let mut named = std::collections::BTreeMap::new();
        for (name, s) in &cfg.sessions {
            let key = format!("sessions.{name}");
            let (source, fp) = build_session(cfg, &key, s, rt, prev, slots.clone())?;
            fingerprints.insert(key, fp);
            named.insert(name.clone(), source);
        }
        Ok(Self {
            default,
            named,
            fingerprints,
        })
    }

    /// The source at config key `key`, if it was built from `fingerprint`.
    fn same(&self, key: &str, fingerprint: &[u8]) -> Option<Arc<SessionSource>> {
        if self.fingerprints.get(key).map(Vec::as_slice) != Some(fingerprint) {
            return None;
        }
        match key.strip_prefix("sessions.") {
            Some(name) => self.named.get(name).cloned(),
            None => self.default.clone(),
        }
    }

    /// What a route authenticates with: its named sources in order, else the default.
    pub fn for_route(&self, names: &[String]) -> Vec<Arc<SessionSource>> {
        if names.is_empty() {
            return self.default.iter().cloned().collect();
        }
        names
            .iter()
            .filter_map(|n| self.named.get(n).cloned())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<SessionSource>> {
        self.default
            .iter()
            .chain(self.named.values())
            .cloned()
            .collect()
    }
}

/// TLS sessions a listener remembers for resumption by session id (TLS 1.2 clients); TLS 1.3
/// clients resume from stateless tickets, which need no room here. A reconnect storm is
/// thousands of clients coming back at once, far more than rustls' default cache holds.
const TLS_SESSION_CACHE: usize = 16 * 1024;

/// Session resumption on a TLS listener: a client that comes back (a reconnect after a network
/// blip, a presence node restart) skips the full handshake's key exchange and certificate
/// signature. Tickets are encrypted with keys this process makes and rotates; after a restart
/// or a binary upgrade the new process cannot read the old one's, and those clients make one
/// full handshake.
fn resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSION_CACHE);
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Resumption still works from the session cache; nothing else depends on tickets.
        Err(e) => tracing::warn!(error = %e, "TLS session tickets unavailable"),
    }
}

/// The Pingora server with every service, and the signals it stops on.
pub struct GatewayServer {
    server: Server,
    signals: LingeringSignals,
}

impl GatewayServer {
    /// Serves until a shutdown signal (see `drain`), then exits the process.
    pub fn run_forever(self) -> ! {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(self.signals),
        });
        std::process::exit(0)
    }
}

/// Builds the Pingora server with every service; `run_forever` then serves until SIGTERM.
/// `path` is the config file, re-read on `SIGHUP` and `POST /reload` (see `live`).
pub fn build(cfg: Config, path: std::path::PathBuf) -> Result<GatewayServer, ConfigError> {
    build_with(cfg, path, false)
}

/// Like [`build`]; with `upgrade`, the listening sockets are taken over from the running
/// process through `[gateway] upgrade_sock` (it is sent SIGQUIT next, see docs/operations.md).
pub fn build_with(
    cfg: Config,
    path: std::path::PathBuf,
    upgrade: bool,
) -> Result<GatewayServer, ConfigError> {
    ensure_dev_files(&cfg)?;

    // Leaked on purpose: store clients, health checks, reloads and notifications live as long
    // as the process.
    let aux_rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gateway-aux")
            .enable_all()
            .build()
            .map_err(|e| ConfigError(format!("cannot start runtime: {e}")))?,
    ));
    let metrics = Arc::new(Metrics::new());
    // Admission state (rate estimators, lookup slots, tunnels per user) belongs to the process,
    // not to one loaded config: it is built once here and outlives every reload.
    let route_limits: Vec<(String, u32)> = cfg
        .routes
        .iter()
        .map(|r| (r.name.get_ref().clone(), r.max_handshakes_per_sec))
        .collect();
    let admission = Arc::new(Admission::new(
        &cfg.admission,
        &route_limits,
        metrics.clone(),
    ));
    let running_tls: Vec<bool> = cfg.listeners.iter().map(|l| l.tls.is_some()).collect();
    let live: LiveState = Arc::new(ArcSwap::from_pointee(Live::build(
        &cfg,
        None,
        &running_tls,
        aux_rt,
        &admission.lookup_slots(),
    )?));
    let reloader = Arc::new(Reloader::new(
        path,
        &cfg,
        live.clone(),
        metrics.clone(),
        aux_rt,
        admission.lookup_slots(),
    ));
    crate::live::reload_on_sighup(reloader.clone())
        .map_err(|e| ConfigError(format!("cannot install the SIGHUP handler: {e}")))?;

    let drain_settings = DrainSettings {
        hold: Duration::from_secs(cfg.gateway.shutdown_grace_secs),
        window: Duration::from_secs(cfg.gateway.drain_secs),
        max_per_sec: cfg.gateway.drain_max_per_sec,
        finish: Duration::from_secs(cfg.gateway.shutdown_timeout_secs),
    };
    let drain = Drain::new(
        drain_settings,
        metrics.drain_closed.clone(),
        metrics.draining.clone(),
    );
    let conf = ServerConf {
        threads: cfg.gateway.threads.max(1),
        // Pingora's grace period is the drain's hard deadline; the drain exits sooner once
        // nothing is left (`drain`).
        grace_period_seconds: Some(drain_settings.deadline().as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.gateway.shutdown_timeout_secs),
        upgrade_sock: cfg.path(&cfg.gateway.upgrade_sock).display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    aux_rt.spawn(drain.clone().follow(server.watch_execution_phase()));

    let listeners = ListenerProbes::new(cfg.listeners.iter().map(|l| l.listen.get_ref().as_str()));
    let notifier = Arc::new(LogoutNotifier::new(aux_rt.handle().clone()));
    for (i, l) in cfg.listeners.iter().enumerate() {
        let gateway = Gateway {
            live: live.clone(),
            metrics: metrics.clone(),
            notifier: notifier.clone(),
            tls: l.tls.is_some(),
            admission: admission.clone(),
            drain: drain.clone(),
            connector: pingora::connectors::TransportConnector::new(None),
        };
        let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
        let mut svc = Service::new(
            format!("listener {i} {}", l.listen.get_ref()),
            AnswerFirstRequests::new(proxy, drain.clone()),
        );
        let buffers = L4BufferSettings::new(l.read_buffer_bytes, l.write_buffer());
        let endpoint = ListenerConfig::tcp(l.listen.get_ref().clone()).l4_buffer(buffers);
        match &l.tls {
            None => svc.add_listener(endpoint),
            Some(tls) => {
                let cert = cfg.path(tls.cert.get_ref()).display().to_string();
                let key = cfg.path(tls.key.get_ref()).display().to_string();
                let mut settings = TlsSettings::intermediate(&cert, &key).map_err(|e| {
                    cfg.source
                        .error_at(tls.cert.span(), &format!("listener[{i}].tls"), e)
                })?;
                // Each handshake presents the current config's certificate (reloadable).
                settings.set_cert_resolver(Arc::new(CurrentCert {
                    live: live.clone(),
                    listener: i,
                }));
                settings.set_server_config_hook(Box::new(resumption));
                if l.http2 {
                    settings.enable_h2();
                }
                svc.add_listener(endpoint.tls(settings));
                svc.endpoints()
                    .set_pre_tls_callback(Arc::new(PlainHttpOnTlsPort {
                        drain: drain.clone(),
                    }));
            }
        }
        server.add_service(svc);
    }

    let mut admin = Service::new(
        "admin".to_string(),
        HttpServer::new_app(AdminApp {
            live,
            metrics,
            reloader,
            listeners,
            drain: drain.clone(),
        }),
    );
    admin.add_tcp(cfg.admin.listen.get_ref());
    server.add_service(admin);
    server.bootstrap();
    let signals = LingeringSignals::new(
        drain,
        Duration::from_millis(cfg.gateway.keepalive_linger_ms),
    );
    Ok(GatewayServer { server, signals })
}

/// Answers plain HTTP sent to a TLS listener (`http://localhost:8443`) with a readable 400
/// naming the https:// URL, instead of a TLS alert the browser shows as garbage or "connection
/// reset". Runs before Pingora's TLS handshake: it peeks at the first byte, and a TLS
/// ClientHello (a handshake record, 0x16) goes on to the handshake untouched.
/// It also tells the drain when a ClientHello arrives (`first_request`).
struct PlainHttpOnTlsPort {
    drain: Arc<Drain>,
}

/// How long a new connection may take to send its first byte (a ClientHello, or a plain-HTTP
/// request line).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plain-HTTP client may take to send its request head, and how much of it is read.
const PLAIN_HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const PLAIN_HTTP_HEAD_MAX: usize = 8192;

/// Marks Pingora's "Downstream handshake error" line for a connection answered here, so the
/// log filter (main.rs) can drop it: the info line below already tells the story.
pub const PLAIN_HTTP_REFUSED: &str = "plain HTTP on a TLS listener, answered 400";

/// Marks Pingora's "Downstream handshake error" line for a connection closed before it sent a
/// byte: a load balancer's TCP health check or the readiness probe (`listening`), not a client
/// failing TLS; the log filter (main.rs) drops it.
pub const CLOSED_BEFORE_ANY_BYTE: &str = "closed before sending a byte";

#[async_trait::async_trait]
impl pingora::listeners::PreTlsProcess for PlainHttpOnTlsPort {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        use pingora::protocols::GetSocketDigest;
        use pingora::{Error, ErrorType};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut first = [0u8; 1];
        // A client that connects and sends nothing is not kept waiting for ever.
        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.read_exact(&mut first)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::ConnectionClosed,
                    CLOSED_BEFORE_ANY_BYTE,
                    e,
                ))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "no TLS ClientHello within the handshake timeout",
                ))
            }
        }
        // HTTP methods are upper-case tokens; anything else (a ClientHello is 0x16) is for TLS.
        if !first[0].is_ascii_uppercase() {
            stream.rewind(&first);
            self.drain.tls_hello_seen();
            return Ok(());
        }
        let mut head = first.to_vec();
        let mut buf = [0u8; 1024];
        let read_head = async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < PLAIN_HTTP_HEAD_MAX {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        };
        // A slow or partial head still gets the answer; only the URL in it may be vaguer.
        let _ = tokio::time::timeout(PLAIN_HTTP_HEAD_TIMEOUT, read_head).await;
        let url = https_url(
            &head,
            stream
                .get_socket_digest()
                .and_then(|d| d.local_addr().cloned()),
        );
        let body = format!("This port speaks HTTPS, not plain HTTP: use {url}\n");
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        tracing::info!(%peer, %url, "plain HTTP request on a TLS listener: answered 400");
        // The client may already be gone; there is nothing more to do for it either way.
        if stream.write_all(resp.as_bytes()).await.is_ok() {
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        }
        Err(Error::explain(
            ErrorType::HandshakeError,
            PLAIN_HTTP_REFUSED,
        ))
    }
}

/// `https://<Host><path>` from a plain-HTTP request head. The Host header is the client's own
/// (this page is only shown to the client who sent it), but only URL-safe characters are
/// echoed; without a usable Host the listener's own address stands in.
fn https_url(head: &[u8], local: Option<pingora::protocols::l4::socket::SocketAddr>) -> String {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with('/'))
        .unwrap_or("/");
    let host = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("host").then(|| v.trim())
        })
        .map(str::to_string)
        .or_else(|| local.and_then(|a| a.as_inet().map(|a| a.to_string())))
        .unwrap_or_else(|| "localhost".into());
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 2048
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"<>\"'`\\".contains(&b))
    };
    let host = if safe(&host) {
        host
    } else {
        "localhost".into()
    };
    let target = if safe(target) { target } else { "/" };
    format!("https://{host}{target}")
}

#[cfg(test)]
mod tests {
    use super::https_url;

    #[test]
    fn plain_http_answer_names_the_https_url() {
        let head = b"GET /socket.io/?EIO=4 HTTP/1.1\r\nhost: localhost:8443\r\n\r\n";
        assert_eq!(
            https_url(head, None),
            "https://localhost:8443/socket.io/?EIO=4"
        );
        let head = b"GET /<script> HTTP/1.1\r\nHost: a\"b\r\n\r\n";
        assert_eq!(https_url(head, None), "https://localhost/");
        assert_eq!(https_url(b"GET", None), "https://localhost/");
    }
}
