//! `jwt-auth`: a stompbox tenant plugin that authenticates CONNECTs with HS256 JWTs, lets a
//! session subscribe to `/topic/...` and its own `/user/...` destinations, limits SEND to
//! configured prefixes, and maps channel codes from a tenant setting. See `README.md`.
//!
//! The decisions live in [`jwt`] and [`rules`] as plain functions (unit-tested on the host);
//! `component.rs` wires them to the `tenant-plugin` world and is compiled for wasm only.

pub mod jwt;
pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component;
