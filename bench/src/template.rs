//! Command-line templates (`{i}`, `{j}`) and the delivery rule: which subscribers a published
//! destination reaches, computed from the same templates the connections were made with.

use std::collections::HashMap;
use std::sync::Arc;

/// A string with `{i}` and `{j}` placeholders; every other character is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    I,
    J,
}

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            let var = if rest.starts_with("{i}") {
                Some(Part::I)
            } else if rest.starts_with("{j}") {
                Some(Part::J)
            } else {
                None
            };
            match var {
                Some(var) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(var);
                    rest = &rest[3..];
                }
                None => {
                    let c = rest.chars().next().expect("not empty");
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Template { parts }
    }

    /// `i`: the connection's (or publisher's) index; `j`: the target index.
    pub fn render(&self, i: usize, j: usize) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::I => out.push_str(&i.to_string()),
                Part::J => out.push_str(&j.to_string()),
            }
        }
        out
    }
}

/// A `name=value` header template (`name:value` accepted too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    pub name: String,
    pub value: HeaderValue,
}

/// Where a header's value for connection `i` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Template(Template),
    /// Line `i` (modulo the count) of a file: values a template cannot make, such as a signed
    /// token per user.
    Lines(Arc<Vec<String>>),
}

impl HeaderValue {
    pub fn render(&self, i: usize) -> String {
        match self {
            HeaderValue::Template(t) => t.render(i, i),
            HeaderValue::Lines(lines) => lines[i % lines.len()].clone(),
        }
    }
}

impl HeaderTemplate {
    /// Parses `name=PATH` and reads the file's non-empty lines.
    pub fn from_file(arg: &str) -> Result<HeaderTemplate, String> {
        let (name, path) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected name=PATH"))?;
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{arg:?}: cannot read: {e}"))?;
        let lines: Vec<String> = text
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() || name.is_empty() {
            return Err(format!("{arg:?}: empty name or no lines"));
        }
        Ok(HeaderTemplate {
            name: name.to_string(),
            value: HeaderValue::Lines(Arc::new(lines)),
        })
    }
}

impl std::str::FromStr for HeaderTemplate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .or_else(|| s.split_once(':'))
            .ok_or_else(|| format!("header {s:?}: expected name=value"))?;
        if name.is_empty() {
            return Err(format!("header {s:?}: empty name"));
        }
        Ok(HeaderTemplate {
            name: name.to_string(),
            value: HeaderValue::Template(Template::parse(value)),
        })
    }
}

/// Renders header templates for connection `i`.
pub fn render_headers(headers: &[HeaderTemplate], i: usize) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.name.clone(), h.value.render(i)))
        .collect()
}

/// The user a broker gives a session, as both stompbox's built-in policy and the null broker
/// decide it: the CONNECT header `userid`, else `login`.
pub fn user_of(headers: &[(String, String)]) -> Option<&str> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    find("userid").or_else(|| find("login"))
}

/// The destination a subscription is reached by: `/user/queue/x` of user `u` is reached by
/// `/user/u/queue/x` (Spring's user destinations); anything else by itself.
pub fn subscription_key(destination: &str, user: Option<&str>) -> String {
    match (destination.strip_prefix("/user/"), user) {
        (Some(rest), Some(user)) => format!("/user/{user}/{rest}"),
        _ => destination.to_string(),
    }
}

/// The destination a publish goes to: with an API `receiver`, `/user/{receiver}{destination}`.
pub fn publish_key(destination: &str, receiver: Option<&str>) -> String {
    match receiver {
        Some(receiver) => format!("/user/{receiver}{destination}"),
        None => destination.to_string(),
    }
}

/// The delivery rule. A message published to target `j` is expected by every ready
/// subscriber whose [`subscription_key`] equals the message's [`publish_key`] (exact match: no
/// wildcards), except that a `/queue/...` destination has competing consumers and expects one
/// delivery when it has any subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// Deliveries a message to target `j` should cause.
    pub per_target: Vec<u64>,
}

impl Expectation {
    /// `subscribers`: the keys of the ready subscribers; `targets`: the publish keys of
    /// targets `0..T`.
    pub fn new<'a>(
        subscribers: impl IntoIterator<Item = &'a str>,
        targets: &[String],
    ) -> Expectation {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for key in subscribers {
            *counts.entry(key).or_default() += 1;
        }
        let per_target = targets
            .iter()
            .map(|key| {
                let n = counts.get(key.as_str()).copied().unwrap_or(0);
                if key.starts_with("/queue/") {
                    n.min(1)
                } else {
                    n
                }
            })
            .collect();
        Expectation { per_target }
    }

    /// Mean deliveries per message over one cycle of targets.
    pub fn mean(&self) -> f64 {
        if self.per_target.is_empty() {
            return 0.0;
        }
        self.per_target.iter().sum::<u64>() as f64 / self.per_target.len() as f64
    }

    /// Deliveries expected for global message number `k` (which goes to target `k % T`).
    pub fn of_message(&self, k: u64) -> u64 {
        self.per_target[(k % self.per_target.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = Template::parse("/user/u{j}/queue/{i}-{j}{x}");
        assert_eq!(t.render(7, 3), "/user/u3/queue/7-3{x}");
        assert_eq!(Template::parse("plain").render(1, 2), "plain");
        assert_eq!(Template::parse("").render(1, 2), "");
        assert_eq!(Template::parse("é{i}").render(5, 0), "é5");
    }

    #[test]
    fn header_templates() {
        let h: HeaderTemplate = "userid=u{i}".parse().unwrap();
        assert_eq!(h.name, "userid");
        assert_eq!(
            render_headers(&[h], 4),
            vec![("userid".into(), "u4".into())]
        );
        let h: HeaderTemplate = "host:/".parse().unwrap();
        assert_eq!(h.value.render(0), "/");
        let h: HeaderTemplate = "passcode=a=b".parse().unwrap();
        assert_eq!(h.value.render(0), "a=b");
        assert!("nothing".parse::<HeaderTemplate>().is_err());

        let path = std::env::temp_dir().join(format!("bench-headers-{}", std::process::id()));
        std::fs::write(&path, "tok0\ntok1\r\n\ntok2\n").unwrap();
        let h = HeaderTemplate::from_file(&format!("passcode={}", path.display())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(h.name, "passcode");
        let values: Vec<String> = (0..4).map(|i| h.value.render(i)).collect();
        assert_eq!(values, ["tok0", "tok1", "tok2", "tok0"]);
        assert!(HeaderTemplate::from_file("passcode=/nonexistent/file").is_err());
    }

    #[test]
    fn user_destinations_match_by_user() {
        let headers = vec![("login".to_string(), "guest".to_string())];
        assert_eq!(user_of(&headers), Some("guest"));
        let headers = vec![
            ("login".to_string(), "guest".to_string()),
            ("userid".to_string(), "u1".to_string()),
        ];
        assert_eq!(user_of(&headers), Some("u1"));
        assert_eq!(
            subscription_key("/user/queue/bench", Some("u1")),
            "/user/u1/queue/bench"
        );
        assert_eq!(
            subscription_key("/user/queue/bench", None),
            "/user/queue/bench"
        );
        assert_eq!(subscription_key("/topic/x", Some("u1")), "/topic/x");
        assert_eq!(
            publish_key("/queue/bench", Some("u1")),
            "/user/u1/queue/bench"
        );
        assert_eq!(publish_key("/topic/x", None), "/topic/x");
    }

    #[test]
    fn expectation_fanout_targeted_and_queue() {
        // 4 subscribers of /topic/bench: fan-out.
        let subs = ["/topic/bench"; 4];
        let e = Expectation::new(subs, &["/topic/bench".to_string()]);
        assert_eq!(e.per_target, vec![4]);

        // Subscribers i = 0..3 as users u{i} on /user/queue/bench; targets j = 0..4.
        let keys: Vec<String> = (0..3)
            .map(|i| subscription_key("/user/queue/bench", Some(&format!("u{i}"))))
            .collect();
        let targets: Vec<String> = (0..4)
            .map(|j| Template::parse("/user/u{j}/queue/bench").render(0, j))
            .collect();
        let e = Expectation::new(keys.iter().map(String::as_str), &targets);
        assert_eq!(e.per_target, vec![1, 1, 1, 0]);
        assert_eq!(e.of_message(5), 1);
        assert_eq!(e.of_message(7), 0);
        assert_eq!(e.mean(), 0.75);

        // Competing consumers on a queue: one delivery per message.
        let e = Expectation::new(["/queue/q", "/queue/q"], &["/queue/q".to_string()]);
        assert_eq!(e.per_target, vec![1]);
    }
}
