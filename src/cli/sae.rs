//! SAE interop and the comparisons (`export-sae`, `sae-encode`, `compare-sae`, `match`):
//! argument definitions and run functions.

use super::args::{basis, OutDir, OutFile, ReportOut};
use super::InputArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use exemplar::data::npy::{self, NpyArray};
use exemplar::data::{ActivationStream, StreamOptions};
use exemplar::dictionary::{Basis, Dictionary};
use exemplar::eval::compare::{self, basis_name, CompareConfig, F1Stats};
use exemplar::eval::matching;
use exemplar::sae::{EncodeDevice, Sae};
use serde_json::{json, Map};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output directory (cfg.json + sae_weights.safetensors)")))]
pub struct ExportSaeArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Decoder rows: exemplar directions or mean member directions.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    /// k of the TopK activation (1: the code's argmax is the nearest exemplar).
    #[arg(long, short = 'k', default_value_t = 1)]
    pub k: usize,
    #[command(flatten)]
    pub output: OutDir,
}

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| a.help("Output .npy of shape (N, d_sae), f32")))]
pub struct SaeEncodeArgs {
    /// The SAE: a SAELens directory (cfg.json + sae_weights.safetensors) or a Gemma Scope params.npz.
    #[arg(long, value_name = "PATH")]
    pub sae: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Where the encoder runs: cpu, or cuda (through libtorch; needs the `torch` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub batch_size: usize,
    #[command(flatten)]
    pub output: OutFile,
}

#[derive(Args, Debug)]
#[command(mut_arg("json", |a| a.help("Print the JSON report instead of tables")))]
pub struct CompareSaeArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// The SAE: a SAELens directory or a Gemma Scope params.npz.
    #[arg(long, value_name = "PATH")]
    pub sae: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Compare on the first N rows (default: all).
    #[arg(long, value_name = "N")]
    pub n_activations: Option<u64>,
    /// Size bound of each feature's top set.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub top_k: usize,
    /// Features with fewer active samples (code > 0) are not eligible.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub min_activations: u64,
    /// EP basis (or both).
    #[arg(long, default_value = "both", value_parser = ["exemplar", "mean", "both"])]
    pub basis: String,
    /// Where the SAE encoder runs: cpu, or cuda (through libtorch; needs the `torch` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub batch_size: usize,
    #[command(flatten)]
    pub report: ReportOut,
}

#[derive(Args, Debug)]
#[command(mut_arg("out", |a| {
    a.help("Output directory: matches.csv, a_dropped.csv, b_introduced.csv, summary.json")
}))]
pub struct MatchArgs {
    /// Dictionary A (e.g. the base checkpoint's, or seed 0's).
    pub a: PathBuf,
    /// Dictionary B (e.g. the instruction-tuned checkpoint's, or seed 1's).
    pub b: PathBuf,
    /// Pairs with cosine ≥ this persist.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub cutoff: f64,
    /// Directions matched: exemplars, or mean member directions (the seed-stability view).
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub basis: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub output: OutDir,
}

/// The files of an SAE in the SAELens layout.
pub(super) const SAELENS_FILES: [&str; 2] = ["cfg.json", "sae_weights.safetensors"];

fn open_stream(input: &InputArgs) -> Result<ActivationStream> {
    Ok(ActivationStream::open(
        &input.activations,
        StreamOptions {
            tensor: input.tensor.clone(),
            skip_nonfinite: input.skip_nonfinite,
        },
    )?)
}

fn load_sae(path: &Path) -> Result<Sae> {
    Sae::load(path).with_context(|| format!("loading the SAE {}", path.display()))
}

pub fn export_sae(a: ExportSaeArgs) -> Result<()> {
    let out = &a.output;
    out.check(&SAELENS_FILES)?;
    let dict = Dictionary::load(&a.dictionary)?;
    let sae = Sae::from_dictionary(&dict, basis(&a.basis), a.k)?;
    sae.save_saelens(&out.out, out.force)
        .with_context(|| format!("writing {}", out.out.display()))?;
    let b_dec = if dict.scaling().is_some() {
        "standardised dictionary: W_enc = s ⊙ e, b_dec = μ + c ⊘ s, on raw activations"
    } else {
        "b_dec = center"
    };
    println!(
        "wrote {} (SAELens layout: topk k = {}, d_in = {}, d_sae = {}, {} basis, {b_dec})",
        out.out.display(),
        a.k,
        sae.d_in,
        sae.d_sae,
        a.basis
    );
    Ok(())
}

pub fn sae_encode(a: SaeEncodeArgs) -> Result<()> {
    a.output.check()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = EncodeDevice::parse(&a.device)?;
    device.check()?;
    let sae = load_sae(&a.sae)?;
    let mut stream = open_stream(&a.input)?;
    if stream.dim() != sae.d_in {
        return Err(exemplar::Error::DimensionMismatch {
            what: format!(
                "activations {} (the SAE {} has input width d_in = {})",
                a.input.activations[0].display(),
                a.sae.display(),
                sae.d_in
            ),
            expected: sae.d_in,
            found: stream.dim(),
        }
        .into());
    }
    let (n, f) = (stream.total_rows() as usize, sae.d_sae);
    let mut codes = vec![0.0f32; n * f];
    let mut active = 0u64;
    while let Some(b) = stream.next_batch(a.batch_size)? {
        let c = sae.encode_on(&b.data, device)?;
        active += c.iter().filter(|&&v| v > 0.0).count() as u64;
        for (j, &r) in b.stream_rows.iter().enumerate() {
            codes[r as usize * f..(r as usize + 1) * f].copy_from_slice(&c[j * f..(j + 1) * f]);
        }
    }
    let out = &a.output;
    npy::write_npy_file(&out.out, &NpyArray::matrix(codes, n, f)?, out.force)
        .with_context(|| format!("writing {}", out.out.display()))?;
    println!(
        "wrote {} ({n} × {f}, {} SAE on {}; mean L0 {:.2})",
        out.out.display(),
        sae.activation.architecture(),
        a.device,
        active as f64 / n.max(1) as f64
    );
    Ok(())
}

fn stats_line(name: &str, s: &F1Stats) -> String {
    let f = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "-".into()
        }
    };
    format!(
        "  {:<10} {:>6}  {:>7}  {:>7}  {:>8}  {:>8}",
        name,
        s.n,
        f(s.mean),
        f(s.median),
        f(s.frac_above_0_5),
        f(s.frac_above_0_3)
    )
}

pub fn compare_sae(a: CompareSaeArgs) -> Result<()> {
    a.report.check()?;
    let device = EncodeDevice::parse(&a.device)?;
    device.check()?;
    let dict = Dictionary::load(&a.dictionary)?;
    let sae = load_sae(&a.sae)?;
    let mut stream = open_stream(&a.input)?;
    let bases = match a.basis.as_str() {
        "both" => vec![Basis::Exemplar, Basis::Mean],
        b => vec![basis(b)],
    };
    let config = CompareConfig {
        top_k: a.top_k,
        min_activations: a.min_activations,
        bases,
    };
    let result = compare::compare(
        &sae,
        &dict,
        &mut stream,
        &config,
        a.n_activations,
        a.batch_size,
        device,
    )?;
    let mut extra = Map::new();
    extra.insert(
        "dictionary".into(),
        json!(a.dictionary.display().to_string()),
    );
    extra.insert("sae".into(), json!(a.sae.display().to_string()));
    extra.insert(
        "sae_architecture".into(),
        json!(sae.activation.architecture()),
    );
    let inputs: Vec<String> = a
        .input
        .activations
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    extra.insert("activations".into(), json!(inputs));
    extra.insert("model".into(), json!(dict.info().model));
    extra.insert("hook".into(), json!(dict.info().hook));
    extra.insert("percentile".into(), json!(dict.info().percentile));
    extra.insert("device".into(), json!(a.device));
    let report = result.to_json(extra);
    let text = serde_json::to_string_pretty(&report)? + "\n";
    if let Some(out) = &a.report.out {
        exemplar::output::write_atomic(out, text.as_bytes(), a.report.force)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.report.json {
        print!("{text}");
    } else {
        println!(
            "{} rows; SAE {} ({} features, {}), dictionary K = {}, θ = {:.4}; top-k {}, min activations {}",
            result.n_samples,
            a.sae.display(),
            sae.d_sae,
            sae.activation.architecture(),
            dict.len(),
            dict.theta(),
            a.top_k,
            a.min_activations
        );
        for r in &result.results {
            println!();
            println!(
                "basis {}: eligible EP regions {}, eligible SAE features {}",
                basis_name(r.basis),
                r.n_eligible_ep,
                r.n_eligible_sae
            );
            let h = r.headline();
            println!(
                "  headline: {} of EP regions match an SAE feature at F1 > 0.5",
                if h.is_finite() {
                    format!("{:.1}%", 100.0 * h)
                } else {
                    "-".into()
                }
            );
            println!(
                "  {:<10} {:>6}  {:>7}  {:>7}  {:>8}  {:>8}",
                "direction", "n", "mean F1", "median", "F1 > .5", "F1 > .3"
            );
            println!("{}", stats_line("SAE → EP", &r.sae_to_ep_stats()));
            println!("{}", stats_line("EP → SAE", &r.ep_to_sae_stats()));
            println!("{}", stats_line("Hungarian", &r.hungarian_stats()));
            let c = &r.coherence;
            println!(
                "  top-1 coherence over {} regions: distinct SAE argmaxes in the top 5 {:?} (1..5); all same {}, mean distinct {}",
                c.n_features,
                c.histogram,
                if c.frac_all_same.is_finite() { format!("{:.3}", c.frac_all_same) } else { "-".into() },
                if c.mean_distinct.is_finite() { format!("{:.2}", c.mean_distinct) } else { "-".into() },
            );
        }
    }
    if let Some(out) = &a.report.out {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

pub fn match_dictionaries(a: MatchArgs) -> Result<()> {
    a.output.check(&matching::OUTPUT_FILES)?;
    let da = Dictionary::load(&a.a)?;
    let db = Dictionary::load(&a.b)?;
    let m = matching::match_dictionaries(&da, &db, basis(&a.basis), a.cutoff)
        .with_context(|| format!("matching {} with {}", a.a.display(), a.b.display()))?;
    m.write(&da, &db, &a.output.out, a.output.force)
        .with_context(|| format!("writing {}", a.output.out.display()))?;
    let summary = m.summary();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "A {} (K = {}, θ = {:.4}) ↔ B {} (K = {}, θ = {:.4}), {} basis, cutoff {}",
            a.a.display(),
            m.k_a,
            m.theta_a,
            a.b.display(),
            m.k_b,
            m.theta_b,
            a.basis,
            a.cutoff
        );
        println!(
            "pairs {}  persisted {}  dropped (A) {}  introduced (B) {}",
            m.pairs.len(),
            m.persisted().count(),
            m.dropped.len(),
            m.introduced.len()
        );
        let c = &summary["cos"];
        println!(
            "matched cos: mean {:.3}  median {:.3}  p10 {:.3}  p90 {:.3}  min {:.3}  max {:.3}",
            c["mean"].as_f64().unwrap_or(f64::NAN),
            c["median"].as_f64().unwrap_or(f64::NAN),
            c["p10"].as_f64().unwrap_or(f64::NAN),
            c["p90"].as_f64().unwrap_or(f64::NAN),
            c["min"].as_f64().unwrap_or(f64::NAN),
            c["max"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "{:>6}  {:>6}  {:>7}  {:>8}  {:>8}  top prompt (A)",
            "i_a", "i_b", "cos", "members_a", "members_b"
        );
        for p in m.pairs.iter().take(10) {
            let prompt: String = matching::top_prompt(&da, p.i_a).chars().take(60).collect();
            println!(
                "{:>6}  {:>6}  {:>7.4}  {:>9}  {:>9}  {}",
                p.i_a,
                p.i_b,
                p.cos,
                da.member_count(p.i_a),
                db.member_count(p.i_b),
                prompt
            );
        }
    }
    println!("wrote {}", a.output.out.display());
    Ok(())
}
