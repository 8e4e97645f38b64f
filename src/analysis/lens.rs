//! The logit lens of a direction: the model's final norm then its unembedding applied to a
//! unit direction of the centered space, with no center added back (the reference's
//! `exp_resolution_paths`): which tokens a region's exemplar (or mean direction) writes.

use crate::error::Result;
use crate::model::{Gemma, Tokenizer};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// One token of a lens.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LensToken {
    pub id: i64,
    pub token: String,
    /// The logit, and its log-softmax over the vocabulary.
    pub logit: f64,
    pub logprob: f64,
}

/// Directions per chunk of the unembedding product (`chunk × V` logits at a time).
const CHUNK: usize = 32;

/// The `top` highest-logit tokens of each direction (rows of `directions`, `n × d`), highest
/// first (ties to the lower id).
pub fn top_tokens(
    model: &Gemma,
    tok: &Tokenizer,
    directions: &[f32],
    d: usize,
    top: usize,
) -> Result<Vec<Vec<LensToken>>> {
    let _guard = tch::no_grad_guard();
    let n = directions.len() / d;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(CHUNK) {
        let m = CHUNK.min(n - start);
        let x = Tensor::from_slice(&directions[start * d..(start + m) * d])
            .view([m as i64, d as i64])
            .to_kind(model.kind())
            .to_device(model.device());
        let logits = model
            .logits_of(&x)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        let logp = logits.log_softmax(-1, Kind::Double);
        let k = top.min(logits.size()[1] as usize) as i64;
        // Stable descending sort, so equal logits keep the lower id first.
        let (vals, idx) = logits.sort_stable(true, -1, true);
        let (vals, idx) = (vals.narrow(1, 0, k), idx.narrow(1, 0, k));
        for i in 0..m as i64 {
            let ids = Vec::<i64>::try_from(idx.get(i)).expect("i64 ids");
            let v = Vec::<f64>::try_from(vals.get(i)).expect("f64 logits");
            let strings = tok.token_strings(&ids);
            let row_lp = logp.get(i);
            out.push(
                ids.iter()
                    .zip(v)
                    .zip(strings)
                    .map(|((&id, logit), token)| LensToken {
                        id,
                        token,
                        logit,
                        logprob: row_lp.double_value(&[id]),
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}
