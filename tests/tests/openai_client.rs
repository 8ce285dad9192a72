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
/// default draft costs about what a target step does, so the target is made to take 60 ms a
/// pass (`--min-step-ms`), as a big model would: then every request drafts.
#[test]
fn official_openai_client_works_with_a_draft_model() {
    let models = repo_root().join("models");
    let draft = models.join("shard-draft-llama-f16.gguf");
    let oracle = Oracle::start(
        &models.join("shard-target-bitnet-tq2_0.gguf"),
        &["--draft-model", draft.to_str().unwrap(), "--min-step-ms", "60"],
    );
    run_client(&oracle, &["--expect-speculative"]);

    // `/metrics` tells the same story in Prometheus text.
    let text = reqwest::blocking::get(format!("{}/metrics", oracle.url)).and_then(|r| r.text()).expect("GET /metrics");
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        line[name.len() + 1..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let (drafted, accepted) = (value("shard_spec_drafted_tokens_total"), value("shard_spec_accepted_tokens_total"));
    assert!(value("shard_spec_verifications_total") > 0.0 && drafted >= accepted && accepted > 0.0, "{text}");
    assert!((value("shard_spec_acceptance_rate") - accepted / drafted).abs() < 1e-9);
    assert!(value("shard_spec_tokens_per_verification") >= 1.0);
    assert!(value("shard_spec_speedup") > 0.0);
    // Pacing measured a step of at least the 60 ms floor, and a draft far cheaper than that.
    let (step, draft_ms) = (value("shard_spec_pace_step_ms"), value("shard_spec_pace_draft_ms"));
    assert!(step >= 60.0 && draft_ms > 0.0 && draft_ms < step, "step {step} ms, draft {draft_ms} ms");
    eprintln!("metrics: {drafted} drafted, {accepted} accepted; pace: step {step:.2} ms, draft {draft_ms:.3} ms a token");
}
