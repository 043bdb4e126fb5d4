#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]

pub use engineioxide_core::{ProtocolVersion, Str, TransportType};
pub use socket::{DisconnectReason, Socket};

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
pub use engineioxide_core::{OpenPacket, Packet, PacketParseError};

/// PATCHED (edge-gateway): the raw socket of the plain TCP connection a request came in on,
/// put in the request's extensions by a server that wants broadcasts to write websocket frames
/// straight to idle sockets (see `socket::DirectWrite`). Insert it only for a plain TCP
/// connection that the request's `Upgraded` IO writes to unchanged: never for TLS or any other
/// wrapping stream, whose bytes are not the socket's.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFd(pub std::os::fd::RawFd);

/// PATCHED (edge-gateway): how many frames were written straight to websockets (see
/// `socket::DirectWrite`) since the process started, for metrics.
pub fn direct_frames_written() -> u64 {
    transport::ws::DIRECT_FRAMES.load(std::sync::atomic::Ordering::Relaxed)
}

pub mod config;
pub mod handler;
pub mod layer;
pub mod service;
pub mod socket;

/// Socket id type and generator
pub mod sid {
    #[deprecated(since = "0.16.2", note = "Use engineioxide::socket::Sid instead")]
    pub use engineioxide_core::Sid;
}

mod body;
mod engine;
mod errors;
mod transport;
