//! The reloadable state: everything the request pipeline reads from the config, as one value.
//!
//! A request loads the current [`Live`] once, when it starts (`Gateway::new_ctx`), and reads
//! only that value in every phase, so it finishes on the config it started with however many
//! reloads happen meanwhile. A reload (`SIGHUP`, or `POST /reload` on the admin listener)
//! builds a complete new `Live` from the file, off the request path, and swaps it in with one
//! atomic store: requests that start afterwards see all of the new config, none see half.
//! A file that does not validate (the same checks and `file:line:col: key` errors as
//! `gateway check`) changes nothing.
//!
//! What can change without a restart: routes, upstreams (with their health checks), session
//! sources and stores, assertion keys (and the JWKS), allowed origins, trusted proxies, logout
//! settings, the access-log policy, the upgraded-connection idle timeout, and TLS certificates
//! and keys (the listeners' certificate resolver reads the current `Live`). Listener addresses,
//! their TLS on/off and HTTP/2, buffer sizes, thread count, the admin address and the shutdown
//! timings, and the admission limits (`[admission]`, a route's `max_handshakes_per_sec`: their
//! counters belong to the process) are fixed when the process starts; a reload names the ones
//! that differ.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use identity_assertion::{AssertionSigner, JwkSet};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use sha2::{Digest, Sha256};

use crate::admission::LookupSlots;
use crate::affinity::Affinity;
use crate::app::SessionSources;
use crate::config::{Config, ConfigError, TlsConfig};
use crate::forwarding::{parse_cidr, Cidr};
use crate::metrics::Metrics;
use crate::proxy::AccessLog;
use crate::routing::{LogoutRoute, Route, RouteTable};
use crate::upstream::{balancer, UpstreamPool};

/// One loaded config, as the request pipeline and the admin listener read it.
pub struct Live {
    pub routes: RouteTable,
    pub signer: Arc<AssertionSigner>,
    /// Every configured key, signing key first: a key rotated out of signing stays published
    /// for as long as the config lists it, so assertions it signed still verify.
    pub jwks: JwkSet,
    pub sessions: SessionSources,
    pub trusted_proxies: Vec<Cidr>,
    pub upgraded_idle: Duration,
    /// How long an upstream may take to answer a WebSocket handshake.
    pub upstream_handshake: Duration,
    /// How long a request that is not upgraded waits for each read from its upstream.
    pub upstream_read: Duration,
    pub access_log: AccessLog,
    /// The certificate each listener presents, by listener index (`None`: plain HTTP).
    pub certs: Vec<Option<Arc<CertifiedKey>>>,
    /// The Engine.IO affinity cookie's name and keys (rotated by a reload).
    pub affinity: Affinity,
    /// Hex SHA-256 of the config file's text (shown in metrics and the reload result).
    pub hash: String,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").field("hash", &self.hash).finish()
    }
}

/// The shared handle every listener, the admin listener and the reloader hold.
pub type LiveState = Arc<ArcSwap<Live>>;

impl Live {
    /// Builds everything from `cfg`, reusing what `prev` already runs where the config for it
    /// did not change: a route's upstream pool (health state, Engine.IO `sid` stickiness) and
    /// session sources (their store connections). `running_tls` says which listeners the
    /// process serves TLS on (fixed at start).
    ///
    /// Blocking (it opens stores and resolves upstreams on `rt`): call it from a plain thread.
    pub fn build(
        cfg: &Config,
        prev: Option<&Live>,
        running_tls: &[bool],
        rt: &'static tokio::runtime::Runtime,
        lookup_slots: &Arc<LookupSlots>,
    ) -> Result<Self, ConfigError> {
        let (signer, signing_pems) = crate::app::load_signer(cfg)?;
        let certs = load_certs(cfg, prev, running_tls)?;
        let sessions = SessionSources::build(cfg, rt, prev.map(|p| &p.sessions), lookup_slots)?;
        let mut routes = Vec::new();
        for r in &cfg.routes {
            let name = r.name.get_ref();
            let upstreams = r.upstreams.get_ref();
            let check_every = Duration::from_secs(r.health_check_interval_secs.max(1));
            let same = prev.and_then(|p| {
                p.routes
                    .iter()
                    .find(|old| &old.name == name && old.pool.serves(upstreams, check_every))
            });
            let pool = match same {
                Some(old) => old.pool.clone(),
                None => {
                    let lb = balancer(upstreams, check_every);
                    // Resolve once now so the first requests have upstreams; the pool's
                    // background task then re-resolves and health-checks on its schedule.
                    if let Err(e) = rt.block_on(lb.update()) {
                        tracing::warn!(route = %name, error = %e, "upstreams do not resolve yet");
                    }
                    Arc::new(UpstreamPool::checked(
                        name.clone(),
                        lb,
                        upstreams,
                        check_every,
                        rt.handle(),
                    ))
                }
            };
            routes.push(Route {
                name: name.clone(),
                path_prefix: r.path_prefix.get_ref().clone(),
                host: r.host.clone(),
                auth: *r.auth.get_ref(),
                audience: r.audience.clone(),
                assertion_header: r.assertion_header.to_ascii_lowercase(),
                allowed_origins: r.allowed_origins.clone(),
                pool,
                sessions: sessions.for_route(r.sessions.get_ref()),
                logout: r.logout.as_ref().map(|l| LogoutRoute {
                    path: l.path.clone(),
                    notify: l.notify.iter().map(|n| n.get_ref().clone()).collect(),
                    audience: l.audience.clone(),
                    header: l.header.to_ascii_lowercase(),
                }),
            });
        }
        Ok(Self {
            routes: RouteTable::new(routes),
            jwks: signer.jwks(),
            signer: Arc::new(signer),
            sessions,
            // Validated by `Config::parse`: every entry parses.
            trusted_proxies: cfg
                .gateway
                .trusted_proxies
                .iter()
                .filter_map(|p| parse_cidr(p.get_ref()).ok())
                .collect(),
            upgraded_idle: Duration::from_secs(cfg.gateway.upgraded_idle_timeout_secs),
            upstream_handshake: Duration::from_millis(
                cfg.gateway.upstream_handshake_timeout_ms.get(),
            ),
            upstream_read: Duration::from_secs(cfg.gateway.upstream_read_timeout_secs.get()),
            access_log: AccessLog::new(&cfg.gateway.access_log),
            certs,
            affinity: Affinity::from_config(cfg, &signing_pems)?,
            hash: config_hash(&cfg.source.text),
        })
    }
}

pub fn config_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Each running TLS listener's certificate from the new file. A listener the new file no
/// longer has (or has without TLS) keeps presenting its current certificate: that change
/// needs a restart, and is reported as such.
fn load_certs(
    cfg: &Config,
    prev: Option<&Live>,
    running_tls: &[bool],
) -> Result<Vec<Option<Arc<CertifiedKey>>>, ConfigError> {
    let mut certs = Vec::new();
    for (i, tls) in running_tls.iter().enumerate() {
        if !tls {
            certs.push(None);
            continue;
        }
        let cert = match cfg.listeners.get(i).and_then(|l| l.tls.as_ref()) {
            Some(t) => Some(load_cert(cfg, i, t)?),
            None => prev.and_then(|p| p.certs.get(i).cloned().flatten()),
        };
        certs.push(cert);
    }
    Ok(certs)
}

/// A listener's certificate chain and key, checked to belong together.
pub fn load_cert(
    cfg: &Config,
    i: usize,
    tls: &TlsConfig,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let err = |e: String| {
        cfg.source
            .error_at(tls.cert.span(), &format!("listener[{i}].tls"), e)
    };
    let (cert, key) = (cfg.path(tls.cert.get_ref()), cfg.path(tls.key.get_ref()));
    let loaded = pingora::tls::load_certs_and_key_files(
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .map_err(|e| err(e.to_string()))?;
    let Some((chain, key_der)) = loaded else {
        return Err(err(format!(
            "no certificate in {} or no private key in {}",
            cert.display(),
            key.display()
        )));
    };
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| err("no TLS crypto provider".into()))?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        let why = match e {
            pingora::tls::RusTlsError::InconsistentKeys(_) => {
                "the key does not belong to the certificate".to_string()
            }
            other => other.to_string(),
        };
        err(format!("{} with {}: {why}", cert.display(), key.display()))
    })?;
    Ok(Arc::new(certified))
}

/// A TLS listener's certificate resolver: every handshake presents the certificate of the
/// config current at that moment, so a reload changes it for the next handshake.
#[derive(Debug)]
pub struct CurrentCert {
    pub live: LiveState,
    pub listener: usize,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.live.load().certs.get(self.listener).cloned().flatten()
    }
}

/// The settings a process keeps from its start, named as in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedAtStart(Vec<(String, String)>);

impl FixedAtStart {
    pub fn of(cfg: &Config) -> Self {
        let g = &cfg.gateway;
        let mut v = vec![
            ("gateway.threads".to_string(), g.threads.to_string()),
            (
                "gateway.shutdown_grace_secs".into(),
                g.shutdown_grace_secs.to_string(),
            ),
            (
                "gateway.keepalive_linger_ms".into(),
                g.keepalive_linger_ms.to_string(),
            ),
            (
                "gateway.shutdown_timeout_secs".into(),
                g.shutdown_timeout_secs.to_string(),
            ),
            ("gateway.drain_secs".into(), g.drain_secs.to_string()),
            (
                "gateway.drain_max_per_sec".into(),
                g.drain_max_per_sec.to_string(),
            ),
            (
                "gateway.upgrade_sock".into(),
                g.upgrade_sock.display().to_string(),
            ),
            ("admin.listen".into(), cfg.admin.listen.get_ref().clone()),
            (
                "listener".into(),
                format!("{} listeners", cfg.listeners.len()),
            ),
        ];
        // Admission state (rate estimators, lookup slots, tunnel counts) is the process's,
        // built once at start with these limits.
        v.push(("admission".into(), format!("{:?}", cfg.admission)));
        for r in cfg.routes.iter().filter(|r| r.max_handshakes_per_sec > 0) {
            v.push((
                format!("route[{}].max_handshakes_per_sec", r.name.get_ref()),
                r.max_handshakes_per_sec.to_string(),
            ));
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let k = |s: &str| format!("listener[{i}].{s}");
            v.push((k("listen"), l.listen.get_ref().clone()));
            v.push((k("tls"), if l.tls.is_some() { "on" } else { "off" }.into()));
            v.push((k("http2"), l.http2.to_string()));
            v.push((k("read_buffer_bytes"), l.read_buffer_bytes.to_string()));
            v.push((
                k("write_buffer_bytes"),
                format!("{:?}", l.write_buffer_bytes),
            ));
        }
        Self(v)
    }

    /// Keys whose value in `new` differs from the running one.
    pub fn changed(&self, new: &FixedAtStart) -> Vec<String> {
        let mut out: Vec<String> = new
            .0
            .iter()
            .filter(|kv| !self.0.contains(kv))
            .map(|(k, _)| k.clone())
            .collect();
        // A listener the new file dropped is a change too.
        out.extend(
            self.0
                .iter()
                .filter(|(k, _)| !new.0.iter().any(|(nk, _)| nk == k))
                .map(|(k, _)| k.clone()),
        );
        out.sort();
        out.dedup();
        out
    }
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub hash: String,
    pub routes: usize,
    /// Settings that differ from the running process and wait for a restart.
    pub needs_restart: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reloaded: config {} ({} routes)", self.hash, self.routes)?;
        if !self.needs_restart.is_empty() {
            writeln!(
                f,
                "not applied, needs a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Re-reads the config file the process was started with and swaps it in.
pub struct Reloader {
    pub path: PathBuf,
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    started_with: FixedAtStart,
    running_tls: Vec<bool>,
    rt: &'static tokio::runtime::Runtime,
    /// The process's session-lookup slots, shared by the sources of every loaded config.
    lookup_slots: Arc<LookupSlots>,
    /// One reload at a time: two at once would both build from the same previous state.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        cfg: &Config,
        live: LiveState,
        metrics: Arc<Metrics>,
        rt: &'static tokio::runtime::Runtime,
        lookup_slots: Arc<LookupSlots>,
    ) -> Self {
        let running_tls = cfg.listeners.iter().map(|l| l.tls.is_some()).collect();
        let this = Self {
            path,
            started_with: FixedAtStart::of(cfg),
            running_tls,
            live,
            metrics,
            rt,
            lookup_slots,
            busy: Mutex::new(()),
        };
        this.metrics.config_loaded(&this.live.load().hash);
        this
    }

    pub fn running_tls(&self) -> &[bool] {
        &self.running_tls
    }

    /// Validates and applies the file, logging and counting the result once. Blocking.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        match &result {
            Ok(r) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_loaded(&r.hash);
                if r.needs_restart.is_empty() {
                    tracing::info!(config = %self.path.display(), hash = %r.hash, routes = r.routes, "config reloaded");
                } else {
                    tracing::warn!(
                        config = %self.path.display(),
                        hash = %r.hash,
                        routes = r.routes,
                        needs_restart = %r.needs_restart.join(", "),
                        "config reloaded; these settings keep their running values until a restart"
                    );
                }
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(config = %self.path.display(), error = %e, "config reload refused; the running config stays");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ConfigError> {
        let cfg = Config::load(&self.path)?;
        let prev = self.live.load_full();
        let next = Live::build(
            &cfg,
            Some(&prev),
            &self.running_tls,
            self.rt,
            &self.lookup_slots,
        )?;
        let report = ReloadReport {
            hash: next.hash.clone(),
            routes: cfg.routes.len(),
            needs_restart: self.started_with.changed(&FixedAtStart::of(&cfg)),
        };
        self.live.store(Arc::new(next));
        Ok(report)
    }

    /// [`Reloader::reload`] on a thread of its own (it blocks on store connections and DNS),
    /// awaited from async code: the SIGHUP handler and the admin listener.
    pub async fn reload_off_thread(self: &Arc<Self>) -> Result<ReloadReport, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        std::thread::Builder::new()
            .name("gateway-reload".into())
            .spawn(move || {
                let _ = tx.send(this.reload().map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("cannot start the reload thread: {e}"))?;
        rx.await
            .map_err(|_| "the reload thread ended without a result".to_string())?
    }
}

/// Reloads on every `SIGHUP`. The handler is installed before this returns, so a `SIGHUP`
/// sent right after start is a reload, not the default action (exit).
pub fn reload_on_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = reloader.rt;
    let mut hup = {
        let _entered = rt.enter();
        signal(SignalKind::hangup())?
    };
    rt.spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %reloader.path.display(), "SIGHUP: reloading the config");
            // Logged and counted inside.
            let _ = reloader.reload_off_thread().await;
        }
    });
    Ok(())
}

/// When the current config was loaded (for the metrics gauge).
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra_listener: &str) -> Config {
        let text = format!(
            r#"
[[listener]]
listen = "127.0.0.1:8080"
{extra_listener}
[[assertion.keys]]
kid = "k1"
private_key = {{ value = "pem" }}

[[route]]
name = "r"
upstreams = ["127.0.0.1:3001"]
"#
        );
        Config::parse(&text, "gw.toml", PathBuf::from(".")).unwrap()
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = FixedAtStart::of(&cfg(""));
        assert!(a.changed(&FixedAtStart::of(&cfg(""))).is_empty());
        let b = FixedAtStart::of(&cfg("http2 = true"));
        assert_eq!(a.changed(&b), ["listener[0].http2"]);
        let c = FixedAtStart::of(&cfg("[[listener]]\nlisten = \"127.0.0.1:8081\""));
        let changed = a.changed(&c);
        assert!(changed.contains(&"listener".to_string()), "{changed:?}");
        assert!(
            changed.contains(&"listener[1].listen".to_string()),
            "{changed:?}"
        );
        // Dropping a listener is named the same way.
        assert!(c.changed(&a).contains(&"listener[1].listen".to_string()));
    }

    #[test]
    fn hash_is_hex_sha256() {
        let h = config_hash("");
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("e3b0c442"));
    }
}
