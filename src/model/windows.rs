//! Text → token sequences for the forward: one document per sequence (`[BOS] + ids`, truncated to
//! BOS + `ctx` tokens), or documents packed into windows of BOS + `ctx` tokens ([`Packer`]).

use super::Tokenizer;
use crate::error::Result;

/// `[BOS] + ids` of `text` truncated to BOS + `ctx` tokens, or `None` when fewer than
/// `max(min_tokens, 1)` tokens follow the BOS.
pub fn prepare_document(
    tokenizer: &Tokenizer,
    text: &str,
    ctx: usize,
    min_tokens: usize,
) -> Result<Option<Vec<i64>>> {
    let mut ids = tokenizer.encode(text)?;
    ids.truncate(ctx + 1);
    Ok((ids.len() > min_tokens.max(1)).then_some(ids))
}
