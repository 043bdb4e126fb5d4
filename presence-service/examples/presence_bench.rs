//! Presence bench (not a test): N idle websocket clients, then one presence change.
//! Prints connect rate, time for the change to reach all N clients (p50/p99/max), bytes sent per
//! change, and server RSS per idle socket. Run through integration/bench/presence/run.sh.
//!
//! Usage: presence_bench <presence-service binary> <mode: diff|compat> <N>

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use identity_assertion::{AssertionSigner, Identity, SigningKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (bin, mode, n) = (&args[1], &args[2], args[3].parse::<usize>()?);
    let key = SigningKey::generate("bench");
    let signer = AssertionSigner::new("edge-gateway", 3600, vec![key.clone()])?;
    let dir = std::env::temp_dir().join(format!("presence-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("k.pem"), key.public_pem())?;
    std::fs::write(
        dir.join("p.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[trust.public_keys]]\nkid = \"bench\"\npem = \"k.pem\"\n\
             [presence]\nmode = \"{mode}\"\nmax_sockets_per_user = 100000\n"
        ),
    )?;
    let mut server = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(dir.join("p.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    let addr = lines
        .next_line()
        .await?
        .unwrap_or_default()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kb(pid);

    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let bytes = Arc::new(AtomicU64::new(0));
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<Instant>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let connect = |i: usize, watch: bool| {
        let token = signer
            .sign(
                &Identity {
                    sub: format!("user-{i}"),
                    name: Some(format!("User {i}")),
                    sid: format!("s{i}"),
                },
                "presence-service",
            )
            .expect("sign");
        let (url, bytes, arrived_tx, ready_tx) = (
            url.clone(),
            bytes.clone(),
            arrived_tx.clone(),
            ready_tx.clone(),
        );
        tokio::spawn(async move {
            let mut req = url.into_client_request().expect("url");
            req.headers_mut()
                .insert("x-identity-assertion", token.parse().expect("header"));
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
                eprintln!("connect failed");
                return;
            };
            let _ = ws.next().await; // engine.io open
            let _ = ws.send(Message::text("40")).await;
            let mut counted = false;
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                    continue;
                }
                if t.starts_with("42[\"online_users\"") && !counted {
                    counted = true;
                    let _ = ready_tx.send(());
                    continue;
                }
                if watch && counted {
                    bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                    if t.contains("\"probe\"") {
                        let _ = arrived_tx.send(Instant::now());
                    }
                }
            }
        });
    };

    let t0 = Instant::now();
    let mut started = 0;
    let mut ready = 0;
    while ready < n {
        while started < n && started - ready < 256 {
            connect(started, true);
            started += 1;
        }
        match tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => anyhow::bail!("only {ready}/{n} clients connected"),
        }
    }
    let ramp = t0.elapsed();
    // Let the ramp's backlog (snapshots are O(N) each) drain: wait until clients receive nothing
    // for one second, bounded at 120 s.
    let drain_until = Instant::now() + Duration::from_secs(120);
    loop {
        let before = bytes.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if bytes.load(Ordering::Relaxed) == before || Instant::now() > drain_until {
            break;
        }
    }
    let rss1 = rss_kb(pid);
    bytes.store(0, Ordering::Relaxed);

    // One presence change: a new user "probe" comes online.
    let token = signer.sign(
        &Identity {
            sub: "probe".into(),
            name: Some("probe".into()),
            sid: "probe".into(),
        },
        "presence-service",
    )?;
    let mut req = url.clone().into_client_request()?;
    req.headers_mut()
        .insert("x-identity-assertion", token.parse()?);
    let change_at = Instant::now();
    let (mut probe, _) = tokio_tungstenite::connect_async(req).await?;
    let _ = probe.next().await;
    probe.send(Message::text("40")).await?;
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), arrived_rx.recv()).await {
            Ok(Some(at)) => lat.push(at.duration_since(change_at)),
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let change_bytes = bytes.load(Ordering::Relaxed);
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!("mode={mode} N={n}");
    println!(
        "  connect: {n} clients in {:.2} s = {:.0} conn/s",
        ramp.as_secs_f64(),
        n as f64 / ramp.as_secs_f64()
    );
    println!(
        "  one change reached {}/{n} clients: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  bytes sent per change: {change_bytes} ({:.1} x N)",
        change_bytes as f64 / n as f64
    );
    println!(
        "  server RSS: {rss0} kB idle, {rss1} kB with N sockets => {:.1} KB per idle socket",
        (rss1.saturating_sub(rss0)) as f64 / n as f64
    );
    let _ = server.kill().await;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}
