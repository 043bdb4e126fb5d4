//! Zero-drop operations with the real binary: panic mode, affinity that survives a restart and
//! a second replica, binary upgrade and paced drain (issue 13, part B).

mod common;

use std::time::Duration;

use common::*;

fn sio_route(upstreams: &str, db: &std::path::Path, hc_secs: u64) -> String {
    format!(
        r#"
[session]
flavour = "tower-sessions"
store = {{ kind = "sqlite", path = "{}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = [{upstreams}]
auth = "socketio-handshake"
audience = "presence-service"
health_check_interval_secs = {hc_secs}
"#,
        db.display()
    )
}

/// Panic mode: the only node of a route was down at the last health check (and the next one is
/// an hour away); it comes back, and the very next handshake reaches it. Without panic mode
/// the gateway answers 503 until the next check.
#[tokio::test]
async fn a_restarted_single_upstream_answers_handshakes_as_soon_as_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let port = free_port();
    let gw = Gateway::start(&sio_route(&format!("\"127.0.0.1:{port}\""), &db, 3600)).await;
    // The first health check ran and found nothing listening.
    let not_ready = eventually(Duration::from_secs(10), || async {
        get(&gw.admin_url("/readyz"), &[]).await.map(|r| r.0) == Some(503)
    })
    .await;
    assert!(not_ready, "the dead node is marked unhealthy");
    let cookie = format!("id={alice}");
    let handshake = gw.url("/socket.io/?EIO=4&transport=polling");
    // Down: every node is tried and fails to connect: 502, not a 503 from health state alone.
    let (s, _, _) = get(&handshake, &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(s, 502);

    let _a = Upstream::start_at("a", &format!("127.0.0.1:{port}")).await;
    for _ in 0..5 {
        let (s, hdrs, body) = get(&handshake, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!((s, header(&hdrs, "x-upstream")), (200, Some("a")), "{body}");
    }
    // Still unhealthy by the health checks' account: these were panic-mode choices.
    assert_eq!(
        get(&gw.admin_url("/readyz"), &[]).await.unwrap().0,
        503,
        "no health check ran in between"
    );
    assert!(gw.metric("gateway_upstream_panic_total").await >= 6.0);
    assert!(gw.log_text().contains("panic mode"), "{}", gw.log_text());
}

fn sid_of(body: &str) -> String {
    body.split("\"sid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an open packet")
        .to_string()
}

fn cookie_pair(hdrs: &[(String, String)], name: &str) -> Option<String> {
    hdrs.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| {
            let pair = v.split(';').next()?;
            pair.starts_with(&format!("{name}="))
                .then(|| pair.to_string())
        })
}

/// Two gateway processes (a replica, or the process after a restart) share only the affinity
/// key: a polling session made through one keeps reaching its node through the other, and a
/// forged cookie never routes outside the route.
#[tokio::test]
async fn polling_affinity_survives_another_gateway_process() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let body = format!(
        "{}\n[affinity]\nkeys = [{{ value = \"shared between replicas\" }}]\n",
        sio_route(&format!("\"{}\", \"{}\"", a.addr, b.addr), &db, 1)
    );
    let gw1 = Gateway::start(&body).await;
    let gw2 = Gateway::start(&body).await;
    gw1.wait_ready().await;
    gw2.wait_ready().await;
    let session = format!("id={alice}");

    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (s, _, body) = get(
            &gw1.url("/socket.io/?EIO=4&transport=polling"),
            &[("cookie", &session)],
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{body}");
        sessions.push(sid_of(&body));
    }
    assert!(
        sessions.iter().any(|s| s.starts_with("a-"))
            && sessions.iter().any(|s| s.starts_with("b-")),
        "handshakes are balanced: {sessions:?}"
    );
    for sid in &sessions {
        let owner = sid.split('-').next().unwrap();
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        // The first request after the handshake, through the process that saw it, gets the
        // cookie; a second one carrying it gets none (nothing to change).
        let (s, hdrs, _) = get(&gw1.url(&path), &[]).await.unwrap();
        assert_eq!((s, header(&hdrs, "x-upstream")), (200, Some(owner)));
        let affinity = cookie_pair(&hdrs, "gw_affinity").expect("an affinity cookie");
        let cookies = format!("{session}; {affinity}");
        let (_, hdrs, _) = get(&gw1.url(&path), &[("cookie", &cookies)]).await.unwrap();
        assert_eq!(cookie_pair(&hdrs, "gw_affinity"), None);
        // The other process never saw this session: the cookie alone routes it, every time.
        for (i, method) in ["GET", "POST", "GET", "POST", "GET", "GET"]
            .iter()
            .enumerate()
        {
            let gw = if i % 2 == 0 { &gw2 } else { &gw1 };
            let (s, hdrs, _) = request(method, &gw.url(&path), &[("cookie", &cookies)])
                .await
                .unwrap();
            assert_eq!(
                (s, header(&hdrs, "x-upstream")),
                (200, Some(owner)),
                "{method} {sid} via gateway {}",
                i % 2 + 2
            );
        }
    }
    // Without the cookie the other process routes at random: both nodes are seen.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", sessions[0]);
        let (_, hdrs, _) = get(&gw2.url(&path), &[]).await.unwrap();
        seen.extend(header(&hdrs, "x-upstream").map(str::to_string));
    }
    assert_eq!(seen.len(), 2, "the cookie is what routes: {seen:?}");
    // A cookie made with another key, or naming a node outside the route, is ignored.
    let outsider = Upstream::start("outsider").await;
    let forged = format!("gw_affinity={}~AAAAAAAAAAAAAAAAAAAAAA", outsider.addr);
    for _ in 0..4 {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", sessions[0]);
        let (s, hdrs, _) = get(&gw2.url(&path), &[("cookie", &forged)]).await.unwrap();
        assert_eq!(s, 200);
        assert_ne!(header(&hdrs, "x-upstream"), Some("outsider"));
    }
    assert_eq!(outsider.count(), 0);
}
