//! One SockJS session: the messages waiting for a receiver, the close state, the single
//! receiver slot, and the application's two halves ([`Connection`] to read, [`Sender`] to write).
//!
//! A session outlives the HTTP requests that carry it. Receivers (a poll, a streaming response,
//! a WebSocket) attach one at a time and pull [`Next`] items; a receiver that goes away before
//! it finished (the client dropped the request) interrupts the session, as the protocol asks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Code and reason of the close frame sent when the application closes without saying why.
pub const GO_AWAY: (u16, &str) = (3000, "Go away!");
/// The close frame for a receiver that went away mid-response.
pub const INTERRUPTED: (u16, &str) = (1002, "Connection interrupted");
/// The close frame for a second receiver on a session that has one.
pub const ANOTHER_CONNECTION: (u16, &str) = (2010, "Another connection still open");

/// Messages from the client that the application has not read yet, per session; an `xhr_send`
/// waits for room beyond this.
const INCOMING_MESSAGES: usize = 256;

/// The transport that opened a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/<server>/<session>/websocket`.
    WebSocket,
    /// `/websocket`, without SockJS framing.
    RawWebSocket,
    /// `xhr` polling.
    XhrPolling,
    /// `xhr_streaming`.
    XhrStreaming,
    /// `eventsource`.
    EventSource,
    /// `htmlfile`.
    HtmlFile,
    /// `jsonp` polling.
    JsonpPolling,
}

impl Transport {
    /// The name in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::RawWebSocket => "raw-websocket",
            Transport::XhrPolling => "xhr",
            Transport::XhrStreaming => "xhr_streaming",
            Transport::EventSource => "eventsource",
            Transport::HtmlFile => "htmlfile",
            Transport::JsonpPolling => "jsonp",
        }
    }
}

/// What the application learns of the request that opened a session.
#[derive(Debug, Clone)]
pub struct OpenInfo {
    /// The transport of the opening request.
    pub transport: Transport,
    /// The client's address, when the server was started with connect info.
    pub peer: Option<SocketAddr>,
    /// The opening request's headers (cookies, `Origin`, `User-Agent`, ...).
    pub headers: HeaderMap,
}

impl OpenInfo {
    /// The client's address of `req`, when the server was started with connect info.
    pub(crate) fn peer_of(req: &axum::extract::Request) -> Option<SocketAddr> {
        req.extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
    }

    /// What `req` tells of its client.
    pub(crate) fn of(transport: Transport, req: &axum::extract::Request) -> OpenInfo {
        OpenInfo {
            transport,
            peer: OpenInfo::peer_of(req),
            headers: owned(req.headers()),
        }
    }
}

/// A copy of `headers` that owns its values. The server's header values are views of the
/// connection's whole read buffer (8 KiB or more), which a session that kept them would keep
/// alive for as long as it lives: on an idle WebSocket session, more than everything else.
fn owned(headers: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut own = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        own.set_sensitive(value.is_sensitive());
        copy.append(name.clone(), own);
    }
    copy
}

/// What a receiver sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The open frame: the first thing any session sends.
    Open,
    /// Messages, in order.
    Messages(Vec<String>),
    /// Nothing happened within the heartbeat interval.
    Heartbeat,
    /// The session is closed.
    Close(u16, String),
}

struct State {
    queue: VecDeque<String>,
    /// Client messages the application has not read yet (at most [`INCOMING_MESSAGES`]).
    /// Kept here rather than in a channel, which would allocate a block of slots for every
    /// session up front, idle or not.
    incoming: VecDeque<String>,
    queued_bytes: usize,
    /// Messages ever queued, and ever handed to a receiver: a sender waiting for its
    /// messages to leave compares the two.
    queued_total: u64,
    taken_total: u64,
    open_sent: bool,
    closed: Option<(u16, String)>,
    has_receiver: bool,
    /// Since when no receiver is attached; the session expires after the disconnect delay.
    idle_since: Instant,
}

/// The shared state of one session.
pub(crate) struct Session {
    state: Mutex<State>,
    /// Woken when there is something for the receiver.
    wake: Notify,
    /// Woken when the queue drained (a receiver took it).
    room: Notify,
    /// Cancelled once the session is closed, ending the application's reads.
    closed: CancellationToken,
    /// Woken when a client message arrived for the application.
    arrived: Notify,
    /// Woken when the application took a client message.
    taken: Notify,
    max_queue_bytes: usize,
    /// Told whenever a receiver attaches (`true`) or goes (`false`).
    watcher: Mutex<Option<ReceiverWatcher>>,
}

/// What the application is told of receivers coming and going.
pub type ReceiverWatcher = Arc<dyn Fn(bool) + Send + Sync>;

impl Session {
    /// A new session.
    pub fn new(max_queue_bytes: usize, open_sent: bool) -> Arc<Self> {
        Arc::new(Session {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                incoming: VecDeque::new(),
                queued_bytes: 0,
                queued_total: 0,
                taken_total: 0,
                open_sent,
                closed: None,
                has_receiver: false,
                idle_since: Instant::now(),
            }),
            wake: Notify::new(),
            room: Notify::new(),
            closed: CancellationToken::new(),
            arrived: Notify::new(),
            taken: Notify::new(),
            max_queue_bytes,
            watcher: Mutex::new(None),
        })
    }

    fn watcher(&self) -> Option<ReceiverWatcher> {
        self.watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a panic-prone call; a poisoned lock still holds
        // consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the receiver, or says that another one is attached.
    pub fn attach(self: &Arc<Self>) -> Option<Receiver> {
        let mut state = self.state();
        if state.has_receiver {
            return None;
        }
        state.has_receiver = true;
        drop(state);
        if let Some(watch) = self.watcher() {
            watch(true);
        }
        Some(Receiver {
            session: self.clone(),
            finished: false,
        })
    }

    /// Hands client messages to the application, waiting while it is behind. Messages for a
    /// closed session are dropped: the client learns of the close from its next receiver.
    pub async fn deliver(&self, messages: Vec<String>) {
        for message in messages {
            loop {
                let taken = self.taken.notified();
                tokio::pin!(taken);
                // Registered before looking, so a take between the look and the wait wakes us.
                taken.as_mut().enable();
                {
                    let mut state = self.state();
                    if state.closed.is_some() {
                        return;
                    }
                    if state.incoming.len() < INCOMING_MESSAGES {
                        state.incoming.push_back(message);
                        break;
                    }
                }
                tokio::select! {
                    _ = self.closed.cancelled() => return,
                    () = taken => {}
                }
            }
            self.arrived.notify_one();
        }
    }

    /// The next client message for the application; `None` once the session is closed and
    /// what arrived before was read.
    async fn next_incoming(&self) -> Option<String> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(message) = state.incoming.pop_front() {
                    if state.incoming.is_empty() {
                        // Given back: an idle session keeps no buffer.
                        state.incoming = VecDeque::new();
                    }
                    drop(state);
                    self.taken.notify_one();
                    return Some(message);
                }
                if state.closed.is_some() {
                    return None;
                }
            }
            tokio::select! {
                _ = self.closed.cancelled() => {}
                () = arrived => {}
            }
        }
    }

    /// Closes the session; the first close wins.
    pub fn close(&self, code: u16, reason: &str) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some((code, reason.to_string()));
        }
        drop(state);
        self.closed.cancel();
        self.wake.notify_one();
        self.room.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Whether the session has had no receiver for `delay`.
    pub fn expired(&self, delay: Duration, now: Instant) -> bool {
        let state = self.state();
        !state.has_receiver && now.duration_since(state.idle_since) >= delay
    }

    /// Queues `messages`; the count of messages ever queued once they are.
    async fn send(&self, messages: Vec<String>) -> Result<u64, Closed> {
        loop {
            let room = self.room.notified();
            {
                let mut state = self.state();
                if state.closed.is_some() {
                    return Err(Closed);
                }
                if messages.is_empty() {
                    return Ok(state.queued_total);
                }
                if state.queued_bytes < self.max_queue_bytes {
                    state.queued_total += messages.len() as u64;
                    for message in messages {
                        state.queued_bytes += message.len();
                        state.queue.push_back(message);
                    }
                    let total = state.queued_total;
                    drop(state);
                    self.wake.notify_one();
                    return Ok(total);
                }
            }
            room.await;
        }
    }

    /// Waits until a receiver has taken the first `total` messages ever queued.
    async fn taken(&self, total: u64) -> Result<(), Closed> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so a take between the look and the wait wakes us.
            room.as_mut().enable();
            {
                let state = self.state();
                if state.taken_total >= total {
                    return Ok(());
                }
                if state.closed.is_some() {
                    return Err(Closed);
                }
            }
            room.await;
        }
    }

    /// The next thing for the attached receiver; waits up to `heartbeat` (forever if `None`).
    /// Cancel-safe: nothing is taken from the session unless it is returned.
    async fn next(&self, heartbeat: Option<Duration>) -> Next {
        let deadline = heartbeat.map(|h| Instant::now() + h);
        loop {
            let woken = self.wake.notified();
            {
                let mut state = self.state();
                if !state.open_sent {
                    state.open_sent = true;
                    return Next::Open;
                }
                if !state.queue.is_empty() {
                    let messages: Vec<String> = state.queue.drain(..).collect();
                    state.queued_bytes = 0;
                    state.taken_total = state.queued_total;
                    drop(state);
                    self.room.notify_waiters();
                    return Next::Messages(messages);
                }
                if let Some((code, reason)) = &state.closed {
                    return Next::Close(*code, reason.clone());
                }
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, woken).await.is_err() {
                        return Next::Heartbeat;
                    }
                }
                None => woken.await,
            }
        }
    }
}

/// The session was closed: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the SockJS session is closed")
    }
}

impl std::error::Error for Closed {}

/// The attached receiver. Dropped without [`Receiver::finish`] (the client went away
/// mid-response), it interrupts the session.
pub(crate) struct Receiver {
    session: Arc<Session>,
    finished: bool,
}

impl Receiver {
    pub async fn next(&self, heartbeat: Option<Duration>) -> Next {
        self.session.next(heartbeat).await
    }

    /// The response ended as the protocol intends (a poll answered, a limit reached, a close
    /// frame sent): the session stays, waiting for the next receiver.
    pub fn finish(mut self) {
        self.finished = true;
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.finished {
            self.session.close(INTERRUPTED.0, INTERRUPTED.1);
        }
        {
            let mut state = self.session.state();
            state.has_receiver = false;
            state.idle_since = Instant::now();
        }
        if let Some(watch) = self.session.watcher() {
            watch(false);
        }
    }
}

/// Closes the session once the application dropped both its halves.
struct AppHandle(Arc<Session>);

impl Drop for AppHandle {
    fn drop(&mut self) {
        self.0.close(GO_AWAY.0, GO_AWAY.1);
    }
}

/// The application's side of a session: read the client's messages, and get a [`Sender`].
/// Dropping it and every [`Sender`] closes the session with `3000 "Go away!"`.
pub struct Connection {
    /// About the opening request.
    pub info: OpenInfo,
    handle: Arc<AppHandle>,
}

impl Connection {
    pub(crate) fn new(info: OpenInfo, session: Arc<Session>) -> Self {
        Connection {
            info,
            handle: Arc::new(AppHandle(session)),
        }
    }

    /// The next message from the client; `None` once the session is closed (by either side,
    /// by an interrupted receiver, or by expiry).
    pub async fn recv(&mut self) -> Option<String> {
        self.handle.0.next_incoming().await
    }

    /// Has `watch` told whenever a receiver (a poll, a stream, the WebSocket) attaches or goes
    /// away, starting with whether one is attached now: what the application hands over is
    /// known to have been taken up by the client once a later receiver came.
    pub fn watch_receivers(&self, watch: impl Fn(bool) + Send + Sync + 'static) {
        let session = &self.handle.0;
        let watch: ReceiverWatcher = Arc::new(watch);
        *session.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch.clone());
        let attached = session.state().has_receiver;
        watch(attached);
    }

    /// A handle to send with, usable from another task.
    pub fn sender(&self) -> Sender {
        Sender {
            handle: self.handle.clone(),
        }
    }
}

/// Sends to the client of a session.
#[derive(Clone)]
pub struct Sender {
    handle: Arc<AppHandle>,
}

impl Sender {
    /// Queues messages for the client. Waits while too much is queued for a client that is
    /// not reading; fails once the session is closed.
    pub async fn send(&self, messages: Vec<String>) -> Result<(), Closed> {
        self.handle.0.send(messages).await.map(|_| ())
    }

    /// Queues messages and waits until a receiver (a response or the WebSocket) has taken
    /// them: what the application counts as sent then left the session, rather than waiting in
    /// it for a client that may never come back. Fails if the session closes first.
    pub async fn send_and_hand_over(&self, messages: Vec<String>) -> Result<(), Closed> {
        let total = self.handle.0.send(messages).await?;
        self.handle.0.taken(total).await
    }

    /// Closes the session: receivers get `c[code,"reason"]` after what was queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.handle.0.close(code, reason);
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.handle.0.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The application's side of `session`, opened by an xhr-polling request.
    fn polling(session: &Arc<Session>) -> Connection {
        let info = OpenInfo {
            transport: Transport::XhrPolling,
            peer: None,
            headers: HeaderMap::new(),
        };
        Connection::new(info, session.clone())
    }

    #[tokio::test]
    async fn open_then_messages_then_close() {
        let session = Session::new(1 << 20, false);
        let receiver = session.attach().unwrap();
        assert!(session.attach().is_none(), "one receiver at a time");
        assert_eq!(receiver.next(None).await, Next::Open);
        session.send(vec!["a".into(), "b".into()]).await.unwrap();
        session.close(3000, "Go away!");
        assert_eq!(
            receiver.next(None).await,
            Next::Messages(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            receiver.next(None).await,
            Next::Close(3000, "Go away!".into())
        );
        assert!(session.send(vec!["c".into()]).await.is_err());
        receiver.finish();
        assert!(
            session.attach().is_some(),
            "a finished receiver frees the slot"
        );
    }

    #[tokio::test]
    async fn a_hand_over_completes_when_a_receiver_takes_the_messages() {
        let session = Session::new(1 << 20, true);
        let connection = polling(&session);
        let sender = connection.sender();
        let handing = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send_and_hand_over(vec!["a".into()]).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !handing.is_finished(),
            "queued, not yet taken by a receiver"
        );
        let receiver = session.attach().unwrap();
        assert_eq!(receiver.next(None).await, Next::Messages(vec!["a".into()]));
        assert_eq!(handing.await.unwrap(), Ok(()));
        receiver.finish();
        // A session that closes with the messages still queued says so.
        let stuck = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send_and_hand_over(vec!["b".into()]).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.close(3000, "Go away!");
        assert_eq!(stuck.await.unwrap(), Err(Closed));
        drop(connection);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_when_idle() {
        let session = Session::new(1 << 20, true);
        let receiver = session.attach().unwrap();
        assert_eq!(
            receiver.next(Some(Duration::from_secs(25))).await,
            Next::Heartbeat
        );
    }

    #[tokio::test]
    async fn a_dropped_receiver_interrupts() {
        let session = Session::new(1 << 20, true);
        drop(session.attach().unwrap());
        let receiver = session.attach().unwrap();
        assert_eq!(
            receiver.next(None).await,
            Next::Close(1002, "Connection interrupted".into())
        );
    }

    #[tokio::test]
    async fn dropping_the_application_closes() {
        let session = Session::new(1 << 20, true);
        let connection = polling(&session);
        let sender = connection.sender();
        drop(connection);
        assert!(!session.is_closed(), "the sender still holds it open");
        drop(sender);
        assert!(session.is_closed());
    }
}
