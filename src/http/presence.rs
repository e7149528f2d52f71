//! Who is online, and closing a user's sessions, across the cluster (with one of the tenant's
//! API keys, or the admin token):
//! `GET /api/v1/tenants/{t}/users/{user}`, `GET .../users?cursor=&limit=`,
//! `GET .../destinations/{destination}` and `DELETE .../users/{user}/sessions[?ban_seconds=N]`.
//!
//! Each asks every live node (this one directly, the others through
//! [`crate::cluster::Backplane::ask_others`]) and adds the replies up; a node that did not
//! reply within a second is named in `unanswered`, so a count is never silently short. The
//! users list is paged by name: every node gives its first `limit` names after the cursor,
//! and the first `limit` of their union are the page (the cursor is the page's last name,
//! base64url-encoded).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryString, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{api_tenant, Refused};
use crate::cluster::{Query, Replies, Reply};
use crate::node::Node;

/// Users in one page unless asked otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// The longest ban, in seconds (30 days).
const MAX_BAN_SECONDS: u64 = 30 * 24 * 3600;

/// The tenant named in the path, for a backend with one of its API keys or for the operator
/// with the admin token (the console looks users up and disconnects them).
fn presence_tenant(
    node: &Node,
    tenant_id: &str,
    headers: &HeaderMap,
) -> Result<Arc<crate::tenant::Tenant>, Refused> {
    if super::admin::operator(node, headers).is_ok() {
        return super::admin::authorize(node, headers, tenant_id);
    }
    api_tenant(node, tenant_id, headers)
}

/// Asks every node: this one's reply first, then the others'.
async fn ask_all(node: &Node, query: Query) -> Result<Replies, Refused> {
    let here = node.answer_here(&query);
    let mut replies = node.cluster.ask_others(&query).await.map_err(|e| {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the other nodes could not be asked: {e}"),
        )
    })?;
    replies.by_node.insert(0, (node.node_id.clone(), here));
    Ok(replies)
}

fn counts(replies: &Replies, name: &str) -> (usize, Vec<Value>) {
    let mut total = 0;
    let mut nodes = Vec::new();
    for (node, reply) in &replies.by_node {
        if let Reply::Count { n } = reply {
            total += n;
            if *n > 0 {
                nodes.push(json!({ "node": node, name: n }));
            }
        }
    }
    (total, nodes)
}

/// `GET .../users/{user}`: whether the user is online, with how many sessions on which nodes.
pub async fn user(
    State(node): State<Arc<Node>>,
    Path((tenant_id, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let tenant = presence_tenant(&node, &tenant_id, &headers)?;
    let query = Query::Sessions {
        tenant: tenant.id.clone(),
        user: user.clone(),
    };
    let replies = ask_all(&node, query).await?;
    let (sessions, nodes) = counts(&replies, "sessions");
    Ok(Json(json!({
        "user": user,
        "online": sessions > 0,
        "sessions": sessions,
        "nodes": nodes,
        "unanswered": replies.missing,
    }))
    .into_response())
}

/// The query string of the users list.
#[derive(Debug, Deserialize)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET .../users`: a page of online users, in name order.
pub async fn users(
    State(node): State<Arc<Node>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    page: Result<QueryString<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refused> {
    let tenant = presence_tenant(&node, &tenant_id, &headers)?;
    let Ok(QueryString(page)) = page else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "the query string takes cursor (from next_cursor) and limit (1 to 1000)",
        ));
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            &format!("limit must be between 1 and {MAX_PAGE}, got {limit}"),
        ));
    }
    let after = match page.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(cursor) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(name) => Some(name),
            None => {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    "cursor is not one this API gave (use next_cursor as it came)",
                ))
            }
        },
    };
    let query = Query::Users {
        tenant: tenant.id.clone(),
        after,
        limit,
    };
    let replies = ask_all(&node, query).await?;
    let mut union = BTreeSet::new();
    for (_, reply) in &replies.by_node {
        if let Reply::Users { names } = reply {
            union.extend(names.iter().cloned());
        }
    }
    let page: Vec<String> = union.into_iter().take(limit).collect();
    let next = (page.len() == limit).then(|| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(page[limit - 1].as_bytes())
    });
    Ok(Json(json!({
        "users": page,
        "next_cursor": next,
        "unanswered": replies.missing,
    }))
    .into_response())
}

/// `GET .../destinations/{destination}`: subscriptions to a destination, cluster-wide. The
/// destination may be given as path segments (`destinations/topic/news`) or as one
/// percent-encoded segment (`destinations/%2Ftopic%2Fnews`).
pub async fn destination(
    State(node): State<Arc<Node>>,
    Path((tenant_id, dest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let tenant = presence_tenant(&node, &tenant_id, &headers)?;
    let dest = if dest.starts_with('/') {
        dest
    } else {
        format!("/{dest}")
    };
    let known = ["/topic/", "/queue/", "/user/queue/", "/user/topic/"]
        .iter()
        .any(|p| dest.starts_with(p) && dest.len() > p.len());
    if !known {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            &format!("'{dest}' is not a destination clients subscribe to: /topic/..., /queue/... or /user/queue/..."),
        ));
    }
    let query = Query::Subscribers {
        tenant: tenant.id.clone(),
        dest: dest.clone(),
    };
    let replies = ask_all(&node, query).await?;
    let (subscribers, nodes) = counts(&replies, "subscribers");
    Ok(Json(json!({
        "destination": dest,
        "subscribers": subscribers,
        "nodes": nodes,
        "unanswered": replies.missing,
    }))
    .into_response())
}

/// The query string of a disconnect.
#[derive(Debug, Deserialize)]
pub struct Ban {
    ban_seconds: Option<u64>,
}

/// `DELETE .../users/{user}/sessions`: closes every session of the user on every node with
/// an ERROR (`disconnected by the server`); with `ban_seconds`, refuses their CONNECTs for
/// that long.
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    Path((tenant_id, user)): Path<(String, String)>,
    headers: HeaderMap,
    ban: Result<QueryString<Ban>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refused> {
    let tenant = presence_tenant(&node, &tenant_id, &headers)?;
    let Ok(QueryString(ban)) = ban else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "ban_seconds must be a whole number of seconds",
        ));
    };
    let seconds = ban.ban_seconds.unwrap_or(0);
    if seconds > MAX_BAN_SECONDS {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            &format!("ban_seconds must be at most {MAX_BAN_SECONDS} (30 days)"),
        ));
    }
    let until_ms = if seconds > 0 {
        crate::util::unix_ms() + seconds * 1000
    } else {
        0
    };
    if until_ms > 0 {
        // Written first, so that a node joining meanwhile learns it too.
        if let Err(e) = node.cluster.ban(&tenant.id, &user, until_ms).await {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the ban could not be recorded, so nothing was closed: {e}"),
            ));
        }
    }
    let query = Query::Disconnect {
        tenant: tenant.id.clone(),
        user: user.clone(),
        until_ms,
    };
    let replies = ask_all(&node, query).await?;
    let (closed, nodes) = counts(&replies, "closed");
    Ok(Json(json!({
        "user": user,
        "closed": closed,
        "nodes": nodes,
        "banned_until": (until_ms > 0).then_some(until_ms),
        "unanswered": replies.missing,
    }))
    .into_response())
}
