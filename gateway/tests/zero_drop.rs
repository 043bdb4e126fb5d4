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
