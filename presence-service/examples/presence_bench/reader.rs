//! The bench client's measuring phase. Once the N clients are connected and idle, one thread
//! reads all their sockets through one epoll set instead of N tokio tasks. A message then costs
//! this process one `recvmsg` and a frame header parse, where a task cost a wake, a poll, a
//! second `recvmsg` that would block and a message allocation: about half of what the client
//! took per broadcast. The client shares the two cores with the server it measures, so every
//! cycle it spends is one the server does not get; clients on other machines cost it nothing.
//!
//! Frames are parsed with tungstenite's own header parser; the client answers Engine.IO pings
//! (`2`) with pongs (`3`), so the server keeps every socket for as long as the bench runs.

use std::io::{Cursor, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::{recv_timestamped, Shared, NO_PROBE};

/// What the reader saw besides the probes: anything but zero means some clients stopped
/// counting, and the figures say so.
#[derive(Debug, Default)]
pub struct ReaderReport {
    pub closed: usize,
    pub protocol_errors: usize,
    pub pongs: usize,
}

pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<ReaderReport>>,
}

impl Reader {
    /// Stops the thread and returns what it saw.
    pub fn finish(self) -> std::io::Result<ReaderReport> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")))
    }
}

struct Conn {
    /// The client's index in `Shared::arrived`.
    index: usize,
    stream: TcpStream,
    /// The start of a frame that has not fully arrived yet (rare: frames here are small).
    partial: Vec<u8>,
    last_rx_ns: u64,
    open: bool,
}

/// Starts reading `conns` (client index, socket) on a thread of its own.
pub fn start(
    conns: Vec<(usize, OwnedFd)>,
    shared: Arc<Shared>,
    probe_names: Arc<Vec<String>>,
) -> std::io::Result<Reader> {
    // SAFETY: plain syscall; the result is checked.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let epoll: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(epfd) };
    let mut table = Vec::with_capacity(conns.len());
    for (slot, (index, fd)) in conns.into_iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: slot as u64,
        };
        // SAFETY: both fds are open; `ev` lives across the call.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        table.push(Conn {
            index,
            stream: TcpStream::from(fd),
            partial: Vec::new(),
            last_rx_ns: 0,
            open: true,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("bench-reader".into())
        .spawn(move || run(epoll, table, &shared, &probe_names, &stopping))?;
    Ok(Reader { stop, thread })
}

fn run(
    epoll: OwnedFd,
    mut conns: Vec<Conn>,
    shared: &Shared,
    probe_names: &[String],
    stop: &AtomicBool,
) -> std::io::Result<ReaderReport> {
    let mut report = ReaderReport::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Acquire) {
        // Polled, never waited on: a thread blocked in epoll_wait is woken by the kernel on
        // every write the server makes to one of its sockets, and on loopback the server pays
        // for that wake-up (a remote client's wake-ups cost the server nothing). Polling every
        // millisecond adds at most 1 ms to when this thread reads a message, and nothing to
        // the kernel receive times.
        // SAFETY: `events` has room for the count given.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                0,
            )
        };
        if ready == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..ready as usize] {
            let conn = &mut conns[ev.u64 as usize];
            if conn.open && !read_once(conn, &mut buf, shared, probe_names, &mut report) {
                conn.open = false;
                // SAFETY: both fds are open; DEL ignores the event argument.
                unsafe {
                    libc::epoll_ctl(
                        epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        conn.stream.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
            }
        }
    }
    Ok(report)
}

/// One read of a ready socket (level-triggered: whatever a read leaves, epoll reports again).
/// Returns false once the socket is closed or speaks something this client does not expect.
fn read_once(
    conn: &mut Conn,
    buf: &mut [u8],
    shared: &Shared,
    probe_names: &[String],
    report: &mut ReaderReport,
) -> bool {
    let n = match recv_timestamped(conn.stream.as_raw_fd(), buf, &mut conn.last_rx_ns) {
        Ok(0) => {
            report.closed += 1;
            return false;
        }
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
        Err(_) => {
            report.closed += 1;
            return false;
        }
    };
    let mut data = std::mem::take(&mut conn.partial);
    let consumed = if data.is_empty() {
        let used = frames(conn, &buf[..n], shared, probe_names, report);
        data.extend_from_slice(&buf[used.unwrap_or(n)..n]);
        used
    } else {
        data.extend_from_slice(&buf[..n]);
        let used = frames(conn, &data, shared, probe_names, report);
        data.drain(..used.unwrap_or(data.len()));
        used
    };
    conn.partial = data;
    consumed.is_some() && conn.open
}

/// Handles every complete frame at the start of `data`; returns how many bytes they took,
/// or None on a frame this client cannot read.
fn frames(
    conn: &mut Conn,
    data: &[u8],
    shared: &Shared,
    probe_names: &[String],
    report: &mut ReaderReport,
) -> Option<usize> {
    let mut cursor = Cursor::new(data);
    loop {
        let start = cursor.position() as usize;
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Some(start),
            Err(_) => {
                report.protocol_errors += 1;
                return None;
            }
        };
        let body = cursor.position() as usize;
        let end = body.checked_add(usize::try_from(len).ok()?)?;
        if end > data.len() {
            return Some(start);
        }
        // A server's frames are never masked, and the presence service does not fragment.
        if header.mask.is_some() || !header.is_final {
            report.protocol_errors += 1;
            return None;
        }
        match header.opcode {
            OpCode::Data(Data::Text) => {
                on_text(conn, &data[body..end], shared, probe_names, report)
            }
            OpCode::Control(Control::Close) => {
                report.closed += 1;
                conn.open = false;
                return Some(end);
            }
            _ => {}
        }
        cursor.set_position(end as u64);
    }
}

fn on_text(
    conn: &mut Conn,
    text: &[u8],
    shared: &Shared,
    probe_names: &[String],
    report: &mut ReaderReport,
) {
    if text == b"2" {
        // Engine.IO ping: a masked text frame `3`, as a client must send (RFC 6455 5.3).
        let mask = (conn.last_rx_ns as u32 ^ conn.index as u32).to_le_bytes();
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut frame = Vec::with_capacity(7);
        if header.format(1, &mut frame).is_ok() {
            frame.push(b'3' ^ mask[0]);
            if (&conn.stream).write_all(&frame).is_ok() {
                report.pongs += 1;
            }
        }
        return;
    }
    shared.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
    let probe = shared.probe.load(Ordering::Acquire);
    if probe == NO_PROBE || shared.arrived[conn.index].load(Ordering::Relaxed) != 0 {
        return;
    }
    let name = probe_names[probe].as_bytes();
    if text.windows(name.len()).any(|w| w == name) {
        let at = shared.start.elapsed().as_nanos() as u64;
        shared.arrived[conn.index].store(at.max(1), Ordering::Relaxed);
        shared.delivered[conn.index].store(conn.last_rx_ns, Ordering::Relaxed);
        if shared.arrived_count.fetch_add(1, Ordering::AcqRel) + 1 == shared.arrived.len() {
            shared.all_arrived.notify_one();
        }
    }
}
