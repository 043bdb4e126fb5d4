//! The edge-auth gateway as a library, so integration tests and benches reach its pieces.
//!
//! Request pipeline (see `proxy`): classify → authenticate → choose upstream → rewrite
//! headers → proxy → log.

pub mod admin;
pub mod admission;
pub mod affinity;
pub mod app;
pub mod classify;
pub mod config;
pub mod devcerts;
pub mod drain;
pub mod first_request;
pub mod forwarding;
pub mod listening;
pub mod live;
pub mod logout;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod session;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
