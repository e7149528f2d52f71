//! The HTTP API against its OpenAPI document: the node serves `/api/v1/openapi.json`, and
//! schemathesis (from PyPI, installed by `scripts/test.sh`) generates requests from it,
//! valid and invalid, and checks every answer: no 5xx, each status, content type, header and
//! body as the document says, invalid input refused, authentication required where the
//! document says so. One check is left out: `positive_data_acceptance`, which expects every
//! request the schema allows to succeed, while the API also checks what a schema cannot say
//! (a destination's kind, a plugin's bytes) and answers those with a 400 or 422 that names
//! the reason.

mod support;

use std::process::Command;

use support::TestNode;

const TOKEN: &str = "schemathesis-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_matches_its_openapi_document() {
    let node = TestNode::start(&format!(
        "[server]\nadmin_token = \"{TOKEN}\"\n[[tenants]]\nid = \"default\"\napi_keys = [\"{TOKEN}\"]\n"
    ))
    .await;
    let (status, document) =
        support::http_request(node.http, "GET", "/api/v1/openapi.json", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schemathesis = root.join("tests/clients/.venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "schemathesis is missing ({}): run scripts/test.sh, which installs it",
        schemathesis.display()
    );
    let url = format!("http://{}/api/v1/openapi.json", node.http);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .arg("--config-file")
            .arg(root.join("tests/openapi/schemathesis.toml"))
            .args([
                "run",
                &url,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                // A drain ends the node under test; tests/drain.rs covers it.
                "--exclude-operation-id",
                "startDrain",
            ])
            .args(["--max-examples", "50", "--no-color", "--seed", "1"])
            .env("STOMPBOX_TOKEN", TOKEN)
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    node.stop().await;
}
