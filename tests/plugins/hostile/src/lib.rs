//! A tenant plugin that misbehaves on demand, for the node's sandbox tests. The tenant setting
//! `mode`, read with `host::setting("mode")` on every call, picks the behaviour:
//!
//! | `mode` | `authenticate` | `authorize` | `resolve-channel` |
//! | --- | --- | --- | --- |
//! | `loop` | spins forever | ok | `/topic/{code}` |
//! | `alloc` | allocates and touches memory until allocation fails (trap) | ok | ... |
//! | `trap` | panics (a wasm `unreachable` trap) | ok | ... |
//! | `slow` | busy-waits ~20 ms on `host::now-ms`, then ok | ok | ... |
//! | `deny` | err `hostile: denied (deny)` | ok | ... |
//! | `authorize-{loop,alloc,trap,slow,deny}` | ok | that behaviour | ... |
//! | `resolve-{loop,alloc,trap,slow,deny}` | ok | ok | that behaviour (`deny` gives none) |
//! | anything else, or unset | ok | ok | `/topic/{code}` |
//!
//! "ok" from `authenticate` is the principal named by the CONNECT `userid` header (empty when
//! absent) with the attribute `("auth", "hostile")`; `resolve-channel` answers
//! `/topic/{code in lowercase}`.

use std::hint::black_box;

wit_bindgen::generate!({
    world: "tenant-plugin",
    path: "../../../wit",
});

use exports::stompbox::plugin::policy::{ConnectInfo, Guest, Operation, Principal};
use stompbox::plugin::host;

struct Hostile;

impl Guest for Hostile {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        act(&mode())?;
        let user = info
            .headers
            .iter()
            .find(|(k, _)| k == "userid")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(Principal {
            user,
            attributes: vec![("auth".to_string(), "hostile".to_string())],
        })
    }

    fn authorize(_who: Principal, _op: Operation, _destination: String) -> Result<(), String> {
        match mode().strip_prefix("authorize-") {
            Some(what) => act(what),
            None => Ok(()),
        }
    }

    fn resolve_channel(code: String) -> Option<String> {
        if let Some(what) = mode().strip_prefix("resolve-") {
            act(what).ok()?;
        }
        Some(format!("/topic/{}", code.to_lowercase()))
    }
}

export!(Hostile);

/// The tenant setting `mode`, empty when unset.
fn mode() -> String {
    host::setting("mode").unwrap_or_default()
}

/// Does what `what` names; returns only for `slow` (after ~20 ms), `deny` and unknown names.
fn act(what: &str) -> Result<(), String> {
    match what {
        "loop" => spin_forever(),
        "alloc" => exhaust_memory(),
        "trap" => panic!("hostile: trap requested"),
        "slow" => {
            busy_wait_ms(20);
            Ok(())
        }
        "deny" => Err(format!("hostile: denied ({what})")),
        _ => Ok(()),
    }
}

/// Never returns; `black_box` keeps the optimizer from proving anything about the loop.
fn spin_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grabs 1 MiB at a time, writing a byte in every 4 KiB page so the memory is really used (cheap
/// enough to hit the memory cap well within the deadline), and keeps it all until the allocator
/// fails, which aborts (traps) the instance.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for i in (0..CHUNK).step_by(4096) {
            chunk[i] = 0xA5;
        }
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}

/// Burns CPU until `host::now-ms` has advanced by `ms`.
fn busy_wait_ms(ms: u64) {
    let start = host::now_ms();
    while host::now_ms().saturating_sub(start) < ms {
        std::hint::spin_loop();
    }
}
