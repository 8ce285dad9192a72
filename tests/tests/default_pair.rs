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

/// Why a text is not prose: spaced single letters (`t h e   t h e`) or a short loop.
fn not_prose(text: &str) -> Option<String> {
    let words: Vec<&str> =
        text.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).filter(|w| !w.is_empty()).collect();
    if words.len() < 8 {
        return Some(format!("only {} words", words.len()));
    }
    // English has few one-letter words ("a", "I", "O"): a real answer stays far below a third.
    let single = words.iter().filter(|w| w.chars().count() == 1).count() as f64 / words.len() as f64;
    if single > 0.3 {
        return Some(format!("{:.0}% of the words are single letters", single * 100.0));
    }
    // A loop of one or two words repeats the same 3-word window again and again.
    let grams: Vec<String> = words.windows(3).map(|w| w.join(" ").to_lowercase()).collect();
    let distinct = grams.iter().collect::<std::collections::HashSet<_>>().len() as f64 / grams.len() as f64;
    if distinct < 0.15 {
        return Some(format!("only {:.0}% of its 3-word windows differ", distinct * 100.0));
    }
    None
}

/// Chats of 3 and 5 turns, each answer greedy and fed back as the history, as the web app does:
/// every answer is made of words. (The first default pair was trained on single turns only,
/// and answered the second turn with spaced single letters.)
#[test]
fn multi_turn_chats_answer_in_words() {
    let fx = fixture();
    let path = repo_root().join(fx["target"]["path"].as_str().unwrap());
    let oracle = Oracle::start(&path, &[]);
    let client = reqwest::blocking::Client::new();
    let conversations: [&[&str]; 2] = [
        &["Tell me about the land of Egypt.", "And it came to pass", "What did the people say?"],
        &["The jury said that the city", "And it came to pass", "Tell me more.", "She looked at him and", "What happened next?"],
    ];
    for turns in conversations {
        let mut messages: Vec<Value> = vec![];
        for (i, user) in turns.iter().enumerate() {
            messages.push(json!({"role": "user", "content": user}));
            let r = post_json(
                &client,
                &oracle.endpoint("/v1/chat/completions"),
                json!({"messages": messages, "max_tokens": 40, "temperature": 0}),
            );
            let answer = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
            eprintln!("{}-turn chat, turn {}: {user:?} -> {answer:?}", turns.len(), i + 1);
            if let Some(why) = not_prose(&answer) {
                panic!("turn {} of a {}-turn chat: {why}: {answer:?}", i + 1, turns.len());
            }
            assert!(!answer.contains("<|"), "control tokens leaked into the answer: {answer:?}");
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    }
}

#[test]
fn the_prose_check_rejects_what_it_should() {
    assert!(not_prose("t h e   t h e   t h e   t h e   t h e   t h e").is_some());
    assert!(not_prose("the the the the the the the the the the the the").is_some());
    assert!(not_prose(&"and the ".repeat(15)).is_some());
    assert!(not_prose("And the LORD said unto Moses, Behold, I will give thee a land that floweth with milk").is_none());
}
