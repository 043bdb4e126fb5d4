//! The demo service over real HTTP with a real SQLite file: what the browser and the gateway see.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use demo_service::{build_app, AppConfig, DISPLAY_NAME_KEY, SESSION_COOKIE};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_sessions::session::Id;
use tower_sessions::SessionStore;
use tower_sessions_sqlx_store::sqlx::SqlitePool;
use tower_sessions_sqlx_store::SqliteStore;

/// A temp directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "demo-service-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Served {
    base: String,
    db: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Starts the app on a free loopback port with its sessions in a fresh SQLite file.
async fn serve() -> Served {
    let dir = TempDir::new();
    let dist = dir.0.join("dist");
    std::fs::create_dir_all(dist.join("assets")).expect("dist dir");
    std::fs::write(dist.join("index.html"), "<div id=\"root\">demo spa</div>").expect("index");
    std::fs::write(dist.join("assets/app.js"), "console.log('app')").expect("asset");
    let db = dir.0.join("var/sessions.db");
    let config = AppConfig {
        sessions_db: db.clone(),
        web_dist: dist,
        secure_cookie: true,
        session_idle: time::Duration::days(1),
    };
    let app = build_app(&config).await.expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Served {
        base,
        db,
        client: Client::builder(TokioExecutor::new()).build_http(),
        server,
        _dir: dir,
    }
}

impl Served {
    async fn call(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = self
            .client
            .request(req.body(body).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let set_cookie = header("set-cookie");
        let content_type = header("content-type").unwrap_or_default();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            set_cookie,
            content_type,
            body,
        }
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        self.call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({ "username": username, "password": password })),
        )
        .await
    }

    /// Reads a session the way the gateway does: a second store on the same SQLite file.
    async fn stored_session(&self, cookie_value: &str) -> Option<HashMap<String, Value>> {
        let pool = SqlitePool::connect(&format!("sqlite://{}", self.db.display()))
            .await
            .expect("open db");
        let store = SqliteStore::new(pool);
        let id = Id::from_str(cookie_value).expect("cookie holds a session id");
        store
            .load(&id)
            .await
            .expect("load")
            .map(|record| record.data)
    }
}

/// `id=<value>` from a Set-Cookie header, and the header's attributes.
fn session_cookie(set_cookie: &str) -> (String, Vec<String>) {
    let mut parts = set_cookie.split(';').map(|p| p.trim().to_owned());
    let pair = parts.next().expect("cookie pair");
    let value = pair
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .expect("cookie named id")
        .to_owned();
    (value, parts.collect())
}

#[tokio::test]
async fn login_stores_user_and_display_name_where_the_gateway_reads_them() {
    let app = serve().await;
    let reply = app.login("alice", "alice-pass").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({ "user": { "id": "alice", "name": "Alice Archer" } })
    );

    let (value, attrs) = session_cookie(reply.set_cookie.as_deref().expect("sets a cookie"));
    // Unsigned tower-sessions cookie: base64url of the 16-byte id, no padding.
    assert_eq!(value.len(), 22, "cookie value {value}");
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(
            attrs.iter().any(|a| a == attr),
            "{attr} missing in {attrs:?}"
        );
    }

    let data = app
        .stored_session(&value)
        .await
        .expect("session row exists");
    assert_eq!(data["axum-login.data"]["user_id"], json!("alice"));
    assert_eq!(data[DISPLAY_NAME_KEY], json!("Alice Archer"));

    let me = app
        .call(
            Method::GET,
            "/api/auth/user",
            Some(&format!("id={value}")),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["user"]["id"], json!("alice"));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_without_a_session() {
    let app = serve().await;
    for (user, pass) in [("alice", "bob-pass"), ("mallory", "alice-pass")] {
        let reply = app.login(user, pass).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}/{pass}");
        assert_eq!(reply.set_cookie, None, "no session for a failed login");
    }
    let anon = app.call(Method::GET, "/api/auth/user", None, None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anon.json(), json!({ "user": null }));
}

#[tokio::test]
async fn logout_deletes_the_session_from_the_store() {
    let app = serve().await;
    let reply = app.login("bob", "bob-pass").await;
    let (value, _) = session_cookie(reply.set_cookie.as_deref().expect("cookie"));
    let cookie = format!("id={value}");
    assert!(app.stored_session(&value).await.is_some());

    let out = app
        .call(Method::POST, "/api/auth/logout", Some(&cookie), None)
        .await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.json(), json!({ "ok": true }));
    assert!(
        app.stored_session(&value).await.is_none(),
        "the gateway must no longer find the session"
    );

    let me = app
        .call(Method::GET, "/api/auth/user", Some(&cookie), None)
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn client_routes_get_the_spa_and_unknown_api_paths_get_json_404() {
    let app = serve().await;
    for path in ["/", "/login", "/dashboard"] {
        let page = app.call(Method::GET, path, None, None).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(page.content_type.starts_with("text/html"), "{path}");
        assert_eq!(&page.body[..], b"<div id=\"root\">demo spa</div>", "{path}");
    }
    let asset = app.call(Method::GET, "/assets/app.js", None, None).await;
    assert_eq!(&asset.body[..], b"console.log('app')");

    let missing = app.call(Method::GET, "/api/nope", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json(), json!({ "error": "not found" }));

    let health = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
}
