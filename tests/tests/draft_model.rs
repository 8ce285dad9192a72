//! The Scout's burn draft model against llama.cpp, on a real model: SmolLM2-135M-Instruct in
//! Q4_1 (dequantized to f32 at load), run on burn's ndarray backend.
//!
//! The references (`tests/fixtures/llamacpp-smollm2-q4_1*.json`, see [`FIXTURES`]) were
//! recorded from llama-cpp-python 0.3.36 by `tools/conformance/llamacpp_reference.py
//! --self-noise`, once on a host with AVX-512 and once on an AVX2-only host, each on two files:
//!
//! 0. the Q4_1 file itself. llama.cpp's CPU kernels round activations to int8 blocks before
//!    each Q4_1 matmul, and on this model that rounding is unstable: llama.cpp's own top-5
//!    logprobs move by up to 0.65 when the same prompt is evaluated token by token instead of
//!    in one batch, and by up to 0.54 between the AVX-512 and the AVX2 build. No
//!    implementation, llama.cpp on another CPU included, can be held to 0.1 there, so ours is
//!    held to llama.cpp's own band, and the test prints the distances position by position.
//! 1. the same weights dequantized to F32 (`tools/conformance/dequantize_gguf.py`), where
//!    llama.cpp computes in floats as we do, and is stable to 0.01. Here the top-5 logprobs
//!    must be within 0.1 of both builds at every position, and greedy drafting must follow
//!    llama.cpp's greedy path until the first near-tie.

use futures::executor::block_on;
use serde_json::Value;
use shard_scout::{cpu_device, DraftCache, DraftModel, Drafter};
use shard_shared::sampling::{log_softmax, SamplingParams};
use shard_tests::{repo_root, sha256_file, smollm2_gguf};

const TOLERANCE: f64 = 0.1;

/// llama.cpp's recordings, by `tools/conformance/llamacpp_reference.py --self-noise`. llama.cpp
/// compiles its SIMD code for the host it is built on, and its Q4_1 path rounds differently with
/// AVX-512 and with AVX2, so it was recorded twice: in an earlier session on a host with
/// AVX-512 (that fixture predates the `system_info` field), and on an AVX2-only host.
const FIXTURES: [&str; 2] = ["llamacpp-smollm2-q4_1.json", "llamacpp-smollm2-q4_1-avx2.json"];

/// Model `i` of fixture `f` (model 0: llama.cpp on the Q4_1 file, 1: on its F32 dequantization).
fn reference_in(f: usize, i: usize) -> Value {
    let path = repo_root().join("tests/fixtures").join(FIXTURES[f]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON");
    v["models"][i].clone()
}

/// Model `i` of the first fixture.
fn reference(i: usize) -> Value {
    reference_in(0, i)
}

/// Per position, the largest |Δ| between two recorded cases of the same prompt: the token's
/// logprob and the top 5 by rank (how far two llama.cpp builds are apart).
fn recorded_distances(a: &Value, b: &Value) -> Vec<f64> {
    let (pa, pb) = (a["positions"].as_array().unwrap(), b["positions"].as_array().unwrap());
    pa.iter()
        .zip(pb)
        .skip(1)
        .map(|(x, y)| {
            let mut worst = (x["token_logprob"].as_f64().unwrap() - y["token_logprob"].as_f64().unwrap()).abs();
            for (u, v) in x["top"].as_array().unwrap().iter().zip(y["top"].as_array().unwrap()) {
                worst = worst.max((u[1].as_f64().unwrap() - v[1].as_f64().unwrap()).abs());
            }
            worst
        })
        .collect()
}

/// Per position, the largest |Δ| between our row and a recorded case: the token's logprob and
/// the top 5 by rank. Entry i - 1 is the row predicting token i.
fn distances(lp: &[Vec<f32>], case: &Value) -> Vec<f64> {
    let tokens = ids(&case["tokens"]);
    let mut out = vec![];
    for (i, pos) in case["positions"].as_array().unwrap().iter().enumerate().skip(1) {
        let row = &lp[i - 1];
        let mut worst = (row[tokens[i] as usize] as f64 - pos["token_logprob"].as_f64().unwrap()).abs();
        let mut ours: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        ours.sort_by(|a, b| b.total_cmp(a));
        for (a, b) in ours.iter().zip(pos["top"].as_array().unwrap()) {
            worst = worst.max((a - b[1].as_f64().unwrap()).abs());
        }
        out.push(worst);
    }
    out
}

/// The largest of [`distances`].
fn distance(lp: &[Vec<f32>], case: &Value) -> f64 {
    distances(lp, case).into_iter().fold(0.0, f64::max)
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
    let cases: Vec<Value> = (0..FIXTURES.len()).flat_map(|f| reference_in(f, 1)["cases"].as_array().unwrap().clone()).collect();
    for case in &cases {
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

/// Against llama.cpp's own Q4_1 kernels (int8 activations). llama.cpp does not agree with
/// itself there: its logprobs move between a batched and a token-by-token pass, and between a
/// build for AVX-512 and one for AVX2 (by up to 0.54, at more than half the positions by over
/// 0.1). The table printed shows it position by position. Our distance to each build stays
/// within 1.5 × the most llama.cpp moves; 0.1 at every position is not attainable against a
/// reference that is not itself reproducible to 0.1.
#[test]
fn smollm2_q4_1_within_llama_cpp_int8_noise() {
    let (_, model) = load_smollm2();
    let (avx512, avx2) = (reference_in(0, 0), reference_in(1, 0));
    assert_eq!(avx512["sha256"], avx2["sha256"], "both recordings are of the same file");
    let mut summary = [(0.0f64, 0usize); 2];
    let (mut positions, mut llama_moves, mut worst_move) = (0, 0, 0.0f64);
    for (ca, cb) in avx512["cases"].as_array().unwrap().iter().zip(avx2["cases"].as_array().unwrap()) {
        let tokens = ids(&ca["tokens"]);
        assert_eq!(tokens, ids(&cb["tokens"]));
        let prompt = ca["prompt"].as_str().unwrap();
        let lp = forward(&model, &tokens, &mut DraftCache::default());
        let ours = [distances(&lp, ca), distances(&lp, cb)];
        let across = recorded_distances(ca, cb);
        let by_token: Vec<f64> =
            cb["self_noise_by_position"].as_array().expect("per-position noise").iter().map(|v| v.as_f64().unwrap()).collect();
        eprintln!("smollm2 q4_1, {prompt:.30?}: |Δ| per position: ours vs AVX-512 build / ours vs AVX2 build / AVX-512 vs AVX2 build / AVX2 batched vs token-by-token");
        for i in 0..across.len() {
            let moves = across[i].max(by_token[i]);
            eprintln!("  {i:>2}: {:.3} / {:.3} / {:.3} / {:.3}", ours[0][i], ours[1][i], across[i], by_token[i]);
            llama_moves += (moves > TOLERANCE) as usize;
            worst_move = worst_move.max(moves);
            for (build, d) in ours.iter().enumerate() {
                let (w, over) = &mut summary[build];
                *w = w.max(d[i]);
                *over += (d[i] > TOLERANCE) as usize;
            }
        }
        positions += across.len();
    }
    eprintln!(
        "smollm2 q4_1 vs llama.cpp's Q4_1 kernels over {positions} positions: AVX-512 build max {:.4} ({} over {TOLERANCE}), \
         AVX2 build max {:.4} ({} over {TOLERANCE}); llama.cpp moves by more than {TOLERANCE} at {llama_moves} positions, by up to {worst_move:.4}",
        summary[0].0, summary[0].1, summary[1].0, summary[1].1
    );
    for (build, (w, _)) in summary.iter().enumerate() {
        assert!(
            *w <= 1.5 * worst_move,
            "{w:.4} from llama.cpp's {} build is outside llama.cpp's own band ({worst_move:.4})",
            ["AVX-512", "AVX2"][build]
        );
    }
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
