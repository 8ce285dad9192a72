//! The HTTP API against a running Oracle: response shapes, streaming, sampling controls,
//! concurrency, and every bad-input case getting a clear 4xx in OpenAI's error shape.

use std::sync::OnceLock;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use shard_tests::{synthetic_model, Oracle};

/// One Oracle for the whole file, with a small context so "too long" is cheap to reach.
fn oracle() -> &'static Oracle {
    static ORACLE: OnceLock<Oracle> = OnceLock::new();
    ORACLE.get_or_init(|| Oracle::start(&synthetic_model("tq2_0"), &["--ctx-size", "256", "--max-body-bytes", "65536"]))
}

fn client() -> Client {
    Client::builder().timeout(std::time::Duration::from_secs(120)).build().unwrap()
}

fn model_id() -> String {
    let v: Value = client().get(oracle().endpoint("/v1/models")).send().unwrap().json().unwrap();
    v["data"][0]["id"].as_str().unwrap().to_string()
}

/// Asserts an OpenAI-shaped error with the given status; returns the error object.
fn expect_error(resp: Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(ct.starts_with("application/json"), "error content type {ct:?}");
    let v: Value = resp.json().expect("JSON error body");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error message in {v}");
    assert!(e["type"].is_string(), "error type in {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "param and code keys in {v}");
    e.clone()
}

fn post_raw(path: &str, body: &str) -> Response {
    client().post(oracle().endpoint(path)).header("content-type", "application/json").body(body.to_string()).send().unwrap()
}

fn post(path: &str, body: Value) -> Response {
    client().post(oracle().endpoint(path)).json(&body).send().unwrap()
}

#[test]
fn models_and_health() {
    let v: Value = client().get(oracle().endpoint("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    let id = model_id();
    let one: Value = client().get(oracle().endpoint(&format!("/v1/models/{id}"))).send().unwrap().json().unwrap();
    assert_eq!(one["id"], id);
    expect_error(client().get(oracle().endpoint("/v1/models/nope")).send().unwrap(), 404);
    let h: Value = client().get(oracle().endpoint("/health")).send().unwrap().json().unwrap();
    assert_eq!(h["status"], "ok");
}

#[test]
fn completion_shape_and_usage() {
    let r =
        post("/v1/completions", json!({"model": model_id(), "prompt": "In the beginning", "max_tokens": 5, "temperature": 0}));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert!(c["logprobs"].is_null());
    assert!(matches!(c["finish_reason"].as_str(), Some("length") | Some("stop")));
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 3);
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
}

#[test]
fn prompt_as_token_ids_and_batches() {
    let tokens: Value = post("/tokenize", json!({"content": "In the beginning"})).json().unwrap();
    let ids = tokens["tokens"].clone();
    let a: Value = post("/v1/completions", json!({"prompt": ids, "max_tokens": 4, "temperature": 0})).json().unwrap();
    let b: Value =
        post("/v1/completions", json!({"prompt": "In the beginning", "max_tokens": 4, "temperature": 0})).json().unwrap();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let batch: Value =
        post("/v1/completions", json!({"prompt": ["a b c", "In the beginning"], "max_tokens": 4, "temperature": 0, "n": 2}))
            .json()
            .unwrap();
    let choices = batch["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(choices[2]["text"], b["choices"][0]["text"]);
    assert_eq!(choices[3]["index"], 3);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let body = json!({"prompt": "The", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "top_k": 40, "seed": 1234});
    let a: Value = post("/v1/completions", body.clone()).json().unwrap();
    let b: Value = post("/v1/completions", body).json().unwrap();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let c: Value =
        post("/v1/completions", json!({"prompt": "The", "max_tokens": 12, "temperature": 1.0, "seed": 99})).json().unwrap();
    let d: Value =
        post("/v1/completions", json!({"prompt": "The", "max_tokens": 12, "temperature": 1.0, "seed": 100})).json().unwrap();
    assert_ne!(c["choices"][0]["text"], d["choices"][0]["text"], "different seeds should usually differ");
    // `n` choices decode together, choice k with seed + k: each is what it would be alone.
    let body = json!({"prompt": "The", "max_tokens": 12, "temperature": 1.0, "seed": 99, "n": 4});
    let together: Value = post("/v1/completions", body).json().unwrap();
    for k in 0..4u64 {
        let alone: Value =
            post("/v1/completions", json!({"prompt": "The", "max_tokens": 12, "temperature": 1.0, "seed": 99 + k}))
                .json()
                .unwrap();
        assert_eq!(together["choices"][k as usize]["text"], alone["choices"][0]["text"], "choice {k}");
    }
    let chat = |n: u64, seed: u64| -> Value {
        let body = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 1.0, "seed": seed, "n": n});
        post("/v1/chat/completions", body).json().unwrap()
    };
    let together = chat(3, 7);
    for k in 0..3u64 {
        assert_eq!(together["choices"][k as usize]["message"], chat(1, 7 + k)["choices"][0]["message"], "chat choice {k}");
    }
}

#[test]
fn stop_sequences_cut_the_text() {
    let full: Value = post("/v1/completions", json!({"prompt": "The", "max_tokens": 20, "temperature": 0})).json().unwrap();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    // Stop on a piece from the middle of the greedy text.
    let cut = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[cut..].chars().take(3).collect();
    let v: Value = post("/v1/completions", json!({"prompt": "The", "max_tokens": 20, "temperature": 0, "stop": [stop.clone()]}))
        .json()
        .unwrap();
    let got = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(got, &text[..text.find(&stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

/// Reads an SSE body into its `data:` payloads.
fn sse(resp: Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    resp.text().unwrap().lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect()
}

#[test]
fn streamed_completion_equals_unstreamed() {
    let body = json!({"prompt": "In the beginning", "max_tokens": 10, "temperature": 0, "logprobs": 2});
    let whole: Value = post("/v1/completions", body.clone()).json().unwrap();
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = sse(post("/v1/completions", streamed));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);
    let finish: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish.len(), 1);
}

/// A streamed request's choices (several prompts, `n` each) interleave in one stream, each
/// chunk naming its choice: put back together, every choice is the unstreamed one, with one
/// finish reason each and the usage of all of them.
#[test]
fn streamed_choices_equal_unstreamed_ones() {
    let gather = |chunks: &[Value], count: usize, field: &dyn Fn(&Value) -> Option<String>| -> (Vec<String>, Vec<usize>) {
        let (mut texts, mut finishes) = (vec![String::new(); count], vec![0; count]);
        for c in chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()) {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i] += &field(c).unwrap_or_default();
            finishes[i] += !c["finish_reason"].is_null() as usize;
        }
        (texts, finishes)
    };
    let parse = |events: Vec<String>| -> Vec<Value> {
        assert_eq!(events.last().unwrap(), "[DONE]");
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
    };

    let body = json!({"prompt": ["The", "Once upon"], "n": 2, "max_tokens": 8, "temperature": 1.0, "seed": 5, "echo": true});
    let whole: Value = post("/v1/completions", body.clone()).json().unwrap();
    let mut s = body;
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let chunks = parse(sse(post("/v1/completions", s)));
    let (texts, finishes) = gather(&chunks, 4, &|c| c["text"].as_str().map(str::to_string));
    for i in 0..4 {
        assert_eq!(texts[i], whole["choices"][i]["text"].as_str().unwrap(), "completion choice {i}");
        assert_eq!(finishes[i], 1, "completion choice {i}");
    }
    // (Cached prompt tokens depend on what ran before.)
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(chunks.last().unwrap()["usage"][field], whole["usage"][field], "{field}");
    }

    let body =
        json!({"messages": [{"role": "user", "content": "Hello"}], "n": 3, "max_tokens": 8, "temperature": 1.0, "seed": 11});
    let whole: Value = post("/v1/chat/completions", body.clone()).json().unwrap();
    let mut s = body;
    s["stream"] = json!(true);
    let chunks = parse(sse(post("/v1/chat/completions", s)));
    let (texts, finishes) = gather(&chunks, 3, &|c| c["delta"]["content"].as_str().map(str::to_string));
    let (roles, _) = gather(&chunks, 3, &|c| c["delta"]["role"].as_str().map(str::to_string));
    for i in 0..3 {
        assert_eq!(texts[i], whole["choices"][i]["message"]["content"].as_str().unwrap(), "chat choice {i}");
        assert_eq!((roles[i].as_str(), finishes[i]), ("assistant", 1), "chat choice {i}");
    }
}

#[test]
fn chat_completion_and_stream() {
    let body = json!({"model": model_id(), "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let v: Value = post("/v1/chat/completions", body.clone()).json().unwrap();
    assert_eq!(v["object"], "chat.completion");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    let content = c["message"]["content"].as_str().unwrap().to_string();
    let lps = c["logprobs"]["content"].as_array().unwrap();
    assert!(!lps.is_empty());
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(lps[0]["bytes"].is_array());
    // The chat template (ChatML from SmolLM2) adds a default system turn, so the prompt is long.
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);

    let mut s = body;
    s["stream"] = json!(true);
    let events = sse(post("/v1/chat/completions", s));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);
}

#[test]
fn tokenize_and_detokenize() {
    let v: Value = post("/tokenize", json!({"content": "Hello world", "with_pieces": true})).json().unwrap();
    let pieces = v["tokens"].as_array().unwrap();
    assert_eq!(pieces.iter().map(|p| p["piece"].as_str().unwrap()).collect::<String>(), "Hello world");
    let ids: Vec<Value> = pieces.iter().map(|p| p["id"].clone()).collect();
    let d: Value = post("/detokenize", json!({"tokens": ids})).json().unwrap();
    assert_eq!(d["content"], "Hello world");
}

#[test]
fn concurrent_requests_are_all_served_correctly() {
    let want: Value = post("/v1/completions", json!({"prompt": "Once", "max_tokens": 6, "temperature": 0})).json().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let prompt = if i % 2 == 0 { "Once" } else { "Twice" };
                let v: Value =
                    post("/v1/completions", json!({"prompt": prompt, "max_tokens": 6, "temperature": 0})).json().unwrap();
                (prompt, v["choices"][0]["text"].as_str().unwrap().to_string())
            })
        })
        .collect();
    let results: Vec<(&str, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (p, t) in &results {
        if *p == "Once" {
            assert_eq!(t, want["choices"][0]["text"].as_str().unwrap());
        }
    }
    let twice: Vec<&String> = results.iter().filter(|r| r.0 == "Twice").map(|r| &r.1).collect();
    assert!(twice.windows(2).all(|w| w[0] == w[1]));
}

// ---- bad input: every case is a clear 4xx in OpenAI's shape ----

#[test]
fn malformed_json_is_400() {
    let e = expect_error(post_raw("/v1/completions", "{\"prompt\": \"hi\", "), 400);
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"));
    expect_error(post_raw("/v1/chat/completions", "not json at all"), 400);
    expect_error(post_raw("/v1/completions", ""), 400);
    expect_error(post_raw("/tokenize", "[1, 2"), 400);
}

#[test]
fn wrong_field_types_are_400() {
    let e = expect_error(post("/v1/completions", json!({"prompt": "hi", "max_tokens": "many"})), 400);
    assert_eq!(e["param"], "max_tokens");
    expect_error(post("/v1/chat/completions", json!({"messages": "hello"})), 400);
    expect_error(post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": 5}]})), 400);
    expect_error(post("/v1/completions", json!({"prompt": {"a": 1}})), 400);
}

#[test]
fn out_of_range_parameters_are_400() {
    for (field, value) in [
        ("temperature", json!(3.5)),
        ("top_p", json!(0)),
        ("logprobs", json!(21)),
        ("max_tokens", json!(-1)),
        ("n", json!(0)),
        ("top_k", json!(-2)),
    ] {
        let mut body = json!({"prompt": "hi"});
        body[field] = value;
        let e = expect_error(post("/v1/completions", body), 400);
        assert_eq!(e["param"], field, "{field}");
    }
    expect_error(post("/v1/completions", json!({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]})), 400);
    expect_error(post("/v1/completions", json!({"prompt": "hi", "logit_bias": {"abc": 1}})), 400);
    expect_error(post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})), 400);
    expect_error(post("/v1/chat/completions", json!({"messages": []})), 400);
    expect_error(post("/v1/chat/completions", json!({"messages": [{"role": "wizard", "content": "x"}]})), 400);
    expect_error(
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ),
        400,
    );
}

#[test]
fn bad_tokens_are_400() {
    expect_error(post("/v1/completions", json!({"prompt": [1, 2, 99999999]})), 400);
    expect_error(post("/v1/completions", json!({"prompt": []})), 400);
    expect_error(post("/v1/completions", json!({"prompt": ""})), 400);
    expect_error(post("/detokenize", json!({"tokens": [-1]})), 400);
    expect_error(post("/detokenize", json!({"tokens": [49152]})), 400);
}

#[test]
fn unknown_model_is_404() {
    let e = expect_error(post("/v1/completions", json!({"model": "gpt-9", "prompt": "hi"})), 404);
    assert_eq!(e["code"], "model_not_found");
    expect_error(post("/v1/chat/completions", json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})), 404);
}

#[test]
fn prompt_longer_than_context_is_400() {
    let long = "word ".repeat(400);
    let e = expect_error(post("/v1/completions", json!({"prompt": long})), 400);
    assert_eq!(e["code"], "context_length_exceeded");
    let e =
        expect_error(post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": long}], "stream": true})), 400);
    assert_eq!(e["code"], "context_length_exceeded");
}

#[test]
fn oversized_body_is_413() {
    let huge = "x".repeat(100_000);
    let e = expect_error(post("/v1/completions", json!({"prompt": huge})), 413);
    assert_eq!(e["code"], "request_too_large");
}

#[test]
fn unknown_paths_and_methods() {
    expect_error(client().get(oracle().endpoint("/v2/nothing")).send().unwrap(), 404);
    expect_error(client().get(oracle().endpoint("/v1/completions")).send().unwrap(), 405);
}

#[test]
fn server_survives_all_of_the_above() {
    for body in ["{", "[]", "null", "{\"prompt\": null}", "{\"messages\": null}", "\u{0}\u{1}"] {
        let r = post_raw("/v1/completions", body);
        assert!(r.status().is_client_error(), "{body:?} gave {}", r.status());
        let r = post_raw("/v1/chat/completions", body);
        assert!(r.status().is_client_error(), "{body:?} gave {}", r.status());
    }
    let v: Value = post("/v1/completions", json!({"prompt": "still here", "max_tokens": 2})).json().unwrap();
    assert_eq!(v["object"], "text_completion");
}

#[test]
fn full_queue_is_429_with_retry_after() {
    let busy = Oracle::start(&synthetic_model("tq2_0"), &["--queue-capacity", "1", "--threads", "1"]);
    let url = busy.endpoint("/v1/completions");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                client().post(&url).json(&json!({"prompt": "The", "max_tokens": 200, "temperature": 0})).send().unwrap()
            })
        })
        .collect();
    let responses: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<Response> = responses.into_iter().filter(|r| r.status() == 429).collect();
    assert!(ok >= 1, "some requests must be served");
    assert!(!refused.is_empty(), "with room for one waiting request, eight at once must overflow");
    for r in refused {
        let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(secs >= 1);
        let e = expect_error(r, 429);
        assert_eq!(e["code"], "queue_full");
    }
}

/// The served OpenAPI description is the committed one (regenerate with
/// `shard-oracle openapi > docs/openapi.json`), and it names every route the server answers.
#[test]
fn the_served_openapi_spec_is_the_committed_one() {
    let served: Value = client().get(oracle().endpoint("/openapi.json")).send().unwrap().json().unwrap();
    let path = shard_tests::repo_root().join("docs/openapi.json");
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(served == committed, "docs/openapi.json is stale: run `shard-oracle openapi > docs/openapi.json`");
    let paths: Vec<&str> = served["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for p in [
        "/v1/models",
        "/v1/models/{id}",
        "/v1/completions",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
        "/api/queue",
        "/api/queue/{ticket}",
        "/api/swarm",
        "/api/p2p/addrs",
        "/api/scout",
        "/api/me",
        "/models/{file}",
        "/openapi.json",
    ] {
        assert!(paths.contains(&p), "{p} is missing from the spec");
    }
    assert_eq!(served["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}
