//! Throughput of the truncated Gemma-2 forward (feature `torch`): Gemma-2-2B's shape with
//! random weights, 128 prompts × 128 tokens, stopping at `blocks.12.hook_resid_post` and at
//! `blocks.20.hook_resid_post`, against the bf16 GEMM rate the same device measures on a large
//! plain product. Prints tokens/s, model FLOP/s and their ratio to the GEMM rate.
//!
//! On a CUDA device (bf16): `cargo bench --features torch --bench gemma2_forward`.
//! Without one it runs a small f32 CPU smoke version (the numbers then mean little).
//! Sizes: EXEMPLAR_FWD_PROMPTS (128), EXEMPLAR_FWD_CTX (128), EXEMPLAR_FWD_LAYERS ("12,20").

use exemplar::model::{Gemma, GemmaConfig, HookPoint};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Best time of `reps` calls after one warm-up.
fn best_of(reps: usize, device: Device, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let cuda = tch::Cuda::is_available();
    let (device, kind) = if cuda {
        (Device::Cuda(0), Kind::BFloat16)
    } else {
        (Device::Cpu, Kind::Float)
    };
    let prompts: i64 = env_or("EXEMPLAR_FWD_PROMPTS", if cuda { "128" } else { "2" })
        .parse()
        .unwrap();
    let ctx: i64 = env_or("EXEMPLAR_FWD_CTX", if cuda { "128" } else { "32" })
        .parse()
        .unwrap();
    let layers: Vec<usize> = env_or("EXEMPLAR_FWD_LAYERS", "12,20")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    // google/gemma-2-2b's config.json.
    let config = GemmaConfig::from_json(&serde_json::json!({
        "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
        "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "pad_token_id": 0
    }))
    .unwrap();
    // Only the blocks up to the deepest measured hook are built (the forward never runs more).
    let mut config = config;
    let deepest = *layers.iter().max().unwrap();
    config.num_hidden_layers = deepest + 1;
    config.layer_types.truncate(deepest + 1);
    println!("device: {device:?} ({kind:?}), batch {prompts} × {ctx} tokens");
    // The device's GEMM rate on a large plain product.
    let n = if cuda { 8192 } else { 1024 };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let reps = if cuda { 20 } else { 3 };
    let t = best_of(reps, device, || {
        let _ = a.matmul(&b);
    });
    let gemm_rate = 2.0 * (n as f64).powi(3) / t;
    println!(
        "plain GEMM {n}×{n}×{n} ({kind:?}): {:.1} TFLOP/s",
        gemm_rate / 1e12
    );
    let model = Gemma::random(config, kind, device, 0);
    let ids = Tensor::randint_low(3, 256000, [prompts, ctx], (Kind::Int64, device));
    let mask = Tensor::ones([prompts, ctx], (Kind::Int64, device));
    for &l in &layers {
        let hook = HookPoint::parse(&format!("blocks.{l}.hook_resid_post")).unwrap();
        let t = best_of(reps.min(10), device, || {
            let out = model.forward(&ids, &mask, &[hook], &[], false).unwrap();
            let _ = out.hooks[&hook].sum(Kind::Float);
        });
        let tokens = (prompts * ctx) as u64;
        let flops = model.forward_flops(tokens, ctx as u64, l);
        println!(
            "forward to {hook}: {:.4} s, {:.0} tokens/s, {:.2} GFLOP/token, {:.1} TFLOP/s = {:.1}% of the plain GEMM rate",
            t,
            tokens as f64 / t,
            flops / tokens as f64 / 1e9,
            flops / t / 1e12,
            100.0 * flops / t / gemm_rate
        );
    }
}
