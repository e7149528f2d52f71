//! The glue between the `tenant-plugin` world (`../../wit/plugin.wit`) and the functions in
//! `lib.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

wit_bindgen::generate!({
    world: "tenant-plugin",
    path: "../../wit",
});

use exports::stompbox::plugin::policy::{ConnectInfo, Guest, Operation, Principal};
use stompbox::plugin::host::{self, Level};

struct SeedCompat;

/// Whether this instance has warned yet (once per instance, not per CONNECT).
static WARNED: AtomicBool = AtomicBool::new(false);

impl Guest for SeedCompat {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        if !WARNED.swap(true, Ordering::Relaxed) {
            host::log(
                Level::Warn,
                "seed-compat: trusting the client's userid/login header; any client can claim \
                 any user (migration only)",
            );
        }
        Ok(Principal {
            user: crate::claimed_user(&info.headers),
            attributes: crate::attributes(),
        })
    }

    fn authorize(_who: Principal, _op: Operation, _destination: String) -> Result<(), String> {
        Ok(())
    }

    fn resolve_channel(code: String) -> Option<String> {
        crate::resolve_channel(host::setting("channels").as_deref(), &code)
    }
}

export!(SeedCompat);
