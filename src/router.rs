//! Routing a published message: first to this node's subscribers through the tenant's broker,
//! then to exactly the other nodes that need it through the cluster backplane; and the way
//! back in, for messages from other nodes and from the seed system's ingress channel.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tracing::warn;

use crate::broker::{Content, Interest, RouteError, Target};
use crate::cluster::{Envelope, Inbound, Kind};
use crate::metrics::DropReason;
use crate::node::{Node, Tenant};

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Subscriptions on this node it was handed to.
    pub local: usize,
    /// Other nodes it was sent to.
    pub nodes: usize,
    /// A queue kept it for a later consumer.
    pub queued: bool,
    /// The cluster bus was down, so other nodes may have missed it.
    pub cluster_unreachable: bool,
}

impl Delivery {
    /// True when some session (here or on another node) was given the message, or a queue
    /// keeps it.
    pub fn reached_anyone(&self) -> bool {
        self.local > 0 || self.nodes > 0 || self.queued
    }
}

impl Tenant {
    /// Routes `content` to `target`, here and across the cluster. With `confirm`, waits until
    /// Redis took what was forwarded (the publish API does, to answer truthfully); without,
    /// forwarding failures are logged and counted (STOMP SENDs, which no answer reports).
    pub async fn route(
        &self,
        target: &Target,
        content: Content,
        confirm: bool,
    ) -> Result<Delivery, RouteError> {
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        let mut delivery = Delivery::default();
        let remote = match target {
            Target::Topic(dest) => {
                delivery.local = self.broker.publish(target, content.clone())?.delivered;
                Some(self.cluster.to_topic(&self.id, dest, &content).await)
            }
            Target::User { user, dest } => {
                delivery.local = self.broker.publish(target, content.clone())?.delivered;
                Some(self.cluster.to_user(&self.id, user, dest, &content).await)
            }
            Target::Queue(dest) => {
                // Local consumers first: a queue message never crosses nodes needlessly.
                if self.broker.has_consumers(dest) {
                    let routed = self.broker.publish(target, content)?;
                    delivery.local = routed.delivered;
                    delivery.queued = routed.queued;
                    None
                } else {
                    match self.cluster.to_queue(&self.id, dest, &content).await {
                        Ok(f) if f.nodes > 0 => Some(Ok(f)),
                        other => {
                            let routed = self.broker.publish(target, content)?;
                            delivery.local = routed.delivered;
                            delivery.queued = routed.queued;
                            other.err().map(Err)
                        }
                    }
                }
            }
        };
        let remote = match remote {
            Some(Ok(f)) if confirm => {
                let is_topic = matches!(target, Target::Topic(_));
                let nodes = f.nodes;
                Some(
                    f.confirmed()
                        .await
                        .map(|receivers| crate::cluster::Forwarded {
                            nodes: if is_topic { receivers } else { nodes },
                            ..Default::default()
                        }),
                )
            }
            other => other,
        };
        match remote {
            Some(Ok(f)) => delivery.nodes = f.nodes,
            Some(Err(e)) => {
                delivery.cluster_unreachable = true;
                if !delivery.reached_anyone() {
                    self.metrics.dropped(DropReason::ClusterUnavailable);
                }
                warn!(tenant = %self.id, error = %e, "message not forwarded to other nodes");
            }
            None => {}
        }
        self.metrics
            .delivered_local
            .fetch_add(delivery.local as u64, Ordering::Relaxed);
        self.metrics
            .forwarded
            .fetch_add(delivery.nodes as u64, Ordering::Relaxed);
        if matches!(target, Target::User { .. })
            && !delivery.reached_anyone()
            && !delivery.cluster_unreachable
        {
            self.metrics.dropped(DropReason::UserOffline);
        }
        Ok(delivery)
    }
}

/// The node as the cluster's [`Inbound`]; weak, so the backplane does not keep the node alive.
pub struct NodeInbound(pub Weak<Node>);

impl Inbound for NodeInbound {
    fn deliver(&self, envelope: Envelope) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(tenant) = node.tenant(&envelope.tenant) else {
            warn!(tenant = %envelope.tenant, "message from another node for an unknown tenant");
            return;
        };
        let Some(content) = envelope.content() else {
            warn!("message from another node with a broken body");
            return;
        };
        let target = match (envelope.kind, envelope.user) {
            (Kind::Topic, _) => Target::Topic(envelope.dest),
            (Kind::Queue, _) => Target::Queue(envelope.dest),
            (Kind::User, Some(user)) => Target::User {
                user,
                dest: envelope.dest,
            },
            (Kind::User, None) => return,
        };
        node.metrics.received_remote.fetch_add(1, Ordering::Relaxed);
        // Local delivery only: forwarding again could loop between nodes.
        match tenant.broker.publish(&target, content) {
            Ok(routed) => {
                node.metrics
                    .delivered_local
                    .fetch_add(routed.delivered as u64, Ordering::Relaxed);
            }
            Err(e) => {
                node.metrics.dropped(DropReason::BacklogFull);
                warn!(error = %e, "message from another node not accepted");
            }
        }
    }

    fn holdings(&self) -> Vec<(String, Vec<Interest>)> {
        let Some(node) = self.0.upgrade() else {
            return Vec::new();
        };
        node.tenants()
            .map(|t| {
                let mut interests: Vec<Interest> = t
                    .broker
                    .connected_users()
                    .into_iter()
                    .map(|u| Interest::User(u, true))
                    .collect();
                interests.extend(t.broker.interests());
                (t.id.clone(), interests)
            })
            .collect()
    }

    fn ingress(&self, tenant: &str, payload: &[u8]) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(tenant) = node.tenant(tenant).cloned() else {
            return;
        };
        let payload = payload.to_vec();
        tokio::spawn(async move {
            match crate::http::publish::prepare(&tenant, &payload, node.server.max_frame_bytes)
                .await
            {
                Ok((target, content)) => match tenant.route(&target, content, true).await {
                    Ok(d) if d.reached_anyone() => {}
                    Ok(_) => warn!(tenant = %tenant.id, "ingress message reached no session"),
                    Err(e) => {
                        warn!(tenant = %tenant.id, error = %e, "ingress message not accepted")
                    }
                },
                Err((_, reason)) => {
                    node.metrics.dropped(DropReason::BadIngress);
                    warn!(tenant = %tenant.id, error = %reason, "ingress message refused");
                }
            }
        });
    }
}

/// Starts the cluster supervisor when the node is clustered.
pub fn start_cluster(node: &Arc<Node>) {
    if let Some(redis) = &node.redis {
        let inbound: Arc<dyn Inbound> = Arc::new(NodeInbound(Arc::downgrade(node)));
        tokio::spawn(redis.clone().run(inbound, node.shutdown.clone()));
    }
}
