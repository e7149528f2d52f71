//! The node as the cluster backplane sees it: messages from other nodes are delivered to this
//! node's subscribers only (forwarding them again could loop between nodes), what the node
//! holds is listed for re-announcing, and ingress messages are published here.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use tracing::warn;

use super::Node;
use crate::broker::{Interest, Target};
use crate::cluster::{Envelope, Kind, LocalNode, Query, Reply};
use crate::metrics::DropReason;
use crate::publish::{self, PublishError};

/// The node as the cluster's [`LocalNode`]; weak, so the backplane does not keep the node alive.
pub struct NodeInbound(pub Weak<Node>);

impl LocalNode for NodeInbound {
    fn deliver(&self, envelope: Envelope) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(tenant) = node.tenant(&envelope.tenant) else {
            warn!(tenant = %envelope.tenant, "message from another node for an unknown tenant");
            return;
        };
        if envelope.kind == Kind::QueueStored {
            tenant.queue_stored(&envelope.dest);
            return;
        }
        let Some(content) = envelope.content() else {
            warn!("message from another node with a broken body");
            return;
        };
        let envelope_position = envelope.position();
        let target = match (envelope.kind, envelope.user) {
            (Kind::Topic, _) => Target::Topic(envelope.dest),
            (Kind::Queue, _) => Target::Queue(envelope.dest),
            (Kind::User, Some(user)) => Target::User {
                user,
                dest: envelope.dest,
            },
            (Kind::User, None) | (Kind::QueueStored, _) => return,
        };
        node.metrics.received_remote.fetch_add(1, Ordering::Relaxed);
        // Local delivery only: forwarding again could loop between nodes.
        let delivered = match (target, envelope_position) {
            (Target::User { user, dest }, Some(at)) => {
                tenant.deliver_stored(&user, &dest, content, at)
            }
            (Target::Topic(dest), Some(at)) => tenant.deliver_stored_topic(&dest, content, at),
            (target, _) => match tenant.broker.publish(&target, content) {
                Ok(routed) => routed.delivered,
                Err(e) => {
                    node.metrics.dropped(DropReason::BacklogFull);
                    warn!(error = %e, "message from another node not accepted");
                    return;
                }
            },
        };
        node.metrics
            .delivered_local
            .fetch_add(delivered as u64, Ordering::Relaxed);
    }

    fn holdings(&self) -> Vec<(String, Vec<Interest>)> {
        let Some(node) = self.0.upgrade() else {
            return Vec::new();
        };
        node.tenants()
            .iter()
            .map(|t| {
                let mut interests: Vec<Interest> = t
                    .broker
                    .connected_users()
                    .into_iter()
                    .map(|user| Interest::User { user, held: true })
                    .collect();
                interests.extend(t.broker.interests());
                (t.id.clone(), interests)
            })
            .collect()
    }

    fn answer(&self, query: &Query) -> Reply {
        match self.0.upgrade() {
            Some(node) => node.answer_here(query),
            None => Reply::Count { n: 0 },
        }
    }

    fn banned(&self, tenant: &str, user: &str, until_ms: u64) {
        if let Some(tenant) = self.0.upgrade().and_then(|n| n.tenant(tenant)) {
            tenant.ban(user, until_ms);
        }
    }

    fn resumed(&self) {
        let Some(node) = self.0.upgrade() else { return };
        for tenant in node.tenants() {
            tenant.catch_up();
        }
    }

    fn tenant_ids(&self) -> Vec<String> {
        self.0
            .upgrade()
            .map(|node| node.tenants().iter().map(|t| t.id.clone()).collect())
            .unwrap_or_default()
    }

    fn tenants_changed(&self, id: Option<&str>) {
        let Some(node) = self.0.upgrade() else { return };
        let id = id.map(str::to_string);
        tokio::spawn(async move { node.sync_tenants(id.as_deref()).await });
    }

    fn plugin_changed(&self, tenant: &str) {
        let Some(node) = self.0.upgrade() else { return };
        let tenant = tenant.to_string();
        tokio::spawn(async move { node.sync_plugin(&tenant).await });
    }

    fn ingress(&self, tenant: &str, payload: &[u8]) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(tenant) = node.tenant(tenant) else {
            return;
        };
        let payload = payload.to_vec();
        let limits = node.server.limits();
        let metrics = node.metrics.clone();
        node.tasks.spawn(async move {
            match publish::publish(&tenant, &payload, &limits).await {
                Ok((_, d)) if d.reached_anyone() => {}
                Ok(_) => warn!(tenant = %tenant.id, "ingress message reached no session"),
                Err(e @ (PublishError::Refused(_) | PublishError::ClusterUnavailable)) => {
                    warn!(tenant = %tenant.id, error = %e, "ingress message not accepted")
                }
                Err(e) => {
                    metrics.dropped(DropReason::BadIngress);
                    warn!(tenant = %tenant.id, error = %e, "ingress message refused");
                }
            }
        });
    }
}
