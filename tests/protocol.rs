//! STOMP protocol semantics against a real node over TCP: CONNECT and version negotiation,
//! receipts, errors, DISCONNECT, heart-beats, transactions and acknowledgements.

mod support;

use std::time::Duration;

use stompbox::stomp::{Command, Frame};
use support::*;

#[tokio::test]
async fn connected_names_version_server_session_and_user() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    let connected = c.connect_as("alice").await;
    assert_eq!(connected.get("version"), Some("1.2"));
    assert_eq!(connected.get("user-name"), Some("alice"));
    assert!(connected.get("server").unwrap().starts_with("stompbox/"));
    assert!(!connected.get("session").unwrap().is_empty());
    assert_eq!(connected.get("heart-beat"), Some("1000,1000"));

    let mut anon = Client::tcp(node.stomp).await;
    let connected = anon.connect(&[]).await;
    assert_eq!(connected.get("user-name"), None);
    // `login` names the user when there is no `userid`.
    let mut by_login = Client::tcp(node.stomp).await;
    let connected = by_login.connect(&[("login", "carol")]).await;
    assert_eq!(connected.get("user-name"), Some("carol"));
}

#[tokio::test]
async fn version_negotiation_picks_the_highest_common() {
    let node = TestNode::default().await;
    for (accept, expected) in [("1.0,1.1", "1.1"), ("1.1,1.2,2.0", "1.2"), ("1.0", "1.0")] {
        let mut c = Client::tcp(node.stomp).await;
        c.send_raw(format!("STOMP\naccept-version:{accept}\nhost:default\n\n\0").as_bytes())
            .await;
        let connected = c.expect(Command::Connected).await;
        assert_eq!(connected.get("version"), Some(expected), "accept {accept}");
    }
    // No accept-version at all is a 1.0 client.
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\n\n\0").await;
    let connected = c.expect(Command::Connected).await;
    assert_eq!(connected.get("version"), Some("1.0"));
}

#[tokio::test]
async fn unsupported_version_gets_error_with_version_header() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:2.0,3.1\n\n\0").await;
    let error = c.expect_error("unsupported STOMP version").await;
    assert_eq!(error.get("version"), Some("1.0,1.1,1.2"));
}

#[tokio::test]
async fn frames_before_connect_are_refused() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"SEND\ndestination:/topic/a\nreceipt:77\n\nhi\0")
        .await;
    let error = c.expect_error("expected CONNECT").await;
    assert_eq!(error.get("receipt-id"), Some("77"));
}

#[tokio::test]
async fn receipts_answer_every_frame_but_connect() {
    let node = TestNode::default().await;
    let mut c = tcp_user(&node, "alice").await;
    c.subscribe("s1", "/topic/r", "auto").await;
    c.send(
        Frame::new(Command::Unsubscribe)
            .header("id", "s1")
            .header("receipt", "u1"),
    )
    .await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("u1")
    );
    c.send(
        Frame::new(Command::Begin)
            .header("transaction", "t")
            .header("receipt", "b1"),
    )
    .await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("b1")
    );
    c.send(
        Frame::new(Command::Abort)
            .header("transaction", "t")
            .header("receipt", "a1"),
    )
    .await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("a1")
    );
    c.send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("bye")
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn protocol_errors_carry_receipt_id_and_a_message_then_close() {
    let node = TestNode::default().await;
    let cases: [(&[u8], &str); 8] = [
        (
            b"SUBSCRIBE\ndestination:/topic/a\nreceipt:r\n\n\0",
            "missing id header",
        ),
        (
            b"SUBSCRIBE\nid:1\nreceipt:r\n\n\0",
            "missing destination header",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:/nowhere\nreceipt:r\n\n\0",
            "invalid destination",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\nreceipt:r\n\n\0",
            "invalid ack mode",
        ),
        (
            b"UNSUBSCRIBE\nid:nope\nreceipt:r\n\n\0",
            "unknown subscription",
        ),
        (
            b"COMMIT\ntransaction:never\nreceipt:r\n\n\0",
            "unknown transaction",
        ),
        (b"ACK\nid:bogus\nreceipt:r\n\n\0", "unknown message"),
        (
            b"MESSAGE\ndestination:/topic/a\nreceipt:r\n\n\0",
            "unexpected frame",
        ),
    ];
    for (frame, message) in cases {
        let mut c = tcp_user(&node, "alice").await;
        c.send_raw(frame).await;
        let error = c.expect_error(message).await;
        assert_eq!(error.get("receipt-id"), Some("r"), "{message}");
        assert!(!error.body.is_empty(), "the body explains: {message}");
    }
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_close() {
    let node = TestNode::start("[server]\nmax_frame_bytes = 1024\nmax_headers = 8\n").await;
    let big_body = format!("SEND\ndestination:/topic/a\n\n{}\0", "x".repeat(2000));
    let many_headers = format!(
        "SEND\ndestination:/topic/a\n{}\n\0",
        (0..20).map(|i| format!("h{i}:v\n")).collect::<String>()
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"BOGUS\n\n\0".to_vec(), "malformed frame"),
        (b"SEND\nno colon here\n\n\0".to_vec(), "malformed frame"),
        (
            b"SEND\ndestination:/topic/a\nx:bad\\tescape\n\n\0".to_vec(),
            "malformed frame",
        ),
        (
            b"SEND\ndestination:/topic/a\ncontent-length:abc\n\n\0".to_vec(),
            "malformed frame",
        ),
        (
            b"SEND\ndestination:/topic/a\ncontent-length:2\n\nabc\0".to_vec(),
            "malformed frame",
        ),
        (
            b"SEND\ndestination:/topic/a\ncontent-length:999999\n\n".to_vec(),
            "malformed frame",
        ),
        (big_body.into_bytes(), "malformed frame"),
        (many_headers.into_bytes(), "malformed frame"),
    ];
    for (bytes, message) in cases {
        let mut c = tcp_user(&node, "alice").await;
        c.send_raw(&bytes).await;
        let error = c.expect_error(message).await;
        assert!(!error.body.is_empty());
    }
    // The node is unharmed.
    let mut c = tcp_user(&node, "alice").await;
    c.subscribe("1", "/topic/ok", "auto").await;
}

#[tokio::test]
async fn oversized_frame_is_refused_before_it_is_all_sent() {
    let node = TestNode::start("[server]\nmax_frame_bytes = 1024\n").await;
    let mut c = tcp_user(&node, "alice").await;
    // Only the start of a frame that declares 1 MB: the error comes without the rest.
    c.send_raw(b"SEND\ndestination:/topic/a\ncontent-length:1000000\n\nxxxx")
        .await;
    c.expect_error("malformed frame").await;
}

#[tokio::test]
async fn frames_split_across_reads_and_batched_in_one_read() {
    let node = TestNode::default().await;
    let mut sub = tcp_user(&node, "bob").await;
    sub.subscribe("1", "/topic/split", "auto").await;
    let mut c = Client::tcp(node.stomp).await;
    let all = b"CONNECT\r\naccept-version:1.2\r\nhost:default\r\n\r\n\0\n\nSEND\ndestination:/topic/split\ncontent-length:3\n\na\0b\0SEND\ndestination:/topic/split\n\nsecond\0";
    for chunk in all.chunks(7) {
        c.send_raw(chunk).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.expect(Command::Connected).await;
    assert_eq!(&sub.expect(Command::Message).await.body[..], b"a\0b");
    sub.expect_message("second").await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connections() {
    let node = TestNode::start("[server]\nconnect_timeout_ms = 200\n").await;
    let mut c = Client::tcp(node.stomp).await;
    c.expect_error("CONNECT timeout").await;
}

#[tokio::test]
async fn heart_beats_flow_both_ways_and_a_silent_peer_is_closed() {
    let node =
        TestNode::start("[server]\nheartbeat_ms = [100, 100]\nheartbeat_tolerance = 2.0\n").await;
    // The client can send every 50 ms and wants one every 50 ms: the server sends every
    // max(100, 50) = 100 ms and expects one every max(50, 100) = 100 ms (x2 tolerance).
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:50,50\n\n\0")
        .await;
    let connected = c.expect(Command::Connected).await;
    assert_eq!(connected.get("heart-beat"), Some("100,100"));
    // Keep beating for a while: still connected, and the server beat too.
    for _ in 0..8 {
        c.send_raw(b"\n").await;
        assert!(c.recv_within(Duration::from_millis(60)).await.is_none());
    }
    assert!(
        c.heartbeats >= 2,
        "server heart-beats seen: {}",
        c.heartbeats
    );
    // Go silent: closed with an ERROR once 200 ms pass without a byte.
    c.expect_error("heart-beat timeout").await;
}

#[tokio::test]
async fn a_client_gets_the_heart_beats_it_asks_for_with_the_default_configuration() {
    let node = TestNode::default().await;
    // Asks for a beat every second (a proxy with a short idle timeout): it gets them.
    let mut fast = Client::tcp(node.stomp).await;
    fast.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:1000,1000\n\n\0")
        .await;
    fast.expect(Command::Connected).await;
    // Asks for one every 10 s: it gets no more than that.
    let mut slow = Client::tcp(node.stomp).await;
    slow.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:10000,10000\n\n\0")
        .await;
    slow.expect(Command::Connected).await;
    for _ in 0..5 {
        fast.send_raw(b"\n").await;
        assert!(fast.recv_within(Duration::from_millis(500)).await.is_none());
    }
    assert!(
        fast.heartbeats >= 2,
        "server heart-beats in 2.5 s: {}",
        fast.heartbeats
    );
    slow.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(slow.heartbeats, 0);
}

#[tokio::test]
async fn no_heart_beats_when_either_side_says_zero() {
    let node = TestNode::start("[server]\nheartbeat_ms = [50, 50]\n").await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    c.expect(Command::Connected).await;
    c.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(c.heartbeats, 0);
    c.subscribe("1", "/topic/alive", "auto").await;
}

#[tokio::test]
async fn absurd_heart_beat_offers_are_clamped_not_fatal() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(
        b"CONNECT\naccept-version:1.2\nheart-beat:18446744073709551615,18446744073709551615\n\n\0",
    )
    .await;
    c.expect(Command::Connected).await;
    c.subscribe("1", "/topic/still-alive", "auto").await;
}

#[tokio::test]
async fn invalid_heart_beat_header_is_an_error() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:often\n\n\0")
        .await;
    c.expect_error("invalid heart-beat").await;
}

#[tokio::test]
async fn send_headers_pass_through_to_message() {
    let node = TestNode::default().await;
    let mut sub = tcp_user(&node, "a").await;
    sub.subscribe("s", "/topic/h", "auto").await;
    let mut pubc = tcp_user(&node, "b").await;
    pubc.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/h")
            .header("content-type", "application/json")
            .header("x-trace", "a:b\nc")
            .header("x-trace", "second is ignored")
            .body(&b"{}"[..]),
    )
    .await;
    let m = sub.expect_message("{}").await;
    assert_eq!(m.get("subscription"), Some("s"));
    assert_eq!(m.get("destination"), Some("/topic/h"));
    assert_eq!(m.get("content-type"), Some("application/json"));
    assert_eq!(m.get("content-length"), Some("2"));
    assert_eq!(m.get("x-trace"), Some("a:b\nc"));
    assert!(m.get("message-id").is_some());
    assert_eq!(m.get("ack"), None, "no ack header in auto mode");
}

#[tokio::test]
async fn stomp_1_0_clients_get_unescaped_frames_and_optional_ids() {
    let node = TestNode::default().await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\nlogin:old\n\n\0").await;
    c.expect(Command::Connected).await;
    c.version = stompbox::stomp::Version::V1_0;
    c.send_raw(b"SUBSCRIBE\ndestination:/topic/old\nreceipt:r\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    let mut p = tcp_user(&node, "p").await;
    p.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/old")
            .header("x", "a:b")
            .body(&b"hi"[..]),
    )
    .await;
    let m = c.expect_message("hi").await;
    assert_eq!(m.get("subscription"), Some("/topic/old"));
    assert_eq!(m.get("x"), Some("a:b"));
    c.send_raw(b"UNSUBSCRIBE\ndestination:/topic/old\nreceipt:u\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
}

#[tokio::test]
async fn transactions_cover_send_and_ack_and_abort_on_disconnect() {
    let node = TestNode::default().await;
    let mut sub = tcp_user(&node, "s").await;
    sub.subscribe("1", "/topic/tx", "auto").await;
    let mut c = tcp_user(&node, "p").await;
    c.send(Frame::new(Command::Begin).header("transaction", "t1"))
        .await;
    for body in ["one", "two"] {
        c.send(
            Frame::new(Command::Send)
                .header("destination", "/topic/tx")
                .header("transaction", "t1")
                .body(body.as_bytes().to_vec()),
        )
        .await;
    }
    sub.expect_nothing(Duration::from_millis(150)).await;
    c.send(
        Frame::new(Command::Commit)
            .header("transaction", "t1")
            .header("receipt", "c"),
    )
    .await;
    c.expect(Command::Receipt).await;
    sub.expect_message("one").await;
    sub.expect_message("two").await;

    // Aborted: nothing.
    c.send(Frame::new(Command::Begin).header("transaction", "t2"))
        .await;
    c.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/tx")
            .header("transaction", "t2")
            .body(&b"no"[..]),
    )
    .await;
    c.send(Frame::new(Command::Abort).header("transaction", "t2"))
        .await;
    // Open at disconnect: aborted.
    c.send(Frame::new(Command::Begin).header("transaction", "t3"))
        .await;
    c.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/tx")
            .header("transaction", "t3")
            .body(&b"never"[..]),
    )
    .await;
    c.send(Frame::new(Command::Disconnect).header("receipt", "d"))
        .await;
    c.expect(Command::Receipt).await;
    sub.expect_nothing(Duration::from_millis(200)).await;

    // A transactional ACK only counts at COMMIT.
    let mut q = tcp_user(&node, "q").await;
    q.subscribe("1", "/queue/txack", "client-individual").await;
    let mut other = tcp_user(&node, "o").await;
    other.send_to("/queue/txack", "m").await;
    let m = q.expect_message("m").await;
    let ack = m.get("ack").unwrap().to_string();
    q.send(Frame::new(Command::Begin).header("transaction", "ta"))
        .await;
    q.send(
        Frame::new(Command::Ack)
            .header("id", ack.as_str())
            .header("transaction", "ta"),
    )
    .await;
    q.send(
        Frame::new(Command::Abort)
            .header("transaction", "ta")
            .header("receipt", "x"),
    )
    .await;
    q.expect(Command::Receipt).await;
    // Not acknowledged, so a second consumer gets it when this one leaves.
    let mut q2 = tcp_user(&node, "q2").await;
    q2.subscribe("1", "/queue/txack", "auto").await;
    drop(q);
    q2.expect_message("m").await;
}

#[tokio::test]
async fn duplicate_subscription_id_and_too_many_subscriptions_are_errors() {
    let node = TestNode::start("[server]\nmax_subscriptions = 2\n").await;
    let mut c = tcp_user(&node, "a").await;
    c.subscribe("1", "/topic/a", "auto").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/topic/b"),
    )
    .await;
    c.expect_error("duplicate subscription id").await;

    let mut c = tcp_user(&node, "a").await;
    c.subscribe("1", "/topic/a", "auto").await;
    c.subscribe("2", "/topic/b", "auto").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "3")
            .header("destination", "/topic/c"),
    )
    .await;
    c.expect_error("too many subscriptions").await;
}

#[tokio::test]
async fn a_frame_that_stalls_halfway_is_not_held_for_ever() {
    let node = TestNode::start("[server]\nframe_timeout_ms = 300\n").await;
    let mut c = Client::tcp(node.stomp).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    c.expect(Command::Connected).await;
    // content-length promises 100 bytes; 3 arrive, then nothing.
    c.send_raw(b"SEND\ndestination:/topic/a\ncontent-length:100\n\nabc")
        .await;
    let started = std::time::Instant::now();
    c.expect_error("frame timeout").await;
    assert!(started.elapsed() < Duration::from_secs(3));

    // A slow but steady frame within the limit is fine, and the limit is per frame.
    let mut slow = Client::tcp(node.stomp).await;
    slow.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0")
        .await;
    slow.expect(Command::Connected).await;
    for _ in 0..3 {
        for piece in [
            &b"SEND\ndestination:/topic/a\n"[..],
            b"receipt:r\n\n",
            b"x\0",
        ] {
            slow.send_raw(piece).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        slow.expect(Command::Receipt).await;
    }
}
