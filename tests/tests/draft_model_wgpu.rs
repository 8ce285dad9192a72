#![cfg(feature = "wgpu")]
//! The burn draft model on burn's wgpu backend, natively: the same model definition as on
//! ndarray, run through Vulkan. Here that is Mesa's lavapipe (a CPU Vulkan driver, Debian's
//! `mesa-vulkan-drivers`, which `scripts/setup.sh` installs); on a machine with a GPU it is the
//! GPU. The browser's WebGPU path runs the same code through the web app's tests.
//!
//! Reports the distance between the wgpu and ndarray logits, and holds both to llama.cpp.

use futures::executor::block_on;
use serde_json::Value;
use shard_scout::backend::gpu_device;
use shard_scout::{cpu_device, Device, DraftCache, DraftModel, Drafter};
use shard_shared::sampling::{log_softmax, SamplingParams};
use shard_tests::{repo_root, smollm2_gguf};

fn logprobs(model: &DraftModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let values = model.forward(tokens, &mut DraftCache::default()).into_data().try_to_vec::<f32>().expect("f32 logits");
    values.chunks(model.config.n_vocab).map(log_softmax).collect()
}

fn gpu() -> Device {
    gpu_device()
        .unwrap_or_else(|e| panic!("no wgpu adapter ({e}): install a Vulkan driver, e.g. apt-get install mesa-vulkan-drivers"))
}

#[test]
fn wgpu_logits_match_ndarray_and_llama_cpp() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("tests/fixtures/llamacpp-smollm2-q4_1.json")).unwrap())
            .unwrap();
    let reference = &fixture["models"][1]; // llama.cpp on the same weights in f32
    let bytes = std::fs::read(smollm2_gguf()).unwrap();
    let gpu = gpu();
    let on_gpu = DraftModel::from_gguf(&bytes, &gpu).expect("SmolLM2 loads on wgpu");
    let on_cpu = DraftModel::from_gguf(&bytes, &cpu_device()).expect("SmolLM2 loads on ndarray");
    let (mut between, mut vs_llama) = (0.0f64, 0.0f64);
    for case in reference["cases"].as_array().unwrap() {
        let tokens: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let (g, c) = (logprobs(&on_gpu, &tokens), logprobs(&on_cpu, &tokens));
        for (i, (gr, cr)) in g.iter().zip(&c).enumerate() {
            // Every logprob of every row, wgpu against ndarray.
            let d = gr.iter().zip(cr).filter(|(a, _)| **a > -30.0).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            between = between.max(d as f64);
            if let Some(pos) = case["positions"].get(i + 1) {
                let mut top: Vec<f32> = gr.clone();
                top.sort_by(|a, b| b.total_cmp(a));
                for (a, b) in top.iter().zip(pos["top"].as_array().unwrap()) {
                    vs_llama = vs_llama.max((*a as f64 - b[1].as_f64().unwrap()).abs());
                }
            }
        }
    }
    eprintln!(
        "smollm2 q4_1 on wgpu: max |Δ logprob| vs ndarray = {between:.5}, top-5 vs llama.cpp (f32 weights) = {vs_llama:.4}"
    );
    assert!(vs_llama <= 0.1, "wgpu logprobs differ from llama.cpp by {vs_llama}");
    assert!(between <= 0.05, "wgpu and ndarray differ by {between}");
}

/// The default draft drafts the same greedy tokens on both backends.
#[test]
fn default_draft_greedy_is_the_same_on_wgpu_and_ndarray() {
    let bytes = std::fs::read(repo_root().join("models/shard-draft-llama-f16.gguf")).unwrap();
    let mut on_gpu = Drafter::new(DraftModel::from_gguf(&bytes, &gpu()).unwrap());
    let mut on_cpu = Drafter::new(DraftModel::from_gguf(&bytes, &cpu_device()).unwrap());
    let greedy = SamplingParams::greedy();
    for context in [vec![1u32, 200, 300, 400], vec![5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]] {
        let a = block_on(on_gpu.propose(&context, 8, &greedy, 0)).unwrap();
        let b = block_on(on_cpu.propose(&context, 8, &greedy, 0)).unwrap();
        assert_eq!(a.tokens, b.tokens, "greedy drafts after {context:?}");
    }
}
