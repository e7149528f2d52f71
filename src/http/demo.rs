//! The demo page at `/` (and the browser-test page at `/test.html`), with the JavaScript client libraries it loads served from the repository's `node_modules` under `/vendor/...`.

use std::path::{Path, PathBuf};

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::web::json_error;

const DEMO_HTML: &str = include_str!("../../static/demo.html");
const DEMO_JS: &str = include_str!("../../static/demo.js");
const TEST_HTML: &str = include_str!("../../static/test.html");

/// URL prefix → (directory inside node_modules, files that may be served).
const VENDORS: &[(&str, &str, &[&str])] = &[
    (
        "sockjs-client",
        "sockjs-client/dist",
        &[
            "sockjs.js",
            "sockjs.min.js",
            "sockjs.js.map",
            "sockjs.min.js.map",
        ],
    ),
    ("stompjs", "stompjs/lib", &["stomp.js", "stomp.min.js"]),
    (
        "stomp-stompjs",
        "@stomp/stompjs/bundles",
        &["stomp.umd.js", "stomp.umd.min.js", "stomp.umd.js.map"],
    ),
];

/// The demo page and the browser-test page (`server.demo_page`).
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", DEMO_HTML) }),
        )
        .route(
            "/demo.js",
            get(|| async { page("text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route(
            "/test.html",
            get(|| async { page("text/html; charset=utf-8", TEST_HTML) }),
        )
}

/// The client libraries, always served: the SockJS iframe transports load sockjs-client
/// from here (`sockjs.client_url`).
pub fn vendor<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/vendor/{lib}/{file}", get(vendor_file))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `node_modules`: `$STOMPBOX_NODE_MODULES`, else `./node_modules`, else the one of the
/// repository the executable was built in (`target/{profile}/stompbox` → repo root), else the
/// one of the source tree this was compiled from.
fn node_modules() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STOMPBOX_NODE_MODULES") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates = vec![PathBuf::from("node_modules")];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join("node_modules")));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules"));
    candidates.into_iter().find(|d| d.is_dir())
}

async fn vendor_file(UrlPath((lib, file)): UrlPath<(String, String)>) -> Response {
    let Some((_, dir, files)) = VENDORS.iter().find(|(name, _, _)| *name == lib) else {
        return json_error(StatusCode::NOT_FOUND, "no such library");
    };
    if !files.contains(&file.as_str()) {
        return json_error(StatusCode::NOT_FOUND, "no such file");
    }
    let missing = || {
        json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "{lib}/{file} is not installed: run npm ci in the stompbox repository \
                 (or set STOMPBOX_NODE_MODULES)"
            ),
        )
    };
    let Some(root) = node_modules() else {
        return missing();
    };
    match tokio::fs::read(root.join(dir).join(&file)).await {
        Ok(bytes) => {
            let content_type = if file.ends_with(".map") {
                "application/json"
            } else {
                "text/javascript; charset=utf-8"
            };
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(_) => missing(),
    }
}
