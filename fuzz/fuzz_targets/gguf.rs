//! Fuzzes everything that reads a GGUF file's bytes: the container, then the hyperparameters,
//! tokenizer and chat template built from its metadata. None of it may panic or allocate
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_shared::chat::ChatTemplate;
use shard_shared::gguf::Gguf;
use shard_shared::hparams::Hparams;
use shard_shared::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    for t in &g.tensors {
        let _ = g.tensor_data(t);
    }
    if let Some(arch) = g.architecture() {
        if let Ok(h) = Hparams::from_gguf(&g, arch) {
            let mut angles = Vec::new();
            h.rope.cos_sin(h.n_ctx_train.min(1 << 20), &mut angles);
        }
    }
    if let Ok(tk) = Tokenizer::from_gguf(&g) {
        let _ = tk.encode("Hello <|im_start|> world 123", true, true);
        let _ = tk.decode(&[0, 1, 2, 3], true);
    }
    if let Some(src) = g.get_str("tokenizer.chat_template") {
        if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
            let _ = t.render(&[shard_shared::chat::ChatMessage::new("user", "hi")], true);
        }
    }
});
