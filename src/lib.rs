//! stompbox: a STOMP broker that pushes messages from backends to browsers over WebSocket and
//! TCP, with Spring-style `/user` destinations and per-tenant policy.
//!
//! The path of a message: transport (bytes) → [`stomp`] codec (frames) → [`session`] (state
//! machine) → [`broker`] (routing, per tenant) → each subscriber's outbox → the transport's
//! writer. [`connection`] joins a transport to a session; [`policy`] decides identity and
//! permissions; [`http`] holds the publish API; [`server`] runs it all.

pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod plugin;
pub mod policy;
pub mod publish;
pub mod server;
pub mod session;
pub mod sockjs;
pub mod stomp;
pub mod tenant;
pub mod transport;
pub mod upstream;
pub mod util;
pub mod web;
