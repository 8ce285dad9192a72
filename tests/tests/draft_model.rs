//! The Scout's burn draft model against llama.cpp, on a real model: SmolLM2-135M-Instruct in
//! Q4_1 (dequantized to f32 at load), run on burn's ndarray backend.
//!
//! The reference (`tests/fixtures/llamacpp-smollm2-q4_1.json`) was recorded from llama-cpp-python
//! by `tools/conformance/llamacpp_reference.py --self-noise` on two files:
//!
//! 0. the Q4_1 file itself. llama.cpp's CPU kernels round activations to int8 blocks before
//!    each Q4_1 matmul, and on this model that rounding is unstable: llama.cpp's own top-5
//!    logprobs move by 0.65 when the same prompt is evaluated token by token instead of in one
//!    batch (recorded as `self_noise_n_batch_1`). No other implementation can be held to 0.1
//!    there, so ours is held to llama.cpp's own noise band.
//! 1. the same weights dequantized to F32 (`tools/conformance/dequantize_gguf.py`), where
//!    llama.cpp computes in floats as we do, and is stable to 0.007. Here the top-5 logprobs
//!    must be within 0.1 at every position, and greedy drafting must follow llama.cpp's greedy
//!    path until the first near-tie.

use futures::executor::block_on;
use serde_json::Value;
use shard_scout::{cpu_device, DraftCache, DraftModel, Drafter};
use shard_shared::sampling::{log_softmax, SamplingParams};
use shard_tests::{repo_root, sha256_file, smollm2_gguf};

const TOLERANCE: f64 = 0.1;

/// Reference `i` of the fixture (0: llama.cpp on the Q4_1 file, 1: on its F32 dequantization).
fn reference(i: usize) -> Value {
    let path = repo_root().join("tests/fixtures/llamacpp-smollm2-q4_1.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON");
    v["models"][i].clone()
}

/// Largest |Δ| between our rows and a recorded case: the token's logprob and the top 5 by rank.
fn distance(lp: &[Vec<f32>], case: &Value) -> f64 {
    let tokens = ids(&case["tokens"]);
    let mut worst: f64 = 0.0;
    for (i, pos) in case["positions"].as_array().unwrap().iter().enumerate().skip(1) {
        let row = &lp[i - 1];
        worst = worst.max((row[tokens[i] as usize] as f64 - pos["token_logprob"].as_f64().unwrap()).abs());
        let mut ours: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        ours.sort_by(|a, b| b.total_cmp(a));
        for (a, b) in ours.iter().zip(pos["top"].as_array().unwrap()) {
            worst = worst.max((a - b[1].as_f64().unwrap()).abs());
        }
    }
    worst
}

fn load_smollm2() -> (Vec<u8>, DraftModel) {
    let path = smollm2_gguf();
    assert_eq!(sha256_file(&path), reference(0)["sha256"].as_str().unwrap(), "the fixture was recorded on another file");
    let bytes = std::fs::read(&path).unwrap();
    let model = DraftModel::from_gguf(&bytes, &cpu_device()).expect("SmolLM2 loads");
    (bytes, model)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// Runs `tokens` and returns one row of logprobs per position.
fn forward(model: &DraftModel, tokens: &[u32], cache: &mut DraftCache) -> Vec<Vec<f32>> {
    let values = model.forward(tokens, cache).into_data().try_to_vec::<f32>().expect("f32 logits");
    values.chunks(model.config.n_vocab).map(log_softmax).collect()
}

#[test]
fn smollm2_q4_1_matches_llama_cpp_on_ndarray() {
    let (_, model) = load_smollm2();
    assert_eq!((model.config.n_layer, model.config.n_embd, model.config.n_head_kv), (30, 576, 3));
    let mut drafter = Drafter::new(model);
    let reference = reference(1);
    for case in reference["cases"].as_array().unwrap() {
        let tokens = ids(&case["tokens"]);
        let prompt = case["prompt"].as_str().unwrap();

        // All positions in one pass.
        let mut cache = DraftCache::default();
        let lp = forward(&drafter.model, &tokens, &mut cache);
        assert_eq!(cache.len(), tokens.len());
        let worst = distance(&lp, case);
        eprintln!("smollm2 q4_1 vs llama.cpp on the same weights in f32: {prompt:.30?}: max |Δ logprob| = {worst:.4}");
        assert!(worst <= TOLERANCE, "logprobs differ from llama.cpp by up to {worst:.4} on {prompt:?}");

        // The KV cache: the prompt in two chunks gives the same last row as in one pass.
        let mut cache = DraftCache::default();
        let half = tokens.len() / 2;
        forward(&drafter.model, &tokens[..half], &mut cache);
        let tail = forward(&drafter.model, &tokens[half..], &mut cache);
        let (a, b) = (tail.last().unwrap(), lp.last().unwrap());
        let drift = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(drift < 1e-3, "chunked prefill drifts by {drift}");

        // Greedy drafting through the draft loop (cache reuse, one token at a time) follows
        // llama.cpp's greedy path until llama.cpp's own top two are within the tolerance.
        let proposal = block_on(drafter.propose(&tokens, 16, &SamplingParams::greedy(), 0)).unwrap();
        assert!(proposal.q.is_none(), "a greedy draft sends no q");
        let greedy = ids(&case["greedy"]);
        let mut matched = 0;
        for (step, (&ours, &theirs)) in proposal.tokens.iter().zip(&greedy).enumerate() {
            if ours == theirs {
                matched += 1;
                continue;
            }
            let top = case["greedy_top"][step].as_array().unwrap();
            let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
            assert!(gap <= TOLERANCE, "greedy step {step}: {ours} vs llama.cpp {theirs}, top-2 gap {gap:.4}");
            break;
        }
        eprintln!("smollm2 q4_1: {matched} greedy draft tokens identical to llama.cpp's");
        assert!(matched >= 4, "only {matched} greedy tokens agree");
    }
}

/// Against llama.cpp's own Q4_1 kernels (int8 activations), our f32 logits stay within the
/// band that llama.cpp itself moves in between a batched and a token-by-token pass.
#[test]
fn smollm2_q4_1_within_llama_cpp_int8_noise() {
    let (_, model) = load_smollm2();
    let reference = reference(0);
    let noise = reference["self_noise_n_batch_1"].as_f64().unwrap();
    let mut worst: f64 = 0.0;
    for case in reference["cases"].as_array().unwrap() {
        let lp = forward(&model, &ids(&case["tokens"]), &mut DraftCache::default());
        let d = distance(&lp, case);
        eprintln!(
            "smollm2 q4_1 vs llama.cpp's int8-activation kernels: {:.30?}: max |Δ logprob| = {d:.4}",
            case["prompt"].as_str().unwrap()
        );
        worst = worst.max(d);
    }
    eprintln!("smollm2 q4_1 vs llama.cpp's int8-activation kernels: max |Δ logprob| = {worst:.4}; llama.cpp batched vs token-by-token: {noise:.4}");
    assert!(worst <= 1.5 * noise, "{worst:.4} is outside llama.cpp's own noise band ({noise:.4})");
}

/// A sampled draft carries the distributions it drew from, and the same seed gives the same
/// draft: the Oracle's lossless acceptance needs q, and golden tickets need reproducibility.
#[test]
fn sampled_drafts_carry_q_and_are_reproducible() {
    let bytes = std::fs::read(repo_root().join("models/shard-draft-llama-f16.gguf")).unwrap();
    let mut drafter = Drafter::new(DraftModel::from_gguf(&bytes, &cpu_device()).unwrap());
    let params = SamplingParams { temperature: 0.8, top_k: 40, ..SamplingParams::default() };
    let context = [1u32, 200, 300, 400];
    let a = block_on(drafter.propose(&context, 6, &params, 7)).unwrap();
    let b = block_on(drafter.propose(&context, 6, &params, 7)).unwrap();
    assert_eq!(a, b, "same seed, same draft");
    let q = a.q.as_ref().expect("sampled drafts carry q");
    assert_eq!(q.len(), 6);
    for (dist, &x) in q.iter().zip(&a.tokens) {
        assert!(dist.prob(x) > 0.0, "a drafted token has probability under its own q");
    }
}

/// Bad files get a clear error: a truncated GGUF, a non-llama architecture.
#[test]
fn bad_draft_files_are_rejected() {
    let bytes = std::fs::read(repo_root().join("models/shard-draft-llama-f16.gguf")).unwrap();
    let truncated = &bytes[..bytes.len() / 2];
    let err = DraftModel::from_gguf(truncated, &cpu_device()).err().expect("truncated file rejected");
    eprintln!("truncated: {err}");
    let target = std::fs::read(repo_root().join("models/shard-target-bitnet-tq2_0.gguf")).unwrap();
    let err = DraftModel::from_gguf(&target, &cpu_device()).err().expect("bitnet file rejected");
    assert!(err.to_string().contains("llama"), "{err}");
}

/// A hostile job (tokens outside the vocabulary, an empty or overlong context) gets an error,
/// and the drafter keeps working.
#[test]
fn bad_contexts_are_errors_not_panics() {
    let bytes = std::fs::read(repo_root().join("models/shard-draft-llama-f16.gguf")).unwrap();
    let mut drafter = Drafter::new(DraftModel::from_gguf(&bytes, &cpu_device()).unwrap());
    let (n_vocab, n_ctx) = (drafter.model.config.n_vocab as u32, drafter.model.config.n_ctx);
    let greedy = SamplingParams::greedy();
    assert!(block_on(drafter.propose(&[], 4, &greedy, 0)).is_err());
    assert!(block_on(drafter.propose(&[1, n_vocab], 4, &greedy, 0)).is_err());
    assert!(block_on(drafter.propose(&vec![1; n_ctx + 1], 4, &greedy, 0)).is_err());
    // Near the end of the context, k shrinks to fit.
    let near_end = block_on(drafter.propose(&vec![1; n_ctx - 2], 8, &greedy, 0)).unwrap();
    assert_eq!(near_end.tokens.len(), 2);
    let ok = block_on(drafter.propose(&[1, 2, 3], 4, &greedy, 0)).unwrap();
    assert_eq!(ok.tokens.len(), 4);
}
