//! The Rust SDK for stompbox tenant plugins: the bindings of the `tenant-plugin` world
//! (`wit/plugin.wit`) and the small helpers every policy needs (header lookup, settings,
//! destination matching, safe echoes of client input), so that a plugin is one short file:
//!
//! ```ignore
//! use stompbox_plugin::{host, ConnectInfo, Operation, Policy, Principal};
//!
//! struct Mine;
//!
//! impl Policy for Mine {
//!     fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
//!         let user = stompbox_plugin::header(&info.headers, "userid").unwrap_or_default();
//!         Ok(Principal::user(user))
//!     }
//!     fn authorize(_: Principal, _: Operation, destination: String) -> Result<(), String> {
//!         stompbox_plugin::destination::check_clean(&destination)
//!     }
//!     fn resolve_channel(code: String) -> Option<String> {
//!         stompbox_plugin::settings::channel(host::setting("channels").as_deref(), &code)
//!     }
//! }
//!
//! stompbox_plugin::export!(Mine);
//! ```
//!
//! The generated bindings compile on every target (off wasm their imports are stubs that must
//! not be called), so decisions written as plain functions of these types are unit-tested on
//! the host; `export!` only emits the component's exports when building for wasm.

pub mod destination;
pub mod http;
pub mod settings;

/// The generated bindings of the `tenant-plugin` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "tenant-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "stompbox_plugin::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::exports::stompbox::plugin::policy::Guest as Policy;
/// Calls to the tenant's backend (only to the hosts its configuration lists).
pub use bindings::stompbox::plugin::backend;
/// The tenant's small key-value cache with expiry.
pub use bindings::stompbox::plugin::cache;
/// What the node offers: `log`, `setting`, `now_ms`, `request_header`.
pub use bindings::stompbox::plugin::host;
pub use bindings::stompbox::plugin::types::{ConnectInfo, Operation, Principal, Transport};
pub use host::Level;

/// Exports `$policy` (a type implementing [`Policy`]) as the component's `policy`. Expands to
/// nothing off wasm, so a plugin crate's host tests build too.
#[macro_export]
macro_rules! export {
    ($policy:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export_world!($policy with_types_in $crate::bindings);
    };
}

impl Principal {
    /// A principal for `user` with no attributes (`""` is an anonymous session).
    pub fn user(user: impl Into<String>) -> Principal {
        Principal {
            user: user.into(),
            attributes: Vec::new(),
        }
    }

    /// This principal with attribute `name` = `value` added.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Principal {
        self.attributes.push((name.into(), value.into()));
        self
    }

    /// The first value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        header(&self.attributes, name)
    }
}

/// The first value of header `name` (STOMP: the first occurrence of a repeated header wins).
/// Names are matched exactly: STOMP header names are case-sensitive.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; session=xyz`), without
/// surrounding quotes. `None` when it is not there.
pub fn cookie<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// A client-supplied string made safe to echo in an error message or a log line: control
/// characters become `?` and it is cut at 64 characters.
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_header_wins() {
        let h = headers(&[("userid", "a"), ("login", "l"), ("userid", "b")]);
        assert_eq!(header(&h, "userid"), Some("a"));
        assert_eq!(header(&h, "login"), Some("l"));
        assert_eq!(header(&h, "Login"), None);
        assert_eq!(header(&h, "token"), None);
    }

    #[test]
    fn cookies() {
        let c = "theme=dark; session=\"abc=1\";  other = x ;flag";
        assert_eq!(cookie(c, "session"), Some("abc=1"));
        assert_eq!(cookie(c, "theme"), Some("dark"));
        assert_eq!(cookie(c, "other"), Some("x"));
        assert_eq!(cookie(c, "flag"), None);
        assert_eq!(cookie(c, "sess"), None);
        assert_eq!(cookie("", "session"), None);
    }

    #[test]
    fn principals() {
        let p = Principal::user("alice")
            .with("auth", "jwt")
            .with("scope", "read");
        assert_eq!(p.user, "alice");
        assert_eq!(p.attribute("scope"), Some("read"));
        assert_eq!(p.attribute("nope"), None);
    }

    #[test]
    fn printable_cuts_and_masks() {
        assert_eq!(printable("a\nb"), "a?b");
        assert_eq!(printable(&"x".repeat(70)), format!("{}...", "x".repeat(64)));
    }
}
