//! Text generation with a key/value cache: greedy or seeded sampling, with interventions at
//! every step, and the log-probability of every generated token.

use super::gemma::{Gemma, Logits};
use super::hooks::Intervention;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most probable token (ties to the lowest id).
    Greedy,
    /// A draw from `softmax(logits / temperature)`, restricted to the `top_k` most probable
    /// tokens when set, with a counter-based generator seeded by `seed` (the same seed gives the
    /// same tokens on every machine).
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    },
}

/// What [`Gemma::generate`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's ids followed by the generated ones.
    pub ids: Vec<i64>,
    /// Per generated token, its log-probability under the (edited) model's next-token
    /// distribution (before temperature and top-k).
    pub logprobs: Vec<f64>,
    /// Generation stopped at the end-of-sequence token.
    pub stopped_at_eos: bool,
}

/// A uniform draw in [0, 1) from `(seed, counter)` (SplitMix64 finaliser, 53 bits).
fn uniform(seed: u64, counter: u64) -> f64 {
    crate::rng::uniform_below(seed, counter, 1 << 53) as f64 / (1u64 << 53) as f64
}

impl Gemma {
    /// Generates up to `new_tokens` tokens after `prompt` (ids, BOS included) with
    /// `interventions` applied at every step (positions are absolute: the prompt's first token
    /// is 0), using a key/value cache; stops early at the end-of-sequence token when
    /// `stop_at_eos`.
    pub fn generate(
        &self,
        prompt: &[i64],
        new_tokens: usize,
        sampling: Sampling,
        stop_at_eos: bool,
        interventions: &[Intervention],
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::param("prompt", "the prompt has no token"));
        }
        if let Sampling::Sample {
            temperature, top_k, ..
        } = sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::param(
                    "temperature",
                    format!("{temperature} is not a positive number"),
                ));
            }
            if top_k == Some(0) {
                return Err(Error::param("top-k", "must be at least 1"));
            }
        }
        let _guard = tch::no_grad_guard();
        let mut cache = self.new_cache();
        let mut ids = prompt.to_vec();
        let mut logprobs = Vec::with_capacity(new_tokens);
        let mut input = prompt.to_vec();
        let mut stopped = false;
        for step in 0..new_tokens {
            let t = input.len() as i64;
            let x = Tensor::from_slice(&input).view([1, t]);
            let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
            let out =
                self.forward_cached(&x, &mask, &mut cache, &[], interventions, Logits::Last)?;
            let logits = out
                .logits
                .expect("logits were asked for")
                .get(0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu);
            let logp = logits.log_softmax(-1, Kind::Double);
            let next = match sampling {
                Sampling::Greedy => logits.argmax(0, false).int64_value(&[]),
                Sampling::Sample {
                    temperature,
                    top_k,
                    seed,
                } => {
                    let scaled = &logits / temperature;
                    let scaled = match top_k {
                        Some(k) if (k as i64) < scaled.size()[0] => {
                            let kth = scaled.topk(k as i64, 0, true, true).0.get(k as i64 - 1);
                            scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY)
                        }
                        _ => scaled,
                    };
                    let probs: Vec<f64> = Vec::<f64>::try_from(scaled.softmax(0, Kind::Double))
                        .map_err(|e| Error::param("sampling", e.to_string()))?;
                    let u = uniform(seed, step as u64);
                    let mut acc = 0.0;
                    // Rounding can leave the running sum below u: the last possible token.
                    let mut pick = probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
                    for (i, p) in probs.iter().enumerate() {
                        acc += p;
                        if u < acc {
                            pick = i;
                            break;
                        }
                    }
                    pick as i64
                }
            };
            logprobs.push(logp.double_value(&[next]));
            ids.push(next);
            input = vec![next];
            if stop_at_eos && next == self.config.eos_token_id {
                stopped = true;
                break;
            }
        }
        Ok(Generation {
            ids,
            logprobs,
            stopped_at_eos: stopped,
        })
    }
}
