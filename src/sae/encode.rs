//! Codes and reconstructions of an [`Sae`]: pre-activations, the nonlinearities (ReLU,
//! JumpReLU, TopK with ties to the lowest index), the decoder, on the CPU; the same encoder in
//! tch on any device (feature `torch`), and [`EncodeDevice`], where a caller asks it to run.

use super::{Sae, SaeActivation};
use crate::error::{Error, Result};
pub use crate::linalg::top_k_indices;
use crate::linalg::{matmul_abt, transpose};
use rayon::prelude::*;

impl Sae {
    /// Pre-activations `(x − b_dec·[apply]) W_enc + b_enc` of `rows` (`n × d_in`) → `n × d_sae`.
    pub fn pre_activations(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let d = self.d_in;
        if rows.len() % d != 0 {
            return Err(Error::DimensionMismatch {
                what: "activations given to the SAE".into(),
                expected: d,
                found: rows.len(),
            });
        }
        let n = rows.len() / d;
        let x: Vec<f32> = if self.apply_b_dec_to_input {
            rows.par_chunks(d)
                .flat_map_iter(|r| r.iter().zip(&self.b_dec).map(|(a, b)| a - b))
                .collect()
        } else {
            rows.to_vec()
        };
        let w_enc_t = transpose(&self.w_enc, d, self.d_sae);
        let mut pre = vec![0.0f32; n * self.d_sae];
        matmul_abt(&x, &w_enc_t, d, &mut pre);
        pre.par_chunks_mut(self.d_sae).for_each(|p| {
            for (v, b) in p.iter_mut().zip(&self.b_enc) {
                *v += b;
            }
        });
        Ok(pre)
    }

    /// Codes of `rows` (`n × d_in`) → `n × d_sae`.
    pub fn encode(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let mut pre = self.pre_activations(rows)?;
        let f = self.d_sae;
        pre.par_chunks_mut(f).for_each(|p| self.activate(p));
        Ok(pre)
    }

    /// Applies the nonlinearity to one row of pre-activations in place.
    pub fn activate(&self, p: &mut [f32]) {
        match &self.activation {
            SaeActivation::Relu => p.iter_mut().for_each(|v| *v = v.max(0.0)),
            SaeActivation::JumpRelu { threshold } => {
                for (v, t) in p.iter_mut().zip(threshold) {
                    *v = if *v > *t { v.max(0.0) } else { 0.0 };
                }
            }
            SaeActivation::TopK { k } => {
                let top = top_k_indices(p, *k);
                let vals: Vec<f32> = top.iter().map(|&i| p[i].max(0.0)).collect();
                p.iter_mut().for_each(|v| *v = 0.0);
                for (i, v) in top.into_iter().zip(vals) {
                    p[i] = v;
                }
            }
        }
    }

    /// Reconstructions `codes W_dec + b_dec` of `n × d_sae` codes → `n × d_in`.
    pub fn decode(&self, codes: &[f32]) -> Result<Vec<f32>> {
        let (d, f) = (self.d_in, self.d_sae);
        if codes.len() % f != 0 {
            return Err(Error::param(
                "codes",
                format!("length {} is not a multiple of d_sae = {f}", codes.len()),
            ));
        }
        let n = codes.len() / f;
        let w_dec_t = transpose(&self.w_dec, f, d);
        let mut out = vec![0.0f32; n * d];
        matmul_abt(codes, &w_dec_t, f, &mut out);
        out.par_chunks_mut(d).for_each(|r| {
            for (v, b) in r.iter_mut().zip(&self.b_dec) {
                *v += b;
            }
        });
        Ok(out)
    }

    /// Encodes on any tch device (the GPU path): `x` is `(n, d_in)` of any float dtype;
    /// returns `(n, d_sae)` f32 codes on `x`'s device. Same rule as [`Sae::encode`], computed in
    /// f32 (TopK ties follow torch's `topk`).
    #[cfg(feature = "torch")]
    pub fn encode_tch(&self, x: &tch::Tensor) -> Result<tch::Tensor> {
        use tch::{Kind, Tensor};
        let size = x.size();
        if size.len() != 2 || size[1] as usize != self.d_in {
            return Err(Error::param(
                "activations",
                format!("tensor of shape {size:?}, expected (n, {})", self.d_in),
            ));
        }
        let dev = x.device();
        let (d, f) = (self.d_in as i64, self.d_sae as i64);
        let w_enc = Tensor::from_slice(&self.w_enc).view([d, f]).to_device(dev);
        let b_enc = Tensor::from_slice(&self.b_enc).to_device(dev);
        let b_dec = Tensor::from_slice(&self.b_dec).to_device(dev);
        let mut x = x.to_kind(Kind::Float);
        if self.apply_b_dec_to_input {
            // Not `-=`: `to_kind` returns the caller's tensor itself when it is already f32,
            // and an in-place subtraction would change the caller's activations.
            #[allow(clippy::assign_op_pattern)]
            {
                x = x - &b_dec;
            }
        }
        let pre = x.matmul(&w_enc) + b_enc;
        Ok(match &self.activation {
            SaeActivation::Relu => pre.relu(),
            SaeActivation::JumpRelu { threshold } => {
                let t = Tensor::from_slice(threshold).to_device(dev);
                let mask = pre.gt_tensor(&t).to_kind(Kind::Float);
                pre.relu() * mask
            }
            SaeActivation::TopK { k } => {
                let (vals, idx) = pre.topk(*k as i64, -1, true, true);
                pre.zeros_like().scatter(-1, &idx, &vals.relu())
            }
        })
    }
}

#[cfg(not(feature = "torch"))]
const NO_TORCH: &str = "`cuda` SAE encoding runs through libtorch: build exemplar with the `torch` feature (cargo build --features torch)";

/// Where [`Sae::encode_on`] runs the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeDevice {
    /// [`Sae::encode`] on the CPU.
    Cpu,
    /// `Sae::encode_tch` on the first CUDA device (needs the `torch` feature).
    Cuda,
}

impl EncodeDevice {
    /// `cpu` or `cuda`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(EncodeDevice::Cpu),
            "cuda" => Ok(EncodeDevice::Cuda),
            other => Err(Error::param(
                "device",
                format!("`{other}` is not a device (cpu, cuda)"),
            )),
        }
    }

    /// Checks that the device can be used, before any work.
    pub fn check(self) -> Result<()> {
        match self {
            EncodeDevice::Cpu => Ok(()),
            #[cfg(feature = "torch")]
            EncodeDevice::Cuda => {
                if tch::Cuda::is_available() {
                    Ok(())
                } else {
                    Err(Error::param(
                        "device",
                        "`cuda`: libtorch sees no CUDA device on this machine",
                    ))
                }
            }
            #[cfg(not(feature = "torch"))]
            EncodeDevice::Cuda => Err(Error::param("device", NO_TORCH)),
        }
    }
}

impl Sae {
    /// Codes of `rows` (`n × d_in`) → `n × d_sae`, computed on `device`.
    pub fn encode_on(&self, rows: &[f32], device: EncodeDevice) -> Result<Vec<f32>> {
        match device {
            EncodeDevice::Cpu => self.encode(rows),
            EncodeDevice::Cuda => self.encode_cuda(rows),
        }
    }

    #[cfg(feature = "torch")]
    fn encode_cuda(&self, rows: &[f32]) -> Result<Vec<f32>> {
        EncodeDevice::Cuda.check()?;
        if rows.len() % self.d_in != 0 {
            return Err(Error::DimensionMismatch {
                what: "activations given to the SAE".into(),
                expected: self.d_in,
                found: rows.len(),
            });
        }
        let n = (rows.len() / self.d_in) as i64;
        let x = tch::Tensor::from_slice(rows)
            .view([n, self.d_in as i64])
            .to_device(tch::Device::Cuda(0));
        let codes = self
            .encode_tch(&x)?
            .to_device(tch::Device::Cpu)
            .flatten(0, -1);
        Vec::<f32>::try_from(&codes)
            .map_err(|e| Error::param("device", format!("reading codes back: {e}")))
    }

    #[cfg(not(feature = "torch"))]
    fn encode_cuda(&self, _rows: &[f32]) -> Result<Vec<f32>> {
        Err(Error::param("device", NO_TORCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::tests::tiny;

    #[test]
    fn hand_computed_encoders() {
        let mut s = tiny();
        // x − b_dec = (1.5, 0.5): pre = (1.5, 0.5 − 0.5, 1.0) = (1.5, 0, 1).
        let x = [2.0, 1.0];
        assert_eq!(s.pre_activations(&x).unwrap(), vec![1.5, 0.0, 1.0]);
        assert_eq!(s.encode(&x).unwrap(), vec![1.5, 0.0, 1.0]);
        s.activation = SaeActivation::TopK { k: 1 };
        assert_eq!(s.encode(&x).unwrap(), vec![1.5, 0.0, 0.0]);
        s.activation = SaeActivation::JumpRelu {
            threshold: vec![2.0, -1.0, 0.5],
        };
        // 1.5 ≤ 2 → 0; 0 > −1 but relu(0) = 0; 1 > 0.5 → 1.
        assert_eq!(s.encode(&x).unwrap(), vec![0.0, 0.0, 1.0]);
        // decode: 1·(0.6, −0.8) + (0.5, 0.5).
        let r = s.decode(&[0.0, 0.0, 1.0]).unwrap();
        assert!((r[0] - 1.1).abs() < 1e-6 && (r[1] + 0.3).abs() < 1e-6);
    }

    /// `encode_tch` on libtorch's CPU gives `encode`'s codes for every activation.
    #[cfg(feature = "torch")]
    #[test]
    fn encode_tch_on_cpu_equals_encode() {
        let (d, f, n) = (6usize, 9usize, 40usize);
        let mut state = 7u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let x: Vec<f32> = (0..n * d).map(|_| rnd()).collect();
        let base = Sae {
            d_in: d,
            d_sae: f,
            w_enc: (0..d * f).map(|_| rnd()).collect(),
            w_dec: (0..f * d).map(|_| rnd()).collect(),
            b_enc: (0..f).map(|_| 0.2 * rnd()).collect(),
            b_dec: (0..d).map(|_| 0.5 * rnd()).collect(),
            apply_b_dec_to_input: true,
            activation: SaeActivation::Relu,
            metadata: serde_json::Map::new(),
        };
        let xt = tch::Tensor::from_slice(&x).view([n as i64, d as i64]);
        for act in [
            SaeActivation::Relu,
            SaeActivation::JumpRelu {
                threshold: (0..f).map(|i| 0.1 * i as f32).collect(),
            },
            SaeActivation::TopK { k: 3 },
        ] {
            for apply in [true, false] {
                let mut s = base.clone();
                s.activation = act.clone();
                s.apply_b_dec_to_input = apply;
                let cpu = s.encode(&x).unwrap();
                let t = s.encode_tch(&xt).unwrap().flatten(0, -1);
                let t = Vec::<f32>::try_from(&t).unwrap();
                assert_eq!(t.len(), cpu.len());
                let nonzero = cpu.iter().filter(|&&v| v > 0.0).count();
                assert!(
                    nonzero > 0 && nonzero < cpu.len(),
                    "{act:?}: codes are mixed"
                );
                for (i, (a, b)) in cpu.iter().zip(&t).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{act:?} apply={apply} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
        let after = Vec::<f32>::try_from(&xt.flatten(0, -1)).unwrap();
        assert_eq!(after, x, "encode_tch leaves its input tensor alone");
        assert!(s_err_without_width(
            &base,
            &tch::Tensor::zeros([2, 5], (tch::Kind::Float, tch::Device::Cpu))
        ));
    }

    #[cfg(feature = "torch")]
    fn s_err_without_width(s: &Sae, x: &tch::Tensor) -> bool {
        s.encode_tch(x).is_err()
    }
}
