//! `[gateway] access_log`: Engine.IO long-polling requests of established sessions can be left
//! out of the access log (skip) or sampled, while every request is still counted in
//! `gateway_requests_total` and the unlogged ones in `gateway_access_log_suppressed_total`.
//! Against the real gateway binary, in front of recording upstreams.

mod common;

use common::*;

const POLL: &str = "/socket.io/?EIO=4&transport=polling&sid=abc";

fn config(db: &std::path::Path, sio: &Upstream, app: &Upstream) -> String {
    format!(
        r#"
[session]
flavour = "tower-sessions"
store = {{ kind = "sqlite", path = "{db}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{sio}"]
auth = "socketio-handshake"
audience = "presence-service"

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

/// Access lines for `path` in the gateway's log (the path is logged verbatim, without query).
fn lines_for(gw: &Gateway, path: &str) -> usize {
    gw.log_text()
        .lines()
        .filter(|l| l.contains(" request ") || l.ends_with(" request"))
        .filter(|l| l.contains(&format!("path={path}")))
        .count()
}

async fn run(access_log: &str, polls: usize) -> (Gateway, usize, f64, f64, tempfile::TempDir) {
    let (sio, app) = (Upstream::start("sio").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let gw = Gateway::start_with(&config(&db, &sio, &app), access_log).await;
    gw.wait_ready().await;
    for i in 0..polls {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let (status, _, _) = request(method, &gw.url(POLL), &[]).await.unwrap();
        assert_eq!(status, 200);
    }
    // A request that is not polling is always logged.
    let (status, _, _) = get(&gw.url("/api/auth/user"), &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(sio.count(), polls);
    // The access line is written after the response: give the last one a moment.
    let ok = eventually(std::time::Duration::from_secs(5), || async {
        lines_for(&gw, "/api/auth/user") == 1
    })
    .await;
    assert!(ok, "the app request is logged:\n{}", gw.log_text());
    let counted = gw
        .metric("gateway_requests_total{route=\"presence\",status=\"200\"}")
        .await;
    let suppressed = gw
        .metric("gateway_access_log_suppressed_total{kind=\"polling\",route=\"presence\"}")
        .await;
    let logged = lines_for(&gw, "/socket.io/");
    (gw, logged, counted, suppressed, dir)
}

#[tokio::test]
async fn by_default_every_polling_request_is_logged() {
    let (_gw, logged, counted, suppressed, _dir) = run("", 6).await;
    assert_eq!((logged, counted, suppressed), (6, 6.0, 0.0));
}

#[tokio::test]
async fn skip_leaves_polling_requests_out_of_the_log_but_counts_them() {
    let (gw, logged, counted, suppressed, _dir) =
        run(r#"access_log = { polling = "skip" }"#, 6).await;
    assert_eq!(
        (logged, counted, suppressed),
        (0, 6.0, 6.0),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn sample_logs_one_polling_request_in_n() {
    let (gw, logged, counted, suppressed, _dir) = run(
        r#"access_log = { polling = "sample", sample_every = 3 }"#,
        7,
    )
    .await;
    // Requests 1, 4 and 7 are logged.
    assert_eq!(
        (logged, counted, suppressed),
        (3, 7.0, 4.0),
        "{}",
        gw.log_text()
    );
}
