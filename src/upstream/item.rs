//! One thing handed to a tenant's backend: a client's message to an application destination,
//! or a connection event. The same item is a JSON object in a webhook batch and the fields of
//! one Redis stream entry, with the same names.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::cluster::StreamEntry;

/// What an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A client SEND to an application destination.
    Message,
    /// A connection event (`connect`, `disconnect`, `subscribe`, `unsubscribe`).
    Event(crate::config::EventKind),
}

impl ItemKind {
    /// Its `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Message => "message",
            ItemKind::Event(kind) => kind.as_str(),
        }
    }
}

/// An item for the backend.
#[derive(Debug, Clone)]
pub struct Item {
    /// What it is.
    pub kind: ItemKind,
    /// Unique across the cluster and across restarts: backends that may see an item twice
    /// (after a retry) drop repeats by it.
    pub id: String,
    /// When it happened, ms since the Unix epoch.
    pub time_ms: u64,
    /// The tenant.
    pub tenant: String,
    /// The node the session is on.
    pub node: String,
    /// The session.
    pub session: String,
    /// The authenticated user, if the session has one.
    pub user: Option<String>,
    /// Further text fields by kind: `destination`, `subscription`, `reason`, `transport`,
    /// `remote_addr`.
    pub fields: Vec<(&'static str, String)>,
    /// A message's headers (deduplicated, the first of repeats).
    pub headers: Vec<(String, String)>,
    /// A message's body.
    pub body: Option<Bytes>,
}

/// What an item is charged in a queue beyond its bytes.
const ITEM_OVERHEAD: usize = 256;

impl Item {
    /// The bytes it holds, as charged to a queue's byte limit.
    pub fn weight(&self) -> usize {
        let text = |s: &str| s.len();
        ITEM_OVERHEAD
            + self.id.len()
            + self.session.len()
            + self.user.as_deref().map_or(0, text)
            + self.fields.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>()
            + self.body.as_ref().map_or(0, Bytes::len)
    }

    fn headers_json(&self) -> Value {
        Value::Object(
            self.headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        )
    }

    /// The item as a webhook's JSON object. A body that is not UTF-8 is `body_base64`.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "type": self.kind.as_str(),
            "id": self.id,
            "time": self.time_ms,
            "tenant": self.tenant,
            "node": self.node,
            "session": self.session,
        });
        let map = object.as_object_mut().expect("built as an object");
        if let Some(user) = &self.user {
            map.insert("user".into(), json!(user));
        }
        for (name, value) in &self.fields {
            map.insert((*name).into(), json!(value));
        }
        if self.kind == ItemKind::Message {
            map.insert("headers".into(), self.headers_json());
            let body = self.body.as_deref().unwrap_or_default();
            match std::str::from_utf8(body) {
                Ok(text) => map.insert("body".into(), json!(text)),
                Err(_) => {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
                    map.insert("body_base64".into(), json!(encoded))
                }
            };
        }
        object
    }
}

/// The item as the fields of a stream entry: the JSON object's names, `headers` as a JSON text
/// and `body` as its bytes (Redis values hold any bytes). Written straight into the command.
impl StreamEntry for Item {
    fn write_fields(&self, field: &mut dyn FnMut(&str, &[u8])) {
        field("type", self.kind.as_str().as_bytes());
        field("id", self.id.as_bytes());
        field("time", self.time_ms.to_string().as_bytes());
        field("tenant", self.tenant.as_bytes());
        field("node", self.node.as_bytes());
        field("session", self.session.as_bytes());
        if let Some(user) = &self.user {
            field("user", user.as_bytes());
        }
        for (name, value) in &self.fields {
            field(name, value.as_bytes());
        }
        if self.kind == ItemKind::Message {
            field("headers", self.headers_json().to_string().as_bytes());
            field("body", self.body.as_deref().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Item {
        Item {
            kind: ItemKind::Message,
            id: "n1-ab-1".into(),
            time_ms: 5,
            tenant: "acme".into(),
            node: "n1".into(),
            session: "n1-3".into(),
            user: Some("alice".into()),
            fields: vec![("destination", "/app/echo".into())],
            headers: vec![("reply-to".into(), "/user/queue/replies".into())],
            body: Some(Bytes::copy_from_slice(body)),
        }
    }

    #[test]
    fn a_message_is_the_same_item_in_json_and_in_a_stream_entry() {
        let item = message(b"hi");
        let json = item.to_json();
        assert_eq!(json["type"], "message");
        assert_eq!(json["user"], "alice");
        assert_eq!(json["destination"], "/app/echo");
        assert_eq!(json["headers"]["reply-to"], "/user/queue/replies");
        assert_eq!(json["body"], "hi");
        let mut fields = Vec::new();
        item.write_fields(&mut |name, value| fields.push((name.to_string(), value.to_vec())));
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get("destination"), b"/app/echo");
        assert_eq!(get("body"), b"hi");
        let headers: Value = serde_json::from_slice(&get("headers")).unwrap();
        assert_eq!(headers, json["headers"]);
    }

    #[test]
    fn a_binary_body_is_base64_in_json() {
        let json = message(&[0, 255, 1]).to_json();
        assert!(json.get("body").is_none());
        assert_eq!(json["body_base64"], "AP8B");
    }

    #[test]
    fn an_event_has_no_headers_or_body() {
        let mut item = message(b"");
        item.kind = ItemKind::Event(crate::config::EventKind::Connect);
        item.fields = vec![("transport", "sockjs".into())];
        let json = item.to_json();
        assert_eq!(json["type"], "connect");
        assert_eq!(json["transport"], "sockjs");
        assert!(json.get("headers").is_none() && json.get("body").is_none());
    }
}
