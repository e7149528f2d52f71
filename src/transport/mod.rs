//! Transports: adapters that carry STOMP bytes between a socket and the connection driver.
//! They choose the tenant where their addressing says it (a WebSocket path) and know nothing
//! of routing.

pub mod io;
pub mod sockjs;
pub mod tcp;
pub mod ws;

/// The headers of an opening request that a connection keeps for its policy
/// ([`crate::policy::REQUEST_HEADERS`]), names in lowercase, values that are not text skipped.
pub fn request_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    crate::policy::REQUEST_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect()
}
