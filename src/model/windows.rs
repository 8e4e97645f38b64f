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

/// Documents packed into windows of BOS + `ctx` tokens, the way SAELens packs its contexts with
/// its defaults (`begin_batch_token="bos"`, `sequence_separator_token="bos"`, each document
/// tokenised with its BOS): the stream `[BOS] + doc₁ + [BOS] + doc₂ + …` is cut into windows
/// that each start with a BOS (a window that would start with a document's own BOS uses it); a
/// document longer than the rest of a window continues in the next one, and the last, partial
/// window is never emitted. A window of `ctx + 1` tokens is SAELens's `context_size`.
#[derive(Debug, Clone)]
pub struct Packer {
    ctx: usize,
    bos: i64,
    pending: std::collections::VecDeque<i64>,
    windows: u64,
}

impl Packer {
    /// Windows of BOS + `ctx` tokens (`ctx` ≥ 1).
    pub fn new(ctx: usize, bos: i64) -> Self {
        Packer {
            ctx: ctx.max(1),
            bos,
            pending: Default::default(),
            windows: 0,
        }
    }

    /// Appends a document, `[BOS] + ids` as [`Tokenizer::encode`] gives it.
    pub fn push_document(&mut self, ids: &[i64]) {
        self.pending.extend(ids.iter().copied());
    }

    /// The next full window, or `None` until enough tokens are pushed.
    pub fn next_window(&mut self) -> Option<Vec<i64>> {
        let own_bos = self.pending.front() == Some(&self.bos);
        let need = if own_bos { self.ctx + 1 } else { self.ctx };
        if self.pending.len() < need {
            return None;
        }
        let mut w = Vec::with_capacity(self.ctx + 1);
        if !own_bos {
            w.push(self.bos);
        }
        w.extend(self.pending.drain(..need));
        self.windows += 1;
        Some(w)
    }

    /// Tokens pushed and not yet in a window.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Windows emitted so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }
}

#[cfg(test)]
mod tests {
    use super::Packer;

    #[test]
    fn packing_joins_documents_with_their_bos_and_continues_long_ones() {
        let mut p = Packer::new(4, 2);
        p.push_document(&[2, 10, 11]);
        assert_eq!(p.next_window(), None, "3 tokens do not fill BOS + 4");
        p.push_document(&[2, 20, 21, 22, 23, 24, 25]);
        // [BOS 10 11 BOS 20] then the second document continues after a fresh BOS.
        assert_eq!(p.next_window().unwrap(), [2, 10, 11, 2, 20]);
        assert_eq!(p.next_window().unwrap(), [2, 21, 22, 23, 24]);
        assert_eq!(p.next_window(), None);
        assert_eq!(p.pending(), 1);
        // A document starting right at a window's start lends it its BOS.
        let mut p = Packer::new(2, 2);
        p.push_document(&[2, 5, 6]);
        p.push_document(&[2, 7, 8]);
        assert_eq!(p.next_window().unwrap(), [2, 5, 6]);
        assert_eq!(p.next_window().unwrap(), [2, 7, 8]);
        assert_eq!(p.windows(), 2);
        assert_eq!(p.pending(), 0);
    }
}
