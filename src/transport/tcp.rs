//! STOMP over plain TCP: the accept loop and the socket adapter. The tenant is the CONNECT
//! `host` header when it names a configured tenant, else `default`.

use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, Instrument};

use super::io::accept;
use crate::broker::outbox::Item;
use crate::connection::{self, TransportIn, TransportOut};
use crate::node::{Node, NotAdmitted};
use crate::policy::TransportKind;
use crate::session::{Peer, Session};
use crate::web::socket::{read_ready, write_all_vectored};

/// Accepts STOMP connections until the node drains or shuts down; then the listener closes,
/// so clients and load balancers see the port refuse.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    while let Some((stream, peer)) = accept(&listener, &node.drain.started).await {
        let permit = match node.admit() {
            Ok(permit) => permit,
            Err(why) => {
                node.tasks.spawn(refuse(stream, why));
                continue;
            }
        };
        let node2 = node.clone();
        let from = Peer {
            transport: TransportKind::Tcp,
            remote_addr: Some(peer.to_string()),
            tenant: None,
            request_headers: Vec::new(),
        };
        let session = Session::new(node.session_context(), from);
        let span = info_span!("conn", transport = "tcp", session = %session.id(), peer = %peer);
        node.tasks.spawn(
            async move {
                let (read, write) = stream.into_split();
                connection::run(node2, session, TcpIn(read), TcpOut(write)).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn refuse(mut stream: TcpStream, why: NotAdmitted) {
    let message = match why {
        NotAdmitted::Draining => "server draining",
        NotAdmitted::Full => "too many connections",
    };
    let frame = format!("ERROR\nmessage:{message}\n\n{}\0", why.message());
    let _ = stream.write_all(frame.as_bytes()).await;
    let _ = stream.shutdown().await;
    debug!(?why, "connection refused");
}

struct TcpIn(OwnedReadHalf);

impl TransportIn for TcpIn {
    async fn fill(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        read_ready(&self.0, buf).await
    }
}

struct TcpOut(OwnedWriteHalf);

impl TransportOut for TcpOut {
    async fn write(&mut self, items: Vec<Item>) -> io::Result<()> {
        // Everything queued in one gathered write, from the frames' own bytes.
        let mut slices: Vec<IoSlice<'_>> = items
            .iter()
            .flat_map(|item| [&item.head[..], &item.tail[..]])
            .filter(|s| !s.is_empty())
            .map(IoSlice::new)
            .collect();
        write_all_vectored(&mut self.0, &mut slices).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}
