//! Steady publishing through a node's API while faults strike, and the account of what the
//! answers promised against what a user received.

use std::collections::HashMap;
use std::time::Duration;

use super::cluster::NodeProcess;
use super::{http_request, API_KEY};

/// The pause between two rounds of publishes.
pub const EVERY: Duration = Duration::from_millis(2);
/// Publishes in flight at once.
pub const IN_FLIGHT: usize = 8;

/// Message `i` of a run, as the publish API's body.
pub type Body = fn(usize) -> serde_json::Value;

/// Publishes `count` more messages through `node`, IN_FLIGHT at a time at a steady pace; the
/// answers are added in publish order.
pub async fn publish_round(
    node: &NodeProcess,
    answers: &mut Vec<(u16, serde_json::Value)>,
    count: usize,
    body: &dyn Fn(usize) -> serde_json::Value,
) {
    let until = answers.len() + count;
    while answers.len() < until {
        let first = answers.len();
        let bodies: Vec<String> = (first..first + IN_FLIGHT)
            .map(|i| body(i).to_string())
            .collect();
        let batch = bodies.iter().map(|body| {
            http_request(
                node.http,
                "POST",
                "/api/v1/tenants/default/publish",
                Some(API_KEY),
                body,
            )
        });
        answers.extend(futures_util::future::join_all(batch).await);
        tokio::time::sleep(EVERY).await;
    }
}

/// Publishes through `node` for `time`, as [`publish_round`] does.
pub async fn publish_for(
    node: &NodeProcess,
    answers: &mut Vec<(u16, serde_json::Value)>,
    time: Duration,
    body: &dyn Fn(usize) -> serde_json::Value,
) {
    let until = tokio::time::Instant::now() + time;
    while tokio::time::Instant::now() < until {
        publish_round(node, answers, IN_FLIGHT, body).await;
    }
}

/// Stored user messages: what the answers said against what arrived (offset and body).
#[derive(Debug, Default)]
pub struct Account {
    /// Answered 202 and stored.
    pub accepted: usize,
    /// Answered 503.
    pub refused: usize,
    /// Accepted and never received.
    pub lost: Vec<usize>,
    /// Received more than once.
    pub twice: Vec<usize>,
    /// Answers that are neither.
    pub untruthful: Vec<String>,
    /// Received in stream order.
    pub in_order: bool,
}

impl Account {
    /// The account of `answers` (message `i`'s body is `body(i)`) against `got`.
    pub fn of(
        answers: &[(u16, serde_json::Value)],
        got: &[(u64, String)],
        body: impl Fn(usize) -> String,
    ) -> Account {
        let mut times: HashMap<&str, usize> = HashMap::new();
        for (_, b) in got {
            *times.entry(b.as_str()).or_default() += 1;
        }
        let mut account = Account {
            in_order: got.windows(2).all(|w| w[0].0 < w[1].0),
            ..Account::default()
        };
        for (i, (status, answer)) in answers.iter().enumerate() {
            let n = times.get(body(i).as_str()).copied().unwrap_or(0);
            if n > 1 {
                account.twice.push(i);
            }
            match status {
                202 if answer["stored"] == true => {
                    account.accepted += 1;
                    if n == 0 {
                        account.lost.push(i);
                    }
                }
                503 => account.refused += 1,
                _ => account.untruthful.push(format!("{i}: {status} {answer}")),
            }
        }
        account
    }

    /// Panics unless every accepted message arrived exactly once and in order, and every
    /// answer was a 202 or a 503.
    pub fn assert_nothing_lost(&self) {
        assert!(
            self.untruthful.is_empty(),
            "answers that are neither: {:?}",
            self.untruthful
        );
        assert!(
            self.lost.is_empty(),
            "{} of {} accepted messages never arrived: {:?}",
            self.lost.len(),
            self.accepted,
            &self.lost[..self.lost.len().min(20)]
        );
        assert!(self.twice.is_empty(), "arrived twice: {:?}", self.twice);
        assert!(self.in_order, "not in stream order");
    }
}
