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
        let settled = Settled {
            queue: self.queue.clone(),
            id: self.id.clone(),
            done,
        };
        if let Err(unsent) = self.settle.send(settled) {
            // Its tenant is gone with its node; the entry is claimed by another node.
            if let Some(done) = unsent.0.done {
                let _ = done.send(false);
            }
        }
    }
}
