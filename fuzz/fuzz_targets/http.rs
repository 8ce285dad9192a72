//! Fuzzes the HTTP API's request bodies: each JSON body type, parsed as the server parses it
//! (`api::json::parse_body`), then put through the checks the handlers run before they touch
//! the model. None of it may panic, and a bad body must come back as an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_oracle::api::chat::{self, ChatRequest};
use shard_oracle::api::completions::{self, CompletionRequest};
use shard_oracle::api::json::parse_body;
use shard_oracle::api::tokenize::{DetokenizeRequest, TokenizeRequest};

/// SmolLM2's vocabulary and a common context, so that id and length checks bite.
const N_VOCAB: usize = 49_152;
const N_CTX: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            if let Ok(req) = parse_body::<CompletionRequest>(body) {
                let _ = completions::validate(&req, N_VOCAB);
            }
        }
        1 => {
            if let Ok(req) = parse_body::<ChatRequest>(body) {
                let _ = chat::validate(&req, N_VOCAB, N_CTX);
            }
        }
        2 => {
            let _ = parse_body::<TokenizeRequest>(body);
        }
        _ => {
            let _ = parse_body::<DetokenizeRequest>(body);
        }
    }
});
