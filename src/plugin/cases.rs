//! `stompbox plugin test FILE.wasm CASES.toml`: a plugin author's own test suite. A cases file
//! lists calls (a CONNECT's headers, an authorize question, a channel code) with the answer
//! expected of each, the settings the plugin sees, and recorded answers for its backend
//! calls. Every case runs in the node's sandbox, in file order, sharing one in-memory cache;
//! the report says which matched and why the others did not. Nothing here opens a socket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::backend::{Backend, BackendAccess};
use super::engine::wit_backend::{FetchError, Request, Response};
use super::tool::{self, ToolCall};
use super::{PluginError, PluginLimits};
use crate::policy::{ConnectInfo, Operation, TransportKind};

/// A cases file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The tenant id the plugin sees (default `default`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The tenant's settings (`host.setting`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The call deadline in ms (default 50, as on a node).
    pub deadline_ms: Option<u64>,
    /// The instance memory cap in bytes (default 32 MiB, as on a node).
    pub memory_bytes: Option<usize>,
    /// Hosts the plugin may call (default: those of the recorded answers).
    pub allowed_hosts: Option<Vec<String>>,
    /// Recorded answers for `backend.fetch` (`[[backend]]`).
    #[serde(default)]
    pub backend: Vec<Recorded>,
    /// The cases (`[[case]]`), run in order.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

fn default_tenant() -> String {
    "default".into()
}

fn default_get() -> String {
    "GET".into()
}

fn default_ok() -> u16 {
    200
}

/// A recorded backend answer: the first whose method, URL and headers match a request
/// answers it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    /// The method (default `GET`).
    #[serde(default = "default_get")]
    pub method: String,
    /// The whole URL, as the plugin writes it.
    pub url: String,
    /// Headers the request must carry (names without regard to case).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The answer's status (default 200).
    #[serde(default = "default_ok")]
    pub status: u16,
    /// The answer's body.
    #[serde(default)]
    pub body: String,
    /// The answer's headers.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// No answer but this failure: `timeout` or `failed`.
    pub error: Option<String>,
    /// How long the backend takes to answer, in ms: longer than what is left of the call's
    /// deadline is a `timeout`.
    #[serde(default)]
    pub delay_ms: u64,
}

/// One call and what it should give.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Its name in the report.
    pub name: String,
    /// An `authenticate` call.
    pub authenticate: Option<AuthenticateCall>,
    /// An `authorize` call.
    pub authorize: Option<AuthorizeCall>,
    /// A `resolve-channel` call with this code.
    pub resolve_channel: Option<String>,
    /// The answer expected.
    pub expect: Expect,
}

/// The facts of a CONNECT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticateCall {
    /// CONNECT headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers of the request that opened the connection (`cookie`, ...).
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// `websocket` (default), `sockjs` or `tcp`.
    pub transport: Option<String>,
    /// The peer's address.
    pub remote_addr: Option<String>,
}

/// An authorize question.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeCall {
    /// The session's user (default anonymous, `""`).
    #[serde(default)]
    pub user: String,
    /// The session's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// `subscribe` or `send`.
    pub op: String,
    /// The destination, as the client wrote it.
    pub destination: String,
}

/// What a case expects; only the fields given are checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// authenticate: this user (`""` for anonymous).
    pub user: Option<String>,
    /// authenticate: these attributes among the principal's.
    pub attributes: Option<BTreeMap<String, String>>,
    /// authorize: `true` for allowed (`false` for any denial).
    pub allowed: Option<bool>,
    /// authenticate or authorize: denied, with a message containing this.
    pub denied: Option<String>,
    /// resolve-channel: this destination.
    pub destination: Option<String>,
    /// resolve-channel: `true` for an unknown code.
    pub unknown: Option<bool>,
    /// The call itself fails (no verdict): `deadline`, `memory`, `trap`, or text of the error.
    pub fails: Option<String>,
}

/// What running a file gave.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Cases whose answer matched.
    pub passed: usize,
    /// Cases whose answer did not.
    pub failed: usize,
    /// The report, a line per case.
    pub text: String,
}

/// Reads and checks a cases file: each case makes exactly one call and expects something
/// that call can give.
pub fn read(path: &Path) -> Result<CaseFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: CaseFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if file.cases.is_empty() {
        return Err(format!("{}: no [[case]]", path.display()));
    }
    for (i, case) in file.cases.iter().enumerate() {
        let at = |m: &str| format!("{}: case[{i}] '{}': {m}", path.display(), case.name);
        let calls = usize::from(case.authenticate.is_some())
            + usize::from(case.authorize.is_some())
            + usize::from(case.resolve_channel.is_some());
        if calls != 1 {
            return Err(at(
                "give exactly one of authenticate, authorize, resolve_channel",
            ));
        }
        let e = &case.expect;
        let asked = [
            e.user.is_some() || e.attributes.is_some(),
            e.allowed.is_some(),
            e.denied.is_some(),
            e.destination.is_some() || e.unknown.is_some(),
            e.fails.is_some(),
        ];
        if !asked.contains(&true) {
            return Err(at("expect nothing: say what the answer should be"));
        }
        let fits = match () {
            _ if case.authenticate.is_some() => !asked[1] && !asked[3],
            _ if case.authorize.is_some() => !asked[0] && !asked[3],
            _ => !asked[0] && !asked[1] && !asked[2],
        };
        if !fits {
            return Err(at("expects something this call cannot answer"));
        }
        if let Some(call) = &case.authorize {
            op(&call.op).ok_or_else(|| at("authorize.op must be subscribe or send"))?;
        }
        if let Some(call) = &case.authenticate {
            transport(call.transport.as_deref())
                .ok_or_else(|| at("authenticate.transport must be websocket, sockjs or tcp"))?;
        }
    }
    for (i, r) in file.backend.iter().enumerate() {
        if r.error
            .as_deref()
            .is_some_and(|e| !["timeout", "failed"].contains(&e))
        {
            return Err(format!(
                "{}: backend[{i}].error must be timeout or failed",
                path.display()
            ));
        }
    }
    Ok(file)
}

fn op(name: &str) -> Option<Operation> {
    match name {
        "subscribe" => Some(Operation::Subscribe),
        "send" => Some(Operation::Send),
        _ => None,
    }
}

fn transport(name: Option<&str>) -> Option<TransportKind> {
    match name.unwrap_or("websocket") {
        "websocket" => Some(TransportKind::WebSocket),
        "sockjs" => Some(TransportKind::SockJs),
        "tcp" => Some(TransportKind::Tcp),
        _ => None,
    }
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Runs every case of `file` against the plugin at `wasm`. `Err` when the plugin cannot be
/// loaded; a case that does not match is a failure in the report.
pub async fn run(wasm: &Path, file: CaseFile) -> Result<Report, PluginError> {
    let compiled = tool::load(wasm)?;
    let sha256 = compiled.sha256.clone();
    let defaults = PluginLimits::default();
    let limits = PluginLimits {
        deadline: file
            .deadline_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.deadline),
        memory_bytes: file.memory_bytes.unwrap_or(defaults.memory_bytes),
        concurrency: 1,
    };
    let hosts: Vec<String> = file.allowed_hosts.clone().unwrap_or_else(|| {
        file.backend
            .iter()
            .filter_map(|r| crate::web::client::parse_url(&r.url).ok())
            .filter_map(|u| u.authority().map(|a| a.to_string()))
            .collect()
    });
    let backend = Arc::new(RecordedBackend {
        access: BackendAccess {
            allowed_hosts: hosts
                .iter()
                .filter_map(|h| crate::web::client::parse_authority(h).ok())
                .collect(),
            timeout: limits.deadline,
            max_response_bytes: 64 << 10,
        },
        answers: file.backend.clone(),
        unmatched: Mutex::new(Vec::new()),
    });
    let pool = tool::pool(
        compiled,
        &file.tenant,
        file.settings.clone(),
        backend.clone(),
        limits,
    );
    let mut report = Report::default();
    let _ = writeln!(
        report.text,
        "{} (sha256 {}…): {} cases",
        wasm.display(),
        &sha256[..12],
        file.cases.len()
    );
    for case in &file.cases {
        let call = to_call(&file, case);
        let outcome = tool::run(&pool, call).await;
        let missed =
            std::mem::take(&mut *backend.unmatched.lock().unwrap_or_else(|e| e.into_inner()));
        match judge(&case.expect, &outcome) {
            Ok(()) => {
                report.passed += 1;
                let _ = writeln!(report.text, "  ok    {}", case.name);
            }
            Err(why) => {
                report.failed += 1;
                let _ = writeln!(report.text, "  FAIL  {}: {why}", case.name);
                for request in missed {
                    let _ = writeln!(
                        report.text,
                        "        no recorded backend answer for {request}"
                    );
                }
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report)
}

fn to_call(file: &CaseFile, case: &Case) -> ToolCall {
    if let Some(a) = &case.authenticate {
        return ToolCall::Authenticate(ConnectInfo {
            tenant: file.tenant.clone(),
            transport: transport(a.transport.as_deref()).unwrap_or(TransportKind::WebSocket),
            remote_addr: a.remote_addr.clone(),
            headers: pairs(&a.headers),
            request_headers: a
                .request_headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        });
    }
    if let Some(a) = &case.authorize {
        return ToolCall::Authorize {
            user: a.user.clone(),
            attributes: pairs(&a.attributes),
            op: op(&a.op).unwrap_or(Operation::Subscribe),
            destination: a.destination.clone(),
        };
    }
    ToolCall::ResolveChannel {
        code: case.resolve_channel.clone().unwrap_or_default(),
    }
}

/// `Ok` when `outcome` is what `expect` says; else what differs, in words.
fn judge(expect: &Expect, outcome: &Result<Value, PluginError>) -> Result<(), String> {
    let answer = match outcome {
        Err(e) => {
            return match &expect.fails {
                Some(want) if failure_matches(want, e) => Ok(()),
                Some(want) => Err(format!(
                    "expected the call to fail with {want:?}, it failed: {e}"
                )),
                None => Err(format!("the call failed: {e}")),
            }
        }
        Ok(answer) => answer,
    };
    if let Some(want) = &expect.fails {
        return Err(format!(
            "expected the call to fail with {want:?}, got {answer}"
        ));
    }
    let denial = match (&expect.denied, expect.allowed) {
        (Some(want), _) => Some(want.as_str()),
        (None, Some(false)) => Some(""),
        _ => None,
    };
    if let Some(want) = denial {
        return match answer["err"].as_str() {
            Some(reason) if reason.contains(want) => Ok(()),
            Some(reason) => Err(format!(
                "expected a denial containing {want:?}, got {reason:?}"
            )),
            None => Err(format!(
                "expected a denial containing {want:?}, got {answer}"
            )),
        };
    }
    if let Some(err) = answer.get("err") {
        return Err(format!("denied: {err}"));
    }
    let ok = &answer["ok"];
    if let Some(want) = &expect.user {
        // An anonymous principal is shown as `null`; the cases file writes it `""`.
        if ok["user"].as_str().unwrap_or_default() != want {
            return Err(format!("expected user {want:?}, got {}", ok["user"]));
        }
    }
    if let Some(want) = &expect.attributes {
        let have: Vec<(String, String)> =
            serde_json::from_value(ok["attributes"].clone()).unwrap_or_default();
        for (name, value) in want {
            if !have.iter().any(|(n, v)| n == name && v == value) {
                return Err(format!(
                    "expected attribute {name}={value:?}, got {}",
                    ok["attributes"]
                ));
            }
        }
    }
    if let Some(want) = &expect.destination {
        if ok.as_str() != Some(want.as_str()) {
            return Err(format!("expected destination {want:?}, got {ok}"));
        }
    }
    if expect.unknown == Some(true) && !ok.is_null() {
        return Err(format!("expected an unknown code, got {ok}"));
    }
    if expect.unknown == Some(false) && ok.is_null() {
        return Err("expected a known code, got none".into());
    }
    Ok(())
}

fn failure_matches(want: &str, error: &PluginError) -> bool {
    match want {
        "deadline" => matches!(error, PluginError::Deadline(_)),
        "memory" => matches!(error, PluginError::Memory(_)),
        "trap" => matches!(error, PluginError::Trap(_)),
        text => error.to_string().contains(text),
    }
}

/// Answers `backend.fetch` from the cases file, behind the same checks as a node's.
#[derive(Debug)]
struct RecordedBackend {
    access: BackendAccess,
    answers: Vec<Recorded>,
    /// Requests no answer matched, for the report.
    unmatched: Mutex<Vec<String>>,
}

#[async_trait]
impl Backend for RecordedBackend {
    async fn fetch(&self, request: Request, budget: Duration) -> Result<Response, FetchError> {
        self.access.check(&request)?;
        let found = self.answers.iter().find(|r| {
            r.method.eq_ignore_ascii_case(&request.method)
                && r.url == request.url
                && r.headers.iter().all(|(name, value)| {
                    request
                        .headers
                        .iter()
                        .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
                })
        });
        let Some(answer) = found else {
            let shown = format!("{} {}", request.method, request.url);
            self.unmatched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(shown.clone());
            return Err(FetchError::Failed(format!(
                "no recorded answer for {shown}"
            )));
        };
        let delay = Duration::from_millis(answer.delay_ms);
        if delay > budget {
            tokio::time::sleep(budget).await;
            return Err(FetchError::Timeout);
        }
        tokio::time::sleep(delay).await;
        match answer.error.as_deref() {
            Some("timeout") => return Err(FetchError::Timeout),
            Some(_) => return Err(FetchError::Failed("connection refused (recorded)".into())),
            None => {}
        }
        if answer.body.len() > self.access.max_response_bytes {
            return Err(FetchError::TooLarge(self.access.max_response_bytes as u64));
        }
        Ok(Response {
            status: answer.status,
            headers: pairs(&answer.response_headers),
            body: answer.body.clone().into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CaseFile, String> {
        let dir = std::env::temp_dir().join(format!("cases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", crate::util::unix_ms()));
        std::fs::write(&path, text).unwrap();
        let file = read(&path);
        let _ = std::fs::remove_file(path);
        file
    }

    #[test]
    fn a_case_makes_one_call_and_expects_what_it_can_answer() {
        assert!(
            parse("[[case]]\nname='a'\nresolve_channel='X'\nexpect={destination='/topic/x'}")
                .is_ok()
        );
        let two = "[[case]]\nname='a'\nresolve_channel='X'\nauthorize={op='send',destination='/x'}\nexpect={allowed=true}";
        assert!(parse(two).unwrap_err().contains("exactly one"));
        let nothing = "[[case]]\nname='a'\nresolve_channel='X'\nexpect={}";
        assert!(parse(nothing).unwrap_err().contains("expect nothing"));
        let misfit = "[[case]]\nname='a'\nresolve_channel='X'\nexpect={user='alice'}";
        assert!(parse(misfit).unwrap_err().contains("cannot answer"));
        let bad_op =
            "[[case]]\nname='a'\nauthorize={op='read',destination='/x'}\nexpect={allowed=true}";
        assert!(parse(bad_op).unwrap_err().contains("subscribe or send"));
        assert!(parse("tenant='t'").unwrap_err().contains("case"));
        assert!(parse(
            "[[case]]\nname='a'\nresolve_channel='X'\nexpect={destination='/x'}\nnope=1"
        )
        .unwrap_err()
        .contains("unknown field"));
    }

    #[test]
    fn verdicts_are_judged() {
        let expect = |text: &str| -> Expect { toml::from_str(text).unwrap() };
        let ok_alice =
            Ok(serde_json::json!({"ok": {"user": "alice", "attributes": [["auth", "jwt"]]}}));
        assert!(judge(&expect("user='alice'"), &ok_alice).is_ok());
        assert!(judge(&expect("user='bob'"), &ok_alice)
            .unwrap_err()
            .contains("\"bob\""));
        assert!(judge(&expect("attributes={auth='jwt'}"), &ok_alice).is_ok());
        assert!(judge(&expect("attributes={auth='x'}"), &ok_alice).is_err());
        assert!(judge(&expect("denied=''"), &ok_alice).is_err());
        let denied = Ok(serde_json::json!({"err": "jwt-auth: bad token signature"}));
        assert!(judge(&expect("denied='signature'"), &denied).is_ok());
        assert!(judge(&expect("denied='expired'"), &denied).is_err());
        assert!(judge(&expect("user='alice'"), &denied)
            .unwrap_err()
            .contains("denied"));
        assert!(judge(&expect("allowed=false"), &denied).is_ok());
        let deadline = Err(PluginError::Deadline(50));
        assert!(judge(&expect("fails='deadline'"), &deadline).is_ok());
        assert!(judge(&expect("fails='trap'"), &deadline).is_err());
        assert!(judge(&expect("user='alice'"), &deadline)
            .unwrap_err()
            .contains("failed"));
        let none = Ok(serde_json::json!({"ok": null}));
        assert!(judge(&expect("unknown=true"), &none).is_ok());
        assert!(judge(&expect("destination='/x'"), &none).is_err());
    }
}
