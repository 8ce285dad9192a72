//! Property tests of the served API from its own OpenAPI description: schemathesis (PyPI)
//! generates valid and invalid requests for every operation of `/openapi.json` and checks that
//! the Oracle answers none with a 5xx, and every one with a status, content type and body that
//! the description allows.

use std::process::Command;

use shard_tests::{default_pair, Oracle};

#[test]
fn schemathesis_finds_no_5xx_and_no_answer_outside_the_spec() {
    let venv = std::env::var("SHARD_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/shard/venv", std::env::var("HOME").unwrap_or_default()));
    let st = std::path::Path::new(&venv).join("bin/schemathesis");
    assert!(st.is_file(), "{} is missing: run scripts/setup.sh (it installs tools/requirements.txt)", st.display());
    // The default pair, with budgets small enough that a generated request never runs long.
    let oracle = Oracle::start(&default_pair().0, &["--max-request-tokens", "1024", "--queue-capacity", "8"]);
    let out = Command::new(&st)
        .args(["run", &oracle.endpoint("/openapi.json")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", "25", "--workers", "1", "--request-timeout", "60", "--max-time", "180", "--seed", "1"])
        .args(["--suppress-health-check", "all"])
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
}
