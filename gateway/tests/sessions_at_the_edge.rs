//! A Socket.IO handshake is authenticated at the edge from a real session store; everything
//! else passes through untouched. Each test starts the real gateway binary in front of
//! recording upstreams.

mod common;

use std::time::Duration;

use common::*;

const ALICE_TTL: time::Duration = time::Duration::hours(1);

fn tower_sqlite_config(
    db: &std::path::Path,
    sio: &Upstream,
    app: &Upstream,
    extra: &str,
) -> String {
    format!(
        r#"
[session]
flavour = "tower-sessions"
display_name_field = "display_name"
store = {{ kind = "sqlite", path = "{db}" }}
{extra}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{sio}"]
auth = "socketio-handshake"
audience = "presence-service"
allowed_origins = ["https://app.example"]

[[route]]
name = "app"
path_prefix = "/"
upstreams = ["{app}"]
"#,
        db = db.display(),
        sio = sio.addr,
        app = app.addr
    )
}

/// The Socket.IO route most tests use: handshakes authenticated, assertions for the presence
/// service.
fn presence_route(sio: &Upstream) -> String {
    format!(
        "[[route]]\nname = \"presence\"\npath_prefix = \"/socket.io/\"\nupstreams = [\"{}\"]\nauth = \"socketio-handshake\"\naudience = \"presence-service\"\n",
        sio.addr
    )
}

const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling&t=abc";

#[tokio::test]
async fn valid_handshake_is_forwarded_with_a_verifiable_assertion() {
    let (sio, app) = (Upstream::start("sio").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let id = tower_session_sqlite(&db, "alice", Some("Alice"), ALICE_TTL).await;
    let gw = Gateway::start(&tower_sqlite_config(&db, &sio, &app, "")).await;
    gw.wait_ready().await;

    let cookie = format!("other=1; id={id}");
    let (status, hdrs, body) = get(
        &gw.url(HANDSHAKE),
        &[("cookie", &cookie), ("x-request-id", "rid-42")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{\"sid\":\"sio-"), "{body}");
    assert_eq!(header(&hdrs, "x-request-id"), Some("rid-42"));

    let seen = sio.requests();
    assert_eq!(seen.len(), 1);
    let token = seen[0]
        .header("x-identity-assertion")
        .expect("assertion forwarded");
    let claims = gw
        .verify(token, "presence-service")
        .await
        .expect("assertion verifies with the JWKS");
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_deref()),
        ("alice", Some("Alice"))
    );
    assert_eq!(claims.iss, "edge-gateway");
    assert!(claims.exp - claims.iat <= 60);
    assert!(
        !claims.sid.is_empty() && claims.sid != id,
        "sid claim must not be the session id"
    );
    assert_eq!(seen[0].header("x-request-id"), Some("rid-42"));
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        gw.metric("gateway_handshakes_total{result=\"ok\",route=\"presence\"}")
            .await,
        1.0
    );
    assert!(gw.log_text().contains("rid-42"), "request id is logged");
    // The same session gives the same opaque handle on every handshake.
    get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
        .await
        .unwrap();
    let token2 = sio.requests()[1]
        .header("x-identity-assertion")
        .unwrap()
        .to_string();
    assert_eq!(
        gw.verify(&token2, "presence-service").await.unwrap().sid,
        claims.sid
    );
}

#[tokio::test]
async fn requests_of_an_established_session_pass_without_lookup_or_assertion() {
    let (sio, app) = (Upstream::start("sio").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let gw = Gateway::start(&tower_sqlite_config(&db, &sio, &app, "")).await;
    gw.wait_ready().await;

    for (method, path) in [
        ("GET", "/socket.io/?EIO=4&transport=polling&sid=abc"),
        ("POST", "/socket.io/?EIO=4&transport=polling&sid=abc"),
        ("GET", "/api/auth/user"),
        ("POST", "/api/auth/login"),
    ] {
        let (status, _, _) = request(method, &gw.url(path), &[("cookie", "id=garbage")])
            .await
            .unwrap();
        assert_eq!(status, 200, "{method} {path}");
    }
    assert_eq!(sio.count() + app.count(), 4);
    for r in sio.requests().iter().chain(app.requests().iter()) {
        assert!(r.header("x-identity-assertion").is_none(), "{r:?}");
    }
    assert_eq!(
        gw.metric("gateway_session_lookup_seconds_count").await,
        0.0,
        "no store lookups"
    );
}

#[tokio::test]
async fn forged_unsigned_expired_unknown_and_missing_sessions_get_401_without_reaching_upstream() {
    let (sio, app) = (Upstream::start("sio").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let master = [9u8; 64];
    let alice = tower_session_sqlite(&db, "alice", None, ALICE_TTL).await;
    let expired = tower_session_sqlite(&db, "bob", None, time::Duration::seconds(-5)).await;
    let no_user = {
        // A session that exists but is not logged in (no axum-login data).
        use tower_sessions::session_store::SessionStore;
        let pool = tower_sessions_sqlx_store::sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            db.display()
        ))
        .await
        .unwrap();
        let store = tower_sessions_sqlx_store::SqliteStore::new(pool);
        let mut r = tower_sessions::session::Record {
            id: Default::default(),
            data: Default::default(),
            expiry_date: time::OffsetDateTime::now_utc() + ALICE_TTL,
        };
        store.create(&mut r).await.unwrap();
        r.id.to_string()
    };
    let secret = format!(
        "secrets = [{{ value = \"{}\" }}]",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, master)
    );
    let gw = Gateway::start(&tower_sqlite_config(&db, &sio, &app, &secret)).await;
    gw.wait_ready().await;

    let signed = |v: &str| format!("id={}", sign_tower_cookie(v, &master));
    let forged = {
        let good = sign_tower_cookie(&alice, &master);
        format!(
            "id={}{}",
            &good[..44],
            tower_sessions::session::Id::default()
        )
    };
    let other_key = format!("id={}", sign_tower_cookie(&alice, &[1u8; 64]));
    let cases: Vec<(&str, String, &str)> = vec![
        ("no cookie", String::new(), "no_cookie"),
        ("unsigned", format!("id={alice}"), "unsigned"),
        ("forged id", forged, "bad_signature"),
        ("other key", other_key, "bad_signature"),
        // tower-sessions' SQLite store filters expired rows itself, so this reads as unknown;
        // the Redis flavours below prove the gateway's own expiry check.
        ("expired", signed(&expired), "unknown_session"),
        (
            "unknown",
            signed(&tower_sessions::session::Id::default().to_string()),
            "unknown_session",
        ),
        ("not logged in", signed(&no_user), "no_user"),
    ];
    for (why, cookie, reason) in &cases {
        let headers: Vec<(&str, &str)> = if cookie.is_empty() {
            vec![]
        } else {
            vec![("cookie", cookie)]
        };
        let metric = format!("gateway_handshakes_total{{result=\"{reason}\",route=\"presence\"}}");
        let before = gw.metric(&metric).await;
        let (status, _, body) = get(&gw.url(HANDSHAKE), &headers).await.unwrap();
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(body, "authentication required\n");
        assert_eq!(gw.metric(&metric).await, before + 1.0, "{why}: {metric}");
    }
    assert_eq!(sio.count(), 0, "no refused handshake reached the upstream");
    // Signature failures cost no lookup: only expired, unknown and not-logged-in were looked up.
    assert_eq!(gw.metric("gateway_session_lookup_seconds_count").await, 3.0);
    let log = gw.log_text();
    assert!(
        log.contains("no such session") && log.contains("signature"),
        "reasons are logged"
    );
    assert!(!log.contains(&alice), "the log never contains a session id");

    let (status, _, _) = get(&gw.url(HANDSHAKE), &[("cookie", &signed(&alice))])
        .await
        .unwrap();
    assert_eq!(status, 200, "the properly signed cookie passes");
}

#[tokio::test]
async fn a_spoofed_assertion_never_reaches_any_upstream() {
    let (sio, app) = (Upstream::start("sio").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let alice = tower_session_sqlite(&db, "alice", None, ALICE_TTL).await;
    let gw = Gateway::start(&tower_sqlite_config(&db, &sio, &app, "")).await;
    gw.wait_ready().await;

    let spoof = [
        ("X-Identity-Assertion", "forged.one.token"),
        ("x-identity-assertion", "forged.two.token"),
        ("x_identity_assertion", "forged.three.token"),
        ("X_Identity-Assertion", "forged.four.token"),
    ];
    let cookie = format!("id={alice}");
    let mut authed = spoof.to_vec();
    authed.push(("cookie", &cookie));
    // On a route without auth, on an established Socket.IO session, and on an authenticated handshake.
    get(&gw.url("/anything"), &spoof).await.unwrap();
    request(
        "POST",
        &gw.url("/socket.io/?EIO=4&transport=polling&sid=x"),
        &spoof,
    )
    .await
    .unwrap();
    let (status, _, _) = get(&gw.url(HANDSHAKE), &authed).await.unwrap();
    assert_eq!(status, 200);

    let all: Vec<Recorded> = app.requests().into_iter().chain(sio.requests()).collect();
    assert_eq!(all.len(), 3);
    for r in &all {
        for v in r.headers_like("x-identity-assertion") {
            assert!(
                !v.starts_with("forged"),
                "spoofed header reached {}: {v}",
                r.uri
            );
        }
    }
    let handshake = sio
        .requests()
        .into_iter()
        .find(|r| !r.uri.contains("sid="))
        .unwrap();
    let ours = handshake.headers_like("x-identity-assertion");
    assert_eq!(ours.len(), 1, "exactly one assertion: the gateway's");
    assert!(gw.verify(ours[0], "presence-service").await.is_ok());
}

#[tokio::test]
async fn origins_malformed_handshakes_and_unknown_routes() {
    let sio = Upstream::start("sio").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let alice = tower_session_sqlite(&db, "alice", None, ALICE_TTL).await;
    let body = format!(
        r#"
[session]
flavour = "tower-sessions"
store = {{ kind = "sqlite", path = "{}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{}"]
auth = "socketio-handshake"
audience = "presence-service"
allowed_origins = ["https://app.example"]
"#,
        db.display(),
        sio.addr
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;
    let cookie = format!("id={alice}");

    let (s, _, b) = get(
        &gw.url(HANDSHAKE),
        &[("cookie", &cookie), ("origin", "https://evil.example")],
    )
    .await
    .unwrap();
    assert_eq!((s, b.as_str()), (403, "origin not allowed\n"));
    let (s, _, _) = get(
        &gw.url(HANDSHAKE),
        &[("cookie", &cookie), ("origin", "https://app.example")],
    )
    .await
    .unwrap();
    assert_eq!(s, 200);

    let (s, _, _) = request(
        "POST",
        &gw.url("/socket.io/?EIO=4&transport=polling"),
        &[("cookie", &cookie)],
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "a handshake must be a GET");
    let (s, _, _) = get(
        &gw.url("/socket.io/?transport=polling"),
        &[("cookie", &cookie)],
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "missing EIO");
    let (s, _, _) = get(
        &gw.url("/socket.io/?EIO=4&transport=websocket"),
        &[("cookie", &cookie)],
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "websocket transport without Upgrade");
    let (s, _, _) = get(&gw.url("/elsewhere"), &[]).await.unwrap();
    assert_eq!(s, 404);
    assert_eq!(
        sio.count(),
        1,
        "only the allowed handshake reached the upstream"
    );
}

#[tokio::test]
async fn express_sessions_in_connect_redis_layout() {
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "the secret key\n").unwrap();
    let body = format!(
        r#"
[session]
flavour = "express"
secrets = [{{ value = "rotated-new-secret" }}, {{ file = "{}" }}]
store = {{ kind = "redis", url = "{}", prefix = "sess:" }}

{}"#,
        secret_file.path().display(),
        redis.url(),
        presence_route(&sio)
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;

    // The fixture's real cookie (made by express-session with the old secret) still verifies.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/express-session.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let login = &fixture["logins"][0];
    let sid = login["sid"].as_str().unwrap();
    redis
        .cmd(&[
            "SET",
            &format!("sess:{sid}"),
            &express_session_json("alice", ALICE_TTL),
            "EX",
            "3600",
        ])
        .await
        .unwrap();
    let cookie = format!("connect.sid={}", login["cookie_value"].as_str().unwrap());
    let (s, _, b) = get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let token = sio.requests()[0]
        .header("x-identity-assertion")
        .unwrap()
        .to_string();
    assert_eq!(
        gw.verify(&token, "presence-service").await.unwrap().sub,
        "alice"
    );

    // A session signed with the new secret works too; an expired one that Redis still returns does not.
    redis
        .cmd(&[
            "SET",
            "sess:bobsid",
            &express_session_json("bob", time::Duration::seconds(-1)),
            "EX",
            "3600",
        ])
        .await
        .unwrap();
    let cookie = format!(
        "connect.sid={}",
        express_cookie("bobsid", "rotated-new-secret")
    );
    let (s, _, _) = get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(
        s, 401,
        "expired in its cookie.expires although Redis still has it"
    );
    let cookie = format!(
        "connect.sid={}",
        express_cookie("nosuchsid", "the secret key")
    );
    assert_eq!(
        get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
            .await
            .unwrap()
            .0,
        401
    );
    let cookie = format!("connect.sid={}", express_cookie(sid, "another secret"));
    assert_eq!(
        get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
            .await
            .unwrap()
            .0,
        401
    );
    assert_eq!(sio.count(), 1);
}

#[tokio::test]
async fn redis_outage_fails_closed_with_503_and_recovers_by_itself() {
    let mut redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    let body = format!(
        r#"
[session]
flavour = "express"
secrets = [{{ value = "the secret key" }}]
lookup_timeout_ms = 500
store = {{ kind = "redis", url = "{}" }}

{}"#,
        redis.url(),
        presence_route(&sio)
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;
    redis
        .cmd(&["SET", "sess:s1", &express_session_json("alice", ALICE_TTL)])
        .await
        .unwrap();
    let cookie = format!("connect.sid={}", express_cookie("s1", "the secret key"));
    assert_eq!(
        get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
            .await
            .unwrap()
            .0,
        200
    );

    redis.stop();
    let started = std::time::Instant::now();
    let (s, _, b) = get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!((s, b.as_str()), (503, "session store unavailable\n"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(get(&gw.admin_url("/readyz"), &[]).await.unwrap().0, 503);

    redis.restart().await;
    redis
        .cmd(&["SET", "sess:s1", &express_session_json("alice", ALICE_TTL)])
        .await
        .unwrap();
    let url = gw.url(HANDSHAKE);
    let recovered = eventually(Duration::from_secs(15), || {
        let (url, cookie) = (url.clone(), cookie.clone());
        async move { get(&url, &[("cookie", &cookie)]).await.map(|r| r.0) == Some(200) }
    })
    .await;
    assert!(
        recovered,
        "handshakes recover after Redis returns; log:\n{}",
        gw.log_text()
    );
    assert_eq!(get(&gw.admin_url("/readyz"), &[]).await.unwrap().0, 200);
    assert_eq!(sio.count(), 2);
}

#[tokio::test]
async fn tower_sessions_in_redis_are_read_through_the_real_store() {
    use tower_sessions::session_store::SessionStore;
    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    // Written by tower-sessions' own Redis store, as an axum app using it would.
    let pool = Pool::new(Config::from_url(&redis.url()).unwrap(), None, None, None, 1).unwrap();
    pool.init().await.unwrap();
    let store = tower_sessions_redis_store::RedisStore::new(pool);
    let mut data = std::collections::HashMap::new();
    data.insert(
        "axum-login.data".to_string(),
        serde_json::json!({"user_id": 7, "auth_hash": [0]}),
    );
    data.insert("display_name".to_string(), serde_json::json!("Grace"));
    let mut record = tower_sessions::session::Record {
        id: Default::default(),
        data,
        expiry_date: time::OffsetDateTime::now_utc() + ALICE_TTL,
    };
    store.create(&mut record).await.unwrap();

    let body = format!(
        r#"
[session]
flavour = "tower-sessions"
display_name_field = "display_name"
store = {{ kind = "redis", url = "{}" }}

{}"#,
        redis.url(),
        presence_route(&sio)
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;
    let cookie = format!("id={}", record.id);
    let (s, _, b) = get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let token = sio.requests()[0]
        .header("x-identity-assertion")
        .unwrap()
        .to_string();
    let claims = gw.verify(&token, "presence-service").await.unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_deref()),
        ("7", Some("Grace")),
        "numeric axum-login ids work"
    );
    let unknown = format!("id={}", tower_sessions::session::Id::default());
    assert_eq!(
        get(&gw.url(HANDSHAKE), &[("cookie", &unknown)])
            .await
            .unwrap()
            .0,
        401
    );
}

#[tokio::test]
async fn a_logout_through_the_gateway_is_propagated_with_the_session_handle() {
    let (sio, app, presence_internal) = (
        Upstream::start("sio").await,
        Upstream::start("app").await,
        Upstream::start("presence-internal").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let alice = tower_session_sqlite(&db, "alice", Some("Alice"), ALICE_TTL).await;
    let logout = format!(
        "logout = {{ path = \"/api/auth/logout\", notify = [\"http://127.0.0.1:{}/internal/sessions/ended\"], audience = \"presence-service\" }}",
        presence_internal.addr.port()
    );
    // The app route is the last table of the config: the logout line belongs to it.
    let config = tower_sqlite_config(&db, &sio, &app, "") + &format!("{logout}\n");
    let gw = Gateway::start(&config).await;
    gw.wait_ready().await;
    let cookie = format!("id={alice}");
    assert_eq!(
        get(&gw.url(HANDSHAKE), &[("cookie", &cookie)])
            .await
            .unwrap()
            .0,
        200
    );
    let handshake_sid = gw
        .verify(
            sio.requests()[0].header("x-identity-assertion").unwrap(),
            "presence-service",
        )
        .await
        .unwrap()
        .sid;

    // A GET to the logout path is not a logout; a POST answered 2xx is.
    get(&gw.url("/api/auth/logout"), &[("cookie", &cookie)])
        .await
        .unwrap();
    let (s, _, _) = request("POST", &gw.url("/api/auth/logout"), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(s, 200);
    let notified = eventually(Duration::from_secs(5), || async {
        presence_internal.count() == 1
    })
    .await;
    assert!(
        notified,
        "the presence service was told; log:\n{}",
        gw.log_text()
    );
    let n = &presence_internal.requests()[0];
    assert_eq!(
        (n.method.as_str(), n.uri.as_str()),
        ("POST", "/internal/sessions/ended")
    );
    let claims = gw
        .verify(
            n.header("x-identity-assertion").unwrap(),
            "presence-service",
        )
        .await
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.sid.as_str()),
        ("alice", handshake_sid.as_str())
    );
    assert!(
        app.requests()
            .iter()
            .all(|r| r.header("x-identity-assertion").is_none()),
        "the app route has no auth: it gets no assertion"
    );
    // Without a session there is nobody to log out.
    request("POST", &gw.url("/api/auth/logout"), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presence_internal.count(), 1);
}

#[tokio::test]
async fn one_route_in_front_of_an_express_app_and_an_axum_app() {
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let bob = tower_session_sqlite(&db, "bob", Some("Bob"), ALICE_TTL).await;
    redis
        .cmd(&[
            "SET",
            "sess:alice-sid",
            &express_session_json("alice", ALICE_TTL),
        ])
        .await
        .unwrap();
    let body = format!(
        r#"
[sessions.express]
flavour = "express"
secrets = [{{ value = "the secret key" }}]
store = {{ kind = "redis", url = "{}" }}

[sessions.demo]
flavour = "tower-sessions"
display_name_field = "display_name"
store = {{ kind = "sqlite", path = "{}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{}"]
auth = "socketio-handshake"
audience = "presence-service"
sessions = ["express", "demo"]
"#,
        redis.url(),
        db.display(),
        sio.addr
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;
    let express = format!(
        "connect.sid={}",
        express_cookie("alice-sid", "the secret key")
    );
    let tower = format!("id={bob}");
    for (cookie, who) in [(express.as_str(), "alice"), (tower.as_str(), "bob")] {
        let (s, _, b) = get(&gw.url(HANDSHAKE), &[("cookie", cookie)])
            .await
            .unwrap();
        assert_eq!(s, 200, "{who}: {b}");
        let token = sio
            .requests()
            .last()
            .unwrap()
            .header("x-identity-assertion")
            .unwrap()
            .to_string();
        assert_eq!(
            gw.verify(&token, "presence-service").await.unwrap().sub,
            who
        );
    }
    assert_eq!(get(&gw.url(HANDSHAKE), &[]).await.unwrap().0, 401);
    let readyz = get(&gw.admin_url("/readyz"), &[]).await.unwrap().2;
    assert!(
        readyz.contains("sessions.express (connect-redis): ok")
            && readyz.contains("sessions.demo (sqlite): ok")
            && readyz.contains(&format!("listener 127.0.0.1:{}: accepting", gw.http)),
        "{readyz}"
    );
}
