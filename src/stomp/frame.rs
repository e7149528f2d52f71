//! The STOMP frame model: commands, protocol versions and frames, independent of the wire format.

use std::fmt;

use bytes::Bytes;

/// A STOMP command, client or server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client opens a session (all versions).
    Connect,
    /// Client opens a session (1.1+ alias of `CONNECT`).
    Stomp,
    /// Server accepts a session.
    Connected,
    /// Client publishes a message.
    Send,
    /// Client subscribes to a destination.
    Subscribe,
    /// Client ends a subscription.
    Unsubscribe,
    /// Client acknowledges a message.
    Ack,
    /// Client rejects a message (1.1+).
    Nack,
    /// Client starts a transaction.
    Begin,
    /// Client commits a transaction.
    Commit,
    /// Client rolls back a transaction.
    Abort,
    /// Client closes the session.
    Disconnect,
    /// Server delivers a message to a subscription.
    Message,
    /// Server confirms a frame that carried a `receipt` header.
    Receipt,
    /// Server reports an error, usually followed by closing the connection.
    Error,
}

impl Command {
    /// Every command, client and server.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command name as it appears on the wire, e.g. `"CONNECT"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a wire command name; the match is case-sensitive, as the spec requires.
    pub fn parse(name: &[u8]) -> Option<Command> {
        Some(match name {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// Whether header escaping applies to this command.
    ///
    /// The spec exempts `CONNECT`, `STOMP` and `CONNECTED` because they are exchanged before
    /// the version (and so the escaping rules) has been negotiated; a 1.0 peer must be able to
    /// read them, e.g. a passcode containing a backslash.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A STOMP protocol version; ordered so that `V1_0 < V1_1 < V1_2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping, LF line ends.
    V1_0,
    /// STOMP 1.1: escapes `\n`, `\c` and `\\` in headers; heart-beats; `NACK`.
    V1_1,
    /// STOMP 1.2: adds the `\r` escape and CRLF line ends.
    V1_2,
}

impl Version {
    /// Every supported version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers, e.g. `"1.2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses an exact version string such as `"1.2"`, ignoring surrounding whitespace
    /// (clients commonly write `accept-version:1.1, 1.2`).
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The WebSocket subprotocol name that selects this version, e.g. `"v12.stomp"`.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame with its headers already unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's command.
    pub command: Command,
    /// Headers in wire order; repeated names are all kept so re-encoding is faithful.
    pub headers: Vec<(String, String)>,
    /// The body as raw bytes (may contain NUL when framed by `content-length`).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (builder style); an existing header of the same name is kept, and
    /// since the first occurrence wins, the new one is shadowed by it.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body (builder style).
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name`: the spec says only the first of repeated
    /// headers counts.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_COMMANDS: [Command; 15] = Command::ALL;

    #[test]
    fn command_names_round_trip() {
        for command in ALL_COMMANDS {
            assert_eq!(Command::parse(command.as_str().as_bytes()), Some(command));
            assert_eq!(command.to_string(), command.as_str());
        }
    }

    #[test]
    fn command_parse_is_case_sensitive_and_exact() {
        assert_eq!(Command::parse(b"send"), None);
        assert_eq!(Command::parse(b"SEND "), None);
        assert_eq!(Command::parse(b""), None);
        assert_eq!(Command::parse(b"\xffSEND"), None);
    }

    #[test]
    fn only_connection_commands_skip_escaping() {
        for command in ALL_COMMANDS {
            let exempt = matches!(
                command,
                Command::Connect | Command::Stomp | Command::Connected
            );
            assert_eq!(command.escapes_headers(), !exempt, "{command}");
        }
    }

    #[test]
    fn versions_parse_exactly_after_trimming() {
        for version in Version::ALL {
            assert_eq!(Version::parse(version.as_str()), Some(version));
            assert_eq!(
                Version::parse(&format!(" {version}\t")),
                Some(version),
                "surrounding whitespace is ignored"
            );
        }
        assert_eq!(Version::parse("1.3"), None);
        assert_eq!(Version::parse("1"), None);
        assert_eq!(Version::parse("1.2.0"), None);
        assert_eq!(Version::parse(""), None);
        assert!(Version::V1_0 < Version::V1_1 && Version::V1_1 < Version::V1_2);
        assert_eq!(Version::V1_2.subprotocol(), "v12.stomp");
        assert_eq!(Version::V1_1.subprotocol(), "v11.stomp");
        assert_eq!(Version::V1_0.subprotocol(), "v10.stomp");
    }

    #[test]
    fn builder_appends_and_get_returns_first() {
        let frame = Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .header("foo", "first")
            .header("foo", "second")
            .body("hi");
        assert_eq!(frame.get("foo"), Some("first"));
        assert_eq!(frame.get("destination"), Some("/queue/a"));
        assert_eq!(frame.get("missing"), None);
        assert_eq!(frame.headers.len(), 3);
        assert_eq!(&frame.body[..], b"hi");
        assert!(Frame::new(Command::Ack).headers.is_empty());
        assert!(Frame::new(Command::Ack).body.is_empty());
    }
}
