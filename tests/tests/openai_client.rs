//! The official `openai` Python client, unchanged, against the running binary: chat, chat
//! streaming, completions with logprobs, and typed errors (tests/python/openai_client.py).

use std::process::Command;

use shard_tests::{repo_root, synthetic_model, Oracle};

#[test]
fn official_openai_client_works_unchanged() {
    let oracle = Oracle::start(&synthetic_model("tq2_0"), &[]);
    let python = std::env::var("SHARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo_root().join("tests/python/openai_client.py"))
        .arg(&oracle.url)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e} (scripts/setup.sh makes a venv with the openai package)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"));
}
