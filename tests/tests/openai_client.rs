//! The official `openai` Python client, unchanged, against the running binary: chat, chat
//! streaming, completions with logprobs, and typed errors (tests/python/openai_client.py).

use std::process::Command;

use shard_tests::{repo_root, synthetic_model, Oracle};

fn run_client(oracle: &Oracle, extra: &[&str]) {
    let python = std::env::var("SHARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo_root().join("tests/python/openai_client.py"))
        .arg(&oracle.url)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e} (scripts/setup.sh makes a venv with the openai package)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"));
}

#[test]
fn official_openai_client_works_unchanged() {
    run_client(&Oracle::start(&synthetic_model("tq2_0"), &[]), &[]);
}

/// With `--draft-model`. The Oracle drafts only where drafting pays, and on this machine the
/// default draft costs about what a target step does, so the target is made to take 20 ms a
/// pass (`--min-step-ms`), as a big model would: then every request drafts.
#[test]
fn official_openai_client_works_with_a_draft_model() {
    let models = repo_root().join("models");
    let draft = models.join("shard-draft-llama-f16.gguf");
    let oracle = Oracle::start(
        &models.join("shard-target-bitnet-tq2_0.gguf"),
        &["--draft-model", draft.to_str().unwrap(), "--min-step-ms", "20"],
    );
    run_client(&oracle, &["--expect-speculative"]);
}
