//! The Hugging Face `tokenizer.json` tokenizer, with BOS prepended.

use crate::error::{Error, Result};
use std::path::Path;

/// A tokenizer that encodes text as `[BOS] + ids`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: i64,
}

impl Tokenizer {
    /// Loads `tokenizer.json`; `bos` is the model's `bos_token_id`.
    pub fn from_file(path: &Path, bos: i64) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::format(path, format!("cannot load tokenizer: {e}")))?;
        Ok(Tokenizer { inner, bos })
    }

    /// `[BOS] + ids` of `text` (no other special tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::param("text", format!("cannot tokenize: {e}")))?;
        Ok(std::iter::once(self.bos)
            .chain(enc.get_ids().iter().map(|&i| i as i64))
            .collect())
    }

    /// The ids of `text` with no BOS and no other special token.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.encode(text)?[1..].to_vec())
    }

    /// The id of the unknown token `<unk>`, when the vocabulary has one.
    pub fn unknown_id(&self) -> Option<i64> {
        self.inner.token_to_id("<unk>").map(|i| i as i64)
    }

    /// The text of `ids` (special tokens such as the BOS left out), as the tokenizer decodes it.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::param("tokens", format!("cannot decode: {e}")))
    }

    /// The token string of each id (`<id N>` for ids the vocabulary lacks).
    pub fn token_strings(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&i| {
                self.inner
                    .id_to_token(i as u32)
                    .unwrap_or_else(|| format!("<id {i}>"))
            })
            .collect()
    }
}
