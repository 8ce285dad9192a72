//! Conformance with llama.cpp: the same GGUF file gives the same tokens, top-5 logprobs within
//! 0.1 at every position, and the same greedy continuation.
//!
//! The reference (`tests/fixtures/llamacpp-bitnet-tiny.json`) was recorded from llama.cpp
//! through llama-cpp-python by `tools/conformance/llamacpp_reference.py`, on synthetic models
//! written by `tools/synth/make_bitnet.py` (random seeded ternary weights, SmolLM2's
//! tokenizer). llama.cpp cannot read I2_S, so the I2_S file is held to the TQ2_0 reference:
//! it stores the same weights.
//!
//! The same tiny model is also checked with metadata that says more than llama.cpp reads
//! (`tools/synth/make_metadata_variants.py`, fixture `llamacpp-bitnet-metadata.json`): keys
//! llama.cpp ignores for arch `bitnet` (a `hidden_act` of relu2, a wrong `vocab_size`, ...)
//! must change nothing, keys it honours (RoPE scaling, per-layer arrays) must change the
//! logits as they change llama.cpp's, and keys Shard cannot run as llama.cpp does must stop
//! the Oracle at start-up with an error that names them.

use serde_json::{json, Value};
use std::path::Path;

use shard_tests::{binary, post_json, repo_root, sha256_file, synthetic_model, synthetic_model_named, Oracle};

const TOLERANCE: f64 = 0.1;

fn fixture() -> Value {
    fixture_named("llamacpp-bitnet-tiny.json")
}

fn fixture_named(name: &str) -> Value {
    let path = repo_root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

/// Checks one synthetic `bitnet-tiny` file against one reference model entry.
fn check(kind: &str, reference: &Value) {
    check_file(kind, &synthetic_model(kind), kind != "i2_s", reference);
}

/// Checks `model` against one reference model entry; `same_file` when the reference was
/// recorded on this very file (its sha256 must match).
fn check_file(kind: &str, model: &Path, same_file: bool, reference: &Value) {
    if same_file {
        assert_eq!(
            sha256_file(&model),
            reference["sha256"].as_str().unwrap(),
            "{} differs from the file the fixture was recorded on; regenerate both (see tools/conformance/)",
            model.display()
        );
    }
    let oracle = Oracle::start(model, &["--threads", "2"]);
    let client = reqwest::blocking::Client::new();
    for t in reference["tokenization"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let ours = post_json(&client, &oracle.endpoint("/tokenize"), json!({"content": text}));
        assert_eq!(ours["tokens"], t["tokens"], "{kind}: tokens of {text:?}");
        // Detokenizing gives the text back (control tokens included).
        let back = post_json(&client, &oracle.endpoint("/detokenize"), json!({"tokens": t["tokens"]}));
        assert_eq!(back["content"].as_str().unwrap(), text, "{kind}: detokenized {text:?}");
    }
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_tokens: Vec<u64> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();

        // Tokenization as llama.cpp does it (special tokens parsed, BOS per the vocabulary).
        let tok = post_json(&client, &oracle.endpoint("/tokenize"), json!({"content": prompt, "add_special": true}));
        let got_tokens: Vec<u64> = tok["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!(got_tokens, want_tokens, "{kind}: tokens of {prompt:?}");

        let r = post_json(
            &client,
            &oracle.endpoint("/v1/completions"),
            json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "echo": true, "logprobs": 5}),
        );
        let lp = &r["choices"][0]["logprobs"];
        let positions = case["positions"].as_array().unwrap();
        assert!(lp["token_logprobs"][0].is_null(), "the first prompt token has no logprob");
        let mut worst: f64 = 0.0;
        for (i, pos) in positions.iter().enumerate().skip(1) {
            let ours = lp["token_logprobs"][i].as_f64().unwrap();
            let theirs = pos["token_logprob"].as_f64().unwrap();
            worst = worst.max((ours - theirs).abs());
            // Compare the k-th most likely value with the k-th: robust to near-ties swapping.
            let mut ours_top: Vec<f64> =
                lp["top_logprobs"][i].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
            ours_top.sort_by(|a, b| b.total_cmp(a));
            let theirs_top: Vec<f64> = pos["top"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
            assert_eq!(ours_top.len(), 5, "{kind}: position {i} has {} top logprobs", ours_top.len());
            for (a, b) in ours_top.iter().zip(&theirs_top) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= TOLERANCE, "{kind}: logprobs differ from llama.cpp by up to {worst:.4} on {prompt:?}");
        eprintln!("{kind}: {prompt:.30?}: max |Δ logprob| = {worst:.4}");

        // Greedy continuation, decoded one token at a time: the same tokens as llama.cpp's,
        // with the same top logprobs, until the first step where llama.cpp's own top two are
        // within the tolerance of each other (a near-tie either side may break differently).
        let piece = |id: &Value| -> String {
            post_json(&client, &oracle.endpoint("/detokenize"), json!({"tokens": [id]}))["content"].as_str().unwrap().to_string()
        };
        let n_prompt = want_tokens.len();
        let ours: Vec<&str> = lp["tokens"].as_array().unwrap()[n_prompt..].iter().map(|t| t.as_str().unwrap()).collect();
        let greedy = case["greedy"].as_array().unwrap();
        let greedy_top = case["greedy_top"].as_array().unwrap();
        let mut matched = 0;
        for (step, ours_tok) in ours.iter().enumerate() {
            let top = greedy_top[step].as_array().unwrap();
            let mut ours_top: Vec<f64> =
                lp["top_logprobs"][n_prompt + step].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
            ours_top.sort_by(|a, b| b.total_cmp(a));
            for (a, b) in ours_top.iter().zip(top.iter().map(|p| p[1].as_f64().unwrap())) {
                assert!((a - b).abs() <= TOLERANCE, "{kind}: decode step {step}: top logprob {a} vs llama.cpp {b}");
            }
            if *ours_tok == piece(&greedy[step]) {
                matched += 1;
                continue;
            }
            let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
            let near: Vec<String> = top
                .iter()
                .filter(|p| top[0][1].as_f64().unwrap() - p[1].as_f64().unwrap() <= TOLERANCE)
                .map(|p| piece(&p[0]))
                .collect();
            assert!(
                gap <= TOLERANCE && near.iter().any(|p| p == ours_tok),
                "{kind}: greedy step {step} chose {ours_tok:?}, llama.cpp {:?} (top-2 gap {gap:.4})",
                piece(&greedy[step])
            );
            eprintln!("{kind}: greedy paths part at step {step}, a near-tie (gap {gap:.4})");
            break;
        }
        eprintln!("{kind}: {matched} greedy tokens identical to llama.cpp's");
        assert_eq!(r["usage"]["prompt_tokens"].as_u64().unwrap() as usize, want_tokens.len());
    }
}

#[test]
fn tq2_0_matches_llama_cpp() {
    check("tq2_0", &fixture()["models"][0]);
}

#[test]
fn tq1_0_matches_llama_cpp() {
    check("tq1_0", &fixture()["models"][1]);
}

#[test]
fn i2_s_matches_llama_cpp_on_the_same_weights() {
    check("i2_s", &fixture()["models"][0]);
}

/// Every `meta-*` variant of the tiny model against llama.cpp's own reading of that file.
#[test]
fn metadata_variants_match_llama_cpp() {
    let fixture = fixture_named("llamacpp-bitnet-metadata.json");
    let models = fixture["models"].as_array().unwrap();
    assert!(models.len() >= 5, "the metadata fixture covers every meta-* variant");
    for reference in models {
        let stem = reference["file"].as_str().unwrap().trim_end_matches(".gguf");
        check_file(stem, &synthetic_model_named(stem), true, reference);
    }
}

/// The `refuse-*` variants: the Oracle stops at start-up, naming what it cannot run.
#[test]
fn metadata_shard_cannot_run_is_refused_at_load() {
    let cases = [
        ("refuse-output-tensor-tq2_0", "output.weight"),
        ("refuse-head-size-tq2_0", "bitnet.attention.key_length"),
        ("refuse-non-causal-tq2_0", "bitnet.attention.causal"),
        ("refuse-ff-per-layer-tq2_0", "bitnet.feed_forward_length differs between layers"),
        ("refuse-context-0-tq2_0", "bitnet.context_length is 0"),
        ("refuse-context-1-tq2_0", "bitnet.context_length is 1"),
        ("refuse-no-rms-eps-tq2_0", "lacks bitnet.attention.layer_norm_rms_epsilon"),
        ("refuse-rope-type-tq2_0", "bitnet.rope.scaling.type = \"ntk\""),
    ];
    for (stem, needle) in cases {
        let out = std::process::Command::new(binary("shard-oracle"))
            .arg("--model")
            .arg(synthetic_model_named(stem))
            .args(["--port", "0", "--no-p2p"])
            .env("SHARD_LOG", "warn")
            .output()
            .expect("run shard-oracle");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{stem}: the Oracle started:\n{text}");
        assert!(!text.contains("panicked"), "{stem}: a panic, not an error:\n{text}");
        assert!(text.contains(needle), "{stem}: the error does not name {needle:?}:\n{text}");
    }
}

/// A key that llama.cpp ignores is reported, and `--ffn-activation` is the explicit way to
/// run another activation (with a warning that logits then leave llama.cpp's).
#[test]
fn ignored_keys_are_reported_and_the_override_is_explicit() {
    let model = synthetic_model_named("meta-ignored-tq2_0");
    let plain = Oracle::start(&model, &["--threads", "2", "--no-p2p"]);
    let client = reqwest::blocking::Client::new();
    let body = json!({"prompt": "In the beginning", "max_tokens": 0, "echo": true, "logprobs": 1});
    let a = post_json(&client, &plain.endpoint("/v1/completions"), body.clone());
    let log = plain.log.lock().unwrap().join("\n");
    assert!(log.contains("bitnet.hidden_act") && log.contains("ignored"), "the ignored key is named in the log:\n{log}");
    let overridden = Oracle::start(&model, &["--threads", "2", "--no-p2p", "--ffn-activation", "relu2"]);
    let b = post_json(&client, &overridden.endpoint("/v1/completions"), body);
    let log = overridden.log.lock().unwrap().join("\n");
    assert!(log.contains("--ffn-activation"), "the override warns:\n{log}");
    assert_ne!(
        a["choices"][0]["logprobs"]["token_logprobs"], b["choices"][0]["logprobs"]["token_logprobs"],
        "relu2 gives other logits than the architecture's silu"
    );
}

/// microsoft/BitNet's `bitnet-b1.58` architecture (squared-ReLU gating, separate output
/// layer), which llama.cpp cannot run: held to the NumPy reference
/// (`tools/conformance/numpy_reference.py`, itself within 0.05 of llama.cpp on `bitnet` files).
fn check_b158(kind: &str) {
    let path = repo_root().join("tests/fixtures/numpy-bitnet-b1.58-tiny.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let model = synthetic_model_named(&format!("bitnet-b1.58-tiny-{kind}"));
    if kind == "tq2_0" {
        assert_eq!(sha256_file(&model), reference["sha256"].as_str().unwrap(), "regenerate the NumPy fixture");
    }
    let oracle = Oracle::start(&model, &["--threads", "2"]);
    let client = reqwest::blocking::Client::new();
    let models: Value = client.get(oracle.endpoint("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(models["data"][0]["meta"]["architecture"], "bitnet-b1.58");
    for case in reference["cases"].as_array().unwrap() {
        let r = post_json(
            &client,
            &oracle.endpoint("/v1/completions"),
            json!({"prompt": case["tokens"], "max_tokens": 0, "echo": true, "logprobs": 5}),
        );
        let lp = &r["choices"][0]["logprobs"];
        let mut worst: f64 = 0.0;
        for (i, pos) in case["positions"].as_array().unwrap().iter().enumerate().skip(1) {
            worst = worst.max((lp["token_logprobs"][i].as_f64().unwrap() - pos["token_logprob"].as_f64().unwrap()).abs());
            let mut ours: Vec<f64> = lp["top_logprobs"][i].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
            ours.sort_by(|a, b| b.total_cmp(a));
            for (a, b) in ours.iter().zip(pos["top"].as_array().unwrap()) {
                worst = worst.max((a - b[1].as_f64().unwrap()).abs());
            }
        }
        eprintln!("bitnet-b1.58 {kind}: max |Δ logprob| = {worst:.4}");
        assert!(worst <= TOLERANCE, "bitnet-b1.58 {kind}: logprobs differ from the reference by {worst:.4}");
    }
}

#[test]
fn bitnet_b158_tq2_0_matches_numpy_reference() {
    check_b158("tq2_0");
}

#[test]
fn bitnet_b158_i2_s_matches_numpy_reference() {
    check_b158("i2_s");
}

/// Weights copied at load into memory of their own in 2 MiB pages (the default on Linux) are
/// the file's bytes: the logits are the same bits as from the memory-mapped file.
#[test]
fn weights_copied_into_huge_pages_give_the_mapped_files_logits() {
    use shard_oracle::engine::kernels::{self, KernelChoice};
    use shard_oracle::engine::model::Logits;
    use shard_oracle::engine::{Engine, LoadOptions, WeightMemory};
    let (target, _) = shard_tests::default_pair();
    let kernel = kernels::select(KernelChoice::Auto).unwrap();
    let logits = |weights| {
        let engine = Engine::load(&target, &LoadOptions { n_ctx: 128, weights, ..LoadOptions::new(kernel) }, |_, _| {}).unwrap();
        let tokens = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog.", true, false).unwrap();
        let out = engine.model.forward(kernel, &tokens, &mut engine.model.new_cache(128), Logits::All);
        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let (mapped, copied) = (logits(WeightMemory::Mapped), logits(WeightMemory::HugePages));
    assert!(!mapped.is_empty());
    assert!(mapped == copied, "the copy's logits differ from the mapped file's");
}

/// How far an opt-in engine setting moves the default target's logits on real text, against
/// the exact settings: top-5 |Δ logprob| (max, mean) and the share of positions with the same
/// greedy token. Opt-ins are not llama.cpp's product, so they are measured here rather than
/// held to the fixture.
fn distance_from_exact(
    opts: impl Fn(shard_oracle::engine::LoadOptions) -> shard_oracle::engine::LoadOptions,
    what: &str,
) -> (f32, f32, f64) {
    use shard_oracle::engine::kernels::{self, KernelChoice};
    use shard_oracle::engine::model::Logits;
    use shard_oracle::engine::{Engine, LoadOptions};
    use shard_shared::sampling::{argmax, log_softmax};
    let (target, _) = shard_tests::default_pair();
    let kernel = kernels::select(KernelChoice::Auto).unwrap();
    let base = LoadOptions { n_ctx: 512, ..LoadOptions::new(kernel) };
    let exact = Engine::load(&target, &base, |_, _| {}).unwrap();
    let other = Engine::load(&target, &opts(base.clone()), |_, _| {}).unwrap();
    let text = std::fs::read_to_string(repo_root().join("models/README.md")).unwrap();
    let tokens = exact.tokenizer.encode(&text, true, false).unwrap();
    let tokens = &tokens[..tokens.len().min(400)];
    let run = |e: &Engine| e.model.forward(kernel, tokens, &mut e.model.new_cache(512), Logits::All);
    let (a, b) = (run(&exact), run(&other));
    let n_vocab = exact.model.config.n_vocab;
    let (mut worst, mut total, mut same) = (0f32, 0f32, 0usize);
    for (ra, rb) in a.chunks(n_vocab).zip(b.chunks(n_vocab)) {
        let (la, lb) = (log_softmax(ra), log_softmax(rb));
        // As the conformance checks measure: the exact run's top 5.
        let d = shard_shared::sampling::top_n(&la, 5).iter().map(|&(id, l)| (l - lb[id as usize]).abs()).fold(0f32, f32::max);
        worst = worst.max(d);
        total += d;
        same += (argmax(ra) == argmax(rb)) as usize;
    }
    let n = tokens.len();
    let share = same as f64 / n as f64;
    println!(
        "{what} against the exact settings over {n} positions: top-5 |Δ logprob| max {worst:.4}, mean {:.4}; \
         same greedy token at {same} ({:.1}%)",
        total / n as f32,
        100.0 * share
    );
    (worst, total / n as f32, share)
}

/// The opt-in int8 output layer (`--head int8`) against the exact one.
#[test]
fn int8_head_stays_close_to_the_exact_one() {
    use shard_oracle::engine::{Head, LoadOptions};
    let (_, mean, same) = distance_from_exact(|o| LoadOptions { head: Head::Int8, ..o }, "int8 head");
    assert!(same >= 0.95, "the int8 head changes the greedy token at {:.1}% of positions", 100.0 * (1.0 - same));
    assert!(mean < 0.05, "mean top-5 distance {mean}");
}

/// The screened output layer (`--head screened`) on 400 positions of real text: rows that feed
/// an argmax give the exact layer's argmax at every position and the exact layer's bits at
/// every token they did not rule out; other rows are the exact layer's, bit for bit.
#[test]
fn screened_head_keeps_the_exact_argmax_at_every_position() {
    use shard_oracle::engine::kernels::{self, KernelChoice};
    use shard_oracle::engine::model::{Logits, RowUse};
    use shard_oracle::engine::{Engine, Head, LoadOptions};
    use shard_shared::sampling::argmax;
    let (target, _) = shard_tests::default_pair();
    let kernel = kernels::select(KernelChoice::Auto).unwrap();
    let base = LoadOptions { n_ctx: 512, ..LoadOptions::new(kernel) };
    let exact = Engine::load(&target, &base, |_, _| {}).unwrap();
    let screened = Engine::load(&target, &LoadOptions { head: Head::Screened, ..base }, |_, _| {}).unwrap();
    let text = std::fs::read_to_string(repo_root().join("models/README.md")).unwrap();
    let tokens = exact.tokenizer.encode(&text, true, false).unwrap();
    let tokens = &tokens[..tokens.len().min(400)];
    let run = |e: &Engine, rows| e.model.forward_for(kernel, tokens, &mut e.model.new_cache(512), Logits::All, rows);
    let want = run(&exact, RowUse::Argmax);
    assert_eq!(want, run(&exact, RowUse::Full), "the exact layer ignores what its rows feed");
    let full = run(&screened, RowUse::Full);
    assert!(full.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "full rows differ from the exact layer");
    let got = run(&screened, RowUse::Argmax);
    let n_vocab = exact.model.config.n_vocab;
    let mut kept = 0;
    for (i, (g, w)) in got.chunks(n_vocab).zip(want.chunks(n_vocab)).enumerate() {
        assert_eq!(argmax(g), argmax(w), "position {i}");
        for (a, b) in g.iter().zip(w) {
            assert!(*a == f32::NEG_INFINITY || a.to_bits() == b.to_bits(), "position {i}: {a} against {b}");
        }
        kept += g.iter().filter(|v| v.is_finite()).count();
    }
    let n = tokens.len();
    println!(
        "screened head: {:.1} of {n_vocab} rows multiplied exactly per position, over {n} positions",
        kept as f64 / n as f64
    );
    assert!(kept < n * n_vocab / 8, "the screen ruled out too little: {kept} rows kept");
}

/// Activations scaled per token (`--act-scales token`, as bitnet.cpp runs BitNet) against
/// llama.cpp's per-256-value scales.
#[test]
fn per_token_activation_scales_stay_close_to_q8k() {
    use shard_oracle::engine::{ActScales, LoadOptions};
    let (_, mean, same) =
        distance_from_exact(|o| LoadOptions { act_scales: ActScales::Token, ..o }, "per-token activation scales");
    assert!(same >= 0.95, "per-token scales change the greedy token at {:.1}% of positions", 100.0 * (1.0 - same));
    assert!(mean < 0.05, "mean top-5 distance {mean}");
}
