//! The default model pair shipped in `models/`: the files are the ones the model card
//! describes, and the Oracle's engine decodes them exactly as llama.cpp did when the pair was
//! recorded (`tests/fixtures/default-pair.json`, written by tools/train/eval_llamacpp.py).

use serde_json::{json, Value};
use shard_tests::{post_json, repo_root, sha256_file, Oracle};

fn fixture() -> Value {
    let path = repo_root().join("tests/fixtures/default-pair.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("default-pair fixture")).expect("fixture JSON")
}

/// Loads one shipped file in `shard-oracle` and checks its greedy continuations.
fn check(which: &str) {
    let fx = fixture();
    let rel = fx[which]["path"].as_str().unwrap();
    let path = repo_root().join(rel);
    assert_eq!(sha256_file(&path), fx[which]["sha256"].as_str().unwrap(), "{rel} is not the file the model card describes");
    let oracle = Oracle::start(&path, &[]);
    let client = reqwest::blocking::Client::new();
    let n = fx["n_predict"].as_u64().unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let ids = &case["prompt_ids"];
        // The tokenizer agrees with llama.cpp on the prompt (chat cases render the template).
        let ours = if case["kind"] == "chat" {
            let lp = post_json(
                &client,
                &oracle.endpoint("/v1/chat/completions"),
                json!({"messages": [{"role": "user", "content": case["prompt"]}], "max_tokens": 1, "temperature": 0}),
            );
            lp["usage"]["prompt_tokens"].clone()
        } else {
            json!(post_json(&client, &oracle.endpoint("/tokenize"), json!({"content": case["prompt"], "add_special": true}))
                ["tokens"]
                .as_array()
                .unwrap()
                .len())
        };
        assert_eq!(
            ours.as_u64().unwrap() as usize,
            ids.as_array().unwrap().len(),
            "{which}: prompt length of {}",
            case["prompt"]
        );
        if case["kind"] != "chat" {
            let toks = post_json(&client, &oracle.endpoint("/tokenize"), json!({"content": case["prompt"], "add_special": true}));
            assert_eq!(&toks["tokens"], ids, "{which}: tokens of {}", case["prompt"]);
        }
        // Greedy decoding from the same token ids gives llama.cpp's tokens.
        let want = &case[which]["ids"];
        let want_text =
            post_json(&client, &oracle.endpoint("/detokenize"), json!({"tokens": want}))["content"].as_str().unwrap().to_string();
        let r =
            post_json(&client, &oracle.endpoint("/v1/completions"), json!({"prompt": ids, "max_tokens": n, "temperature": 0}));
        let got = r["choices"][0]["text"].as_str().unwrap();
        let eos = fx["eos_id"].as_u64().unwrap();
        // llama.cpp's recording runs through EOS; the Oracle stops there.
        let until_eos: Vec<Value> = want.as_array().unwrap().iter().take_while(|t| t.as_u64() != Some(eos)).cloned().collect();
        let want_text = if until_eos.len() < want.as_array().unwrap().len() {
            post_json(&client, &oracle.endpoint("/detokenize"), json!({"tokens": until_eos}))["content"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            want_text
        };
        assert_eq!(got, want_text, "{which}: greedy continuation of {:?}", case["prompt"]);
        eprintln!("{which}: {:?} -> {got:?}", case["prompt"]);
    }
}

#[test]
fn target_matches_its_recorded_generations() {
    check("target");
}

#[test]
fn draft_matches_its_recorded_generations() {
    check("draft");
}

#[test]
fn chat_answers_in_the_corpus_voice() {
    let fx = fixture();
    let path = repo_root().join(fx["target"]["path"].as_str().unwrap());
    let oracle = Oracle::start(&path, &[]);
    let client = reqwest::blocking::Client::new();
    let r = post_json(
        &client,
        &oracle.endpoint("/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "Tell me about the land of Egypt."}], "max_tokens": 40, "temperature": 0}),
    );
    let text = r["choices"][0]["message"]["content"].as_str().unwrap().to_lowercase();
    // Plain English from the Bible and the Brown corpus: common words, no control tokens.
    let words: Vec<&str> = text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).collect();
    let common =
        ["the", "and", "of", "to", "a", "in", "that", "he", "unto", "is", "was", "it", "his", "i", "shall", "lord", "for"];
    let hits = words.iter().filter(|w| common.contains(w)).count();
    assert!(words.len() >= 10 && hits >= 4, "answer does not read like the corpus: {text:?}");
    assert!(!text.contains("<|"), "control tokens leaked into the answer: {text:?}");
}
