//! Transports: adapters that carry STOMP bytes between a socket and the connection driver.
//! They choose the tenant where their addressing says it (a WebSocket path) and know nothing
//! of routing.

pub mod io;
pub mod sockjs;
pub mod tcp;
pub mod ws;
