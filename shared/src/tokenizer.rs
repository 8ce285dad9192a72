//! The tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! The BPE merges themselves run in the `tokenizers` crate. What this module adds is the
//! mapping from llama.cpp's metadata to that crate's pieces, chosen so that both give the same
//! token ids for the same text: the pre-tokenizer regex named by `tokenizer.ggml.pre`, control
//! and user-defined tokens as added tokens, and the BOS rule. It also keeps every token's raw
//! bytes, which streaming and logprobs need (a token can end inside a UTF-8 character).

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{Array, Gguf};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_id(id: i64) -> Self {
        match id {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata lacks {0}")]
    Missing(&'static str),
    #[error("tokenizer model {0:?} is not supported (only gpt2-style BPE is)")]
    UnsupportedModel(String),
    #[error("bad tokenizer metadata: {0}")]
    Bad(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

fn tk_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// The GPT-2 pre-tokenizer regex, as llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's adapted Llama 3 regex (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's Qwen 2 regex (`LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How text is split before BPE, by llama.cpp's `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    Gpt2,
    DigitsThenGpt2,
    Llama3,
    Qwen2,
}

impl PreTokenizer {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt-2" | "gpt2" | "default" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                PreTokenizer::DigitsThenGpt2
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "qwen35" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    fn build(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            let s = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false).map_err(tk_err)?;
            Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![s.into(), ByteLevel::new(false, false, false).into()])))
        };
        match self {
            PreTokenizer::Gpt2 => split(GPT2_REGEX),
            PreTokenizer::DigitsThenGpt2 => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                Digits::new(true).into(),
                Split::new(SplitPattern::Regex(GPT2_REGEX.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(tk_err)?
                    .into(),
                ByteLevel::new(false, false, false).into(),
            ]))),
            PreTokenizer::Llama3 => split(LLAMA3_REGEX),
            PreTokenizer::Qwen2 => split(QWEN2_REGEX),
        }
    }
}

/// A GGUF model's tokenizer.
pub struct Tokenizer {
    /// Splits control tokens out of text (llama.cpp's `parse_special = true`).
    with_special: tokenizers::Tokenizer,
    /// Treats control tokens as plain text.
    plain: tokenizers::Tokenizer,
    pieces: Vec<Vec<u8>>,
    types: Vec<TokenType>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
    /// Notes for the operator, e.g. an unknown pre-tokenizer that fell back to GPT-2's.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, TokenizerError> {
        let model = g.get_str("tokenizer.ggml.model").ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let tokens = match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(Array::String(t)) => t,
            _ => return Err(TokenizerError::Missing("tokenizer.ggml.tokens (array of strings)")),
        };
        let merges = match g.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
            Some(Array::String(m)) => m.as_slice(),
            Some(_) => return Err(TokenizerError::Bad("tokenizer.ggml.merges is not an array of strings".into())),
            None => &[],
        };
        let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => {
                let ids = a.to_i64s().ok_or_else(|| TokenizerError::Bad("token_type is not an integer array".into()))?;
                if ids.len() != tokens.len() {
                    return Err(TokenizerError::Bad(format!("{} token types for {} tokens", ids.len(), tokens.len())));
                }
                ids.into_iter().map(TokenType::from_id).collect()
            }
            None => vec![TokenType::Normal; tokens.len()],
        };
        let n_vocab = tokens.len() as u64;
        let token_id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match g.get_u64(key) {
                Some(id) if id < n_vocab => Ok(Some(id as u32)),
                Some(id) => Err(TokenizerError::Bad(format!("{key} = {id} is outside the vocabulary of {n_vocab}"))),
                None => Ok(None),
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let eot = token_id("tokenizer.ggml.eot_token_id")?;
        let eom = token_id("tokenizer.ggml.eom_token_id")?;
        let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let mut warnings = vec![];
        let pre = PreTokenizer::from_name(pre_name).unwrap_or_else(|| {
            warnings.push(format!("unknown pre-tokenizer {pre_name:?}; using GPT-2's regex"));
            PreTokenizer::Gpt2
        });
        // llama.cpp adds BOS for Llama 3 style vocabularies unless the file says otherwise.
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(pre == PreTokenizer::Llama3);

        let mut vocab = ahash::AHashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (line, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first character.
            let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
            let Some(i) = split else {
                return Err(TokenizerError::Bad(format!("merge {line} ({m:?}) has no space")));
            };
            let (a, b) = (&m[..i], &m[i + 1..]);
            if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}")) {
                merge_pairs.push((a.to_string(), b.to_string()));
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .ignore_merges(pre == PreTokenizer::Llama3)
            .build()
            .map_err(tk_err)?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(pre.build()?));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TokenType::Control)
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TokenType::UserDefined)
            .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        tk.add_special_tokens(&special);
        tk.add_tokens(&user);
        let with_special = tk.clone();
        let mut plain = tk;
        plain.set_encode_special_tokens(true);

        let byte_of = byte_level_decode_table();
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| match ty {
                TokenType::Normal | TokenType::Byte | TokenType::Unused => {
                    let mut out = Vec::with_capacity(t.len());
                    for c in t.chars() {
                        match byte_of.get(&c) {
                            Some(&b) => out.push(b),
                            None => out.extend(c.to_string().as_bytes()),
                        }
                    }
                    out
                }
                _ => t.as_bytes().to_vec(),
            })
            .collect();

        // End-of-generation tokens: EOS, EOT, EOM and the usual end-of-turn control tokens.
        let mut end_of_generation: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            let known = matches!(
                t.as_str(),
                "<|eot_id|>" | "<|im_end|>" | "<|end|>" | "<end_of_turn>" | "<|endoftext|>" | "<EOT>" | "<|end_of_text|>"
            );
            if known && *ty == TokenType::Control && !end_of_generation.contains(&(i as u32)) {
                end_of_generation.push(i as u32);
            }
        }

        Ok(Tokenizer { with_special, plain, pieces, types, bos, eos, add_bos, end_of_generation, warnings })
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether generating this token ends the answer.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Tokenizes text. `parse_special` decides whether control-token text such as
    /// `<|im_start|>` becomes the control token (as llama.cpp's `parse_special`).
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tk = if parse_special { &self.with_special } else { &self.plain };
        let enc = tk.encode_fast(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Tokenizes a prompt the way llama.cpp's completion endpoints do: special tokens parsed,
    /// BOS prepended when the vocabulary asks for it and the text does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode(text, false, true)?;
        if self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// The raw bytes a token stands for; control tokens give their text.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// The bytes a token adds to generated text: nothing for control tokens unless `special`.
    pub fn output_bytes(&self, id: u32, special: bool) -> &[u8] {
        match self.types.get(id as usize) {
            Some(TokenType::Control) | Some(TokenType::Unknown) if !special => &[],
            Some(_) => &self.pieces[id as usize],
            None => &[],
        }
    }

    /// Decodes ids to text (invalid UTF-8 is replaced), skipping control tokens unless `special`.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.output_bytes(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a token given its exact vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.with_special.token_to_id(text)
    }
}

/// Inverts GPT-2's byte-to-unicode table: each of the 256 bytes has a printable stand-in.
fn byte_level_decode_table() -> HashMap<char, u8> {
    let mut table = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table.insert(char::from_u32(c).expect("valid code point"), b as u8);
    }
    table
}

/// Turns a stream of token bytes into text, holding back a UTF-8 character that is split
/// between tokens until it is complete.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) => match e.error_len() {
                // An invalid sequence can never become valid: emit it replaced.
                Some(_) => self.pending.len(),
                None => e.valid_up_to(),
            },
        };
        let rest = self.pending.split_off(valid);
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        out
    }

    /// Whatever is still held back, replaced if incomplete.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_covers_all_bytes() {
        let t = byte_level_decode_table();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn utf8_stream_holds_split_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(b"ab"), "ab");
        assert_eq!(s.push(&[0xff, b'x']), "\u{fffd}x");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
