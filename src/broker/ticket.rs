//! What a queue message kept in a shared store carries so that it is removed from the store
//! once it is acknowledged: its entry id and where the acknowledgement goes. The broker hands
//! it on without knowing the store; whoever made the ticket (the tenant) receives the
//! acknowledgements and applies them in batches.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// One acknowledgement on its way to the store.
#[derive(Debug)]
pub struct Settled {
    /// The queue.
    pub queue: Arc<str>,
    /// The entry in the queue's stream.
    pub id: String,
    /// Told whether the store applied it (an ACK whose RECEIPT waits for it).
    pub done: Option<oneshot::Sender<bool>>,
    /// Not acknowledged but given back: its frame never reached the socket, so the entry goes
    /// back to the queue for a consumer (here or elsewhere) to claim.
    pub returned: bool,
}

/// Where acknowledgements go.
pub type SettleQueue = mpsc::UnboundedSender<Settled>;

/// The store entry a queue message is, and where its acknowledgement goes.
#[derive(Debug)]
pub struct Ticket {
    /// The queue.
    pub queue: Arc<str>,
    /// Its entry id in the queue's stream.
    pub id: String,
    /// Where the acknowledgement goes.
    pub settle: SettleQueue,
}

impl Ticket {
    /// The message was acknowledged (delivered in `auto` mode, or ACKed): the store may drop
    /// it. With `done`, told once the store did.
    pub fn acknowledged(&self, done: Option<oneshot::Sender<bool>>) {
        self.settle(done, false);
    }

    /// Its frame was lost before the socket took it (the connection failed): the entry goes
    /// back to the queue.
    pub fn returned(&self) {
        self.settle(None, true);
    }

    fn settle(&self, done: Option<oneshot::Sender<bool>>, returned: bool) {
        let settled = Settled {
            queue: self.queue.clone(),
            id: self.id.clone(),
            done,
            returned,
        };
        if let Err(unsent) = self.settle.send(settled) {
            // Its tenant is gone with its node; the entry is claimed by another node.
            if let Some(done) = unsent.0.done {
                let _ = done.send(false);
            }
        }
    }
}

/// An `auto` delivery of a durable queue's message on its way to the socket: acknowledged
/// once the writer wrote it ([`Delivered::record`]), given back if its frame is dropped
/// unwritten (a failed write, a connection closed with frames still queued), so that a node
/// dying between the hand-over and the write loses nothing and a connection that fails keeps
/// nothing.
#[derive(Debug)]
pub struct Delivered {
    ticket: Arc<Ticket>,
    recorded: std::sync::atomic::AtomicBool,
}

impl Delivered {
    /// The delivery of `ticket`'s message.
    pub fn new(ticket: Arc<Ticket>) -> Arc<Delivered> {
        Arc::new(Delivered {
            ticket,
            recorded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The frame was not taken after all (the outbox refused it): the message stays with the
    /// broker, which delivers it again, so the entry is neither acknowledged nor given back.
    pub fn cancel(&self) {
        self.recorded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The writer wrote the frame: the entry is acknowledged.
    pub fn record(&self) {
        if !self
            .recorded
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.ticket.acknowledged(None);
        }
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if !*self.recorded.get_mut() {
            self.ticket.returned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> (Arc<Ticket>, mpsc::UnboundedReceiver<Settled>) {
        let (settle, settled) = mpsc::unbounded_channel();
        let ticket = Arc::new(Ticket {
            queue: Arc::from("/queue/q"),
            id: "1-0".into(),
            settle,
        });
        (ticket, settled)
    }

    #[test]
    fn a_written_delivery_is_acknowledged_once_and_a_dropped_one_given_back() {
        let (ticket, mut settled) = ticket();
        let written = Delivered::new(ticket.clone());
        written.record();
        written.record();
        drop(written);
        let first = settled.try_recv().unwrap();
        assert!(!first.returned);
        assert!(settled.try_recv().is_err(), "once");
        drop(Delivered::new(ticket.clone()));
        assert!(
            settled.try_recv().unwrap().returned,
            "never written: back to the queue"
        );
        let refused = Delivered::new(ticket);
        refused.cancel();
        drop(refused);
        assert!(
            settled.try_recv().is_err(),
            "refused: the broker still has it"
        );
    }
}
