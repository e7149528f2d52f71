//! Shorthands over `backend::fetch` for the common requests to the tenant's backend. The node
//! allows only the hosts the tenant's configuration lists, bounds the wait by the call's
//! deadline and caps the answer's size; every way it can fail is a [`FetchError`].

use crate::backend::{self, FetchError, Request, Response};

/// `GET url` with `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, FetchError> {
    send("GET", url, headers, Vec::new())
}

/// `POST url` with `headers` and `body`.
pub fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Response, FetchError> {
    send("POST", url, headers, body)
}

/// Any request.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, FetchError> {
    backend::fetch(&Request {
        method: method.to_string(),
        url: url.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body,
    })
}

/// The error in words, for an ERROR frame or a log line.
pub fn describe(error: &FetchError) -> String {
    match error {
        FetchError::NotAllowed(why) => format!("backend call not allowed: {why}"),
        FetchError::Invalid(why) => format!("invalid backend request: {why}"),
        FetchError::Timeout => "the backend did not answer in time".to_string(),
        FetchError::TooLarge(cap) => format!("the backend's answer is larger than {cap} bytes"),
        FetchError::Failed(why) => format!("the backend is unreachable: {why}"),
    }
}
