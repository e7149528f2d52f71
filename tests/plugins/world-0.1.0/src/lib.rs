//! A plugin built against `stompbox:plugin@0.1.0` (`wit/plugin.wit` here is that world, as it
//! was released): the user is the CONNECT `userid` header with the attribute
//! `("world", "0.1.0")`, `/topic/forbidden` is denied, and channel codes come from the
//! `channels` setting. Nodes serving a later 0.1.x world must load and call it unchanged.

wit_bindgen::generate!({
    world: "tenant-plugin",
    path: "wit",
});

use exports::stompbox::plugin::policy::{ConnectInfo, Guest, Operation, Principal};
use stompbox::plugin::host;

struct Old;

impl Guest for Old {
    fn authenticate(info: ConnectInfo) -> Result<Principal, String> {
        let user = info
            .headers
            .iter()
            .find(|(k, _)| k == "userid")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(Principal {
            user,
            attributes: vec![("world".into(), "0.1.0".into())],
        })
    }

    fn authorize(_who: Principal, _op: Operation, destination: String) -> Result<(), String> {
        if destination == "/topic/forbidden" {
            return Err("world-0.1.0: forbidden".into());
        }
        Ok(())
    }

    fn resolve_channel(code: String) -> Option<String> {
        host::setting("channels")?
            .split(',')
            .filter_map(|item| item.split_once('='))
            .find(|(c, _)| c.trim() == code)
            .map(|(_, d)| d.trim().to_string())
    }
}

export!(Old);
