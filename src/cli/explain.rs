//! `explain` (Wu et al.'s mutual-information explanations of every region, with the logit-lens
//! and top-members baselines and their quality statistics) and `explain-labels` (an external
//! labeller's labels back as region sets for `steer --region-set`) and `explain-steer`
//! (explanation-guided steering against random regions).

use super::args::check_output;
use super::on_model::{load_model, region_set, ModelTarget};
use anyhow::{bail, Result};
use clap::Args;
use exemplar::analysis::explain::{self as ex, ExplainOptions, RegionDirection};
use exemplar::analysis::{read_texts, target};
use exemplar::output::write_atomic;
use exemplar::Dictionary;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The dictionary.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// Hugging Face checkpoint directory of the model the dictionary was built on.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A frequency-ranked word list: one word per line, most frequent first (a frequency
    /// column after the word is ignored).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "vocab_from",
        required_unless_present = "vocab_from"
    )]
    pub words: Option<PathBuf>,
    /// Build the word list from a corpus instead (.txt one text per line, or .jsonl).
    #[arg(long, value_name = "FILE")]
    pub vocab_from: Option<PathBuf>,
    /// The JSON Lines field holding a text (with --vocab-from).
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// The most frequent words kept from the corpus or the list.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub vocab_size: usize,
    /// Words seen fewer times in the corpus are left out (with --vocab-from).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub min_count: u64,
    /// A region's direction: its exemplar or the mean of its member directions.
    #[arg(long, default_value = "exemplar", value_parser = ["exemplar", "mean"])]
    pub direction: String,
    /// Temperature α of p(w|c) (softmax over words).
    #[arg(long, default_value_t = 1.0, value_name = "A")]
    pub alpha: f64,
    /// Temperature β of p(c|w) (softmax over regions).
    #[arg(long, default_value_t = 1.0, value_name = "B")]
    pub beta: f64,
    /// Words per region (each method).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub top_words: usize,
    /// Closest member contexts per region (the top-members baseline and the labeller's file).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub snippets: usize,
    /// Tokens either side of a member in its context.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub window: usize,
    /// Also write the labeller's file: one line per region {region, members, words (MI),
    /// lens_words, snippets}.
    #[arg(long, value_name = "FILE")]
    pub labeller: Option<PathBuf>,
    /// Also write the report (settings, vocabulary, skipped words, statistics) as JSON.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Output JSON Lines: one line per region (MI words, lens and top-members baselines,
    /// snippets).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite outputs.
    #[arg(long)]
    pub force: bool,
}

pub fn explain(a: ExplainArgs) -> Result<()> {
    for o in std::iter::once(&a.out).chain(&a.labeller).chain(&a.report) {
        check_output(o, a.force)?;
    }
    if a.vocab_size == 0 {
        bail!("--vocab-size must be at least 1");
    }
    let dict = Dictionary::load(&a.dictionary)?;
    let config = exemplar::model::GemmaConfig::from_file(&a.model.join("config.json"))?;
    let check = target::check_model(&dict, &a.dictionary, &a.model, &config)?;
    let mut words = match (&a.words, &a.vocab_from) {
        (Some(w), _) => ex::read_word_list(w)?,
        (None, Some(c)) => {
            let texts = read_texts(c, &a.text_field)?;
            ex::corpus_words(&texts, a.vocab_size, a.min_count)
        }
        (None, None) => bail!("give --words or --vocab-from"),
    };
    words.truncate(a.vocab_size);
    let (model, tok) = load_model(&a.model)?;
    let vocab = ex::encode_words(&tok, words);
    let source = a
        .words
        .as_ref()
        .or(a.vocab_from.as_ref())
        .expect("one source")
        .display()
        .to_string();
    if !vocab.skipped.is_empty() {
        eprintln!(
            "{source}: {} words skipped (not in the vocabulary):",
            vocab.skipped.len()
        );
        for s in vocab.skipped.iter().take(10) {
            eprintln!("  line {}: {:?}: {}", s.line, s.word, s.reason);
        }
        if vocab.skipped.len() > 10 {
            eprintln!("  … (all in the report)");
        }
    }
    if vocab.words.is_empty() {
        bail!(
            "{source}: no word of it can be encoded by the tokenizer of {}",
            a.model.display()
        );
    }
    let direction = match a.direction.as_str() {
        "mean" => RegionDirection::Mean,
        _ => RegionDirection::Exemplar,
    };
    let opts = ExplainOptions {
        alpha: a.alpha,
        beta: a.beta,
        top: a.top_words,
        snippets: a.snippets,
        window: a.window,
    };
    let wv = ex::word_vectors(&model, &vocab)?;
    let dirs = ex::region_directions(&dict, direction);
    let am = ex::association(&model, &dirs, dict.dim(), &wv);
    let out = ex::explain(&dict, &vocab, &am, &opts)?;
    let [mi, lens, members] = ex::word_lists(&vocab, &out);
    let sup = vocab.superficial();
    let stats = [
        ("mi", ex::quality(&mi, &sup)),
        ("logit_lens", ex::quality(&lens, &sup)),
        ("top_members", ex::quality(&members, &sup)),
    ];
    let mut s = String::new();
    for e in &out {
        writeln!(s, "{}", serde_json::to_string(e)?)?;
    }
    write_atomic(&a.out, s.as_bytes(), a.force)?;
    if let Some(p) = &a.labeller {
        let mut s = String::new();
        for e in &out {
            let v = json!({
                "region": e.region,
                "members": e.members,
                "words": e.mi.iter().map(|w| &w.word).collect::<Vec<_>>(),
                "lens_words": e.lens.iter().map(|w| &w.word).collect::<Vec<_>>(),
                "snippets": e.snippets,
            });
            writeln!(s, "{v}")?;
        }
        write_atomic(p, s.as_bytes(), a.force)?;
    }
    let report = json!({
        "dictionary": a.dictionary.display().to_string(),
        "model": a.model.display().to_string(),
        "model_check": check,
        "regions": dict.len(),
        "direction": direction,
        "options": opts,
        "vocabulary": {
            "source": source,
            "words": vocab.words,
            "superficial": sup.iter().filter(|&&s| s).count(),
            "skipped": vocab.skipped,
        },
        "quality": stats.iter().map(|(n, q)| (n.to_string(), serde_json::to_value(q).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(p) = &a.report {
        write_atomic(
            p,
            serde_json::to_string_pretty(&report)?.as_bytes(),
            a.force,
        )?;
    }
    let f = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.4}"));
    println!(
        "{} regions × {} words ({} skipped, {} superficial), α {} β {}, top {}",
        dict.len(),
        vocab.words.len(),
        vocab.skipped.len(),
        sup.iter().filter(|&&s| s).count(),
        a.alpha,
        a.beta,
        a.top_words
    );
    println!(
        "{:<12} {:>10} {:>9} {:>10} {:>6}",
        "method", "diversity↑", "lexical↓", "dominate↓", "words"
    );
    for (n, q) in &stats {
        println!(
            "{:<12} {:>10} {:>9} {:>10} {:>6}",
            n,
            f(q.diversity),
            f(q.lexical),
            f(q.dominate),
            q.words_used
        );
    }
    for e in out.iter().filter(|e| e.members > 0).take(5) {
        let w: Vec<&str> = e.mi.iter().take(10).map(|w| w.word.as_str()).collect();
        println!("r{:<6} {}", e.region, w.join(" "));
    }
    println!("{} regions explained → {}", out.len(), a.out.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExplainLabelsArgs {
    /// The dictionary the labels are of.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub dictionary: PathBuf,
    /// The labeller's JSON Lines: {"region": R, "label": "…" | ["…", …] | null} per line.
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// Output JSON: {"dictionary", "sets": {label: [regions]}} (read by steer --region-set FILE:LABEL).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite the output.
    #[arg(long)]
    pub force: bool,
}

pub fn explain_labels(a: ExplainLabelsArgs) -> Result<()> {
    check_output(&a.out, a.force)?;
    let dict = Dictionary::load(&a.dictionary)?;
    let sets = ex::read_region_labels(&a.labels, &dict)?;
    let v = json!({
        "dictionary": a.dictionary.display().to_string(),
        "regions": dict.len(),
        "sets": sets,
    });
    write_atomic(
        &a.out,
        serde_json::to_string_pretty(&v)?.as_bytes(),
        a.force,
    )?;
    for (label, r) in &sets {
        println!("{label:<24} {} regions", r.len());
    }
    println!("{} region sets → {}", sets.len(), a.out.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExplainSteerArgs {
    #[command(flatten)]
    pub on: ModelTarget,
    /// The explanations of the dictionary (`explain -o`).
    #[arg(long, value_name = "FILE")]
    pub explanations: PathBuf,
    /// Prompts: .txt one per non-empty line, or .jsonl with --text-field.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// The JSON Lines field holding a prompt.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// Regions to steer, comma-separated.
    #[arg(
        long,
        short = 'r',
        value_delimiter = ',',
        value_name = "R",
        required_unless_present = "region_set"
    )]
    pub region: Vec<usize>,
    /// Also the regions of a labelled set: `FILE:LABEL`, FILE written by `explain-labels`.
    #[arg(long, value_name = "FILE:LABEL")]
    pub region_set: Option<String>,
    /// Words per region whose first tokens are measured.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub words: usize,
    /// Which words: the MI explanation's or the logit-lens baseline's.
    #[arg(long, default_value = "mi", value_parser = ["mi", "lens"])]
    pub words_from: String,
    /// The centered projection each region is raised to (each position's norm is then restored).
    #[arg(long, allow_negative_numbers = true, value_name = "V")]
    pub value: f64,
    /// Edit only positions EP assigns to the steered region within θ.
    #[arg(long, conflicts_with = "gate_region")]
    pub gated: bool,
    /// Edit only positions EP assigns to these (detector) regions within θ.
    #[arg(long, value_delimiter = ',', value_name = "R")]
    pub gate_region: Vec<usize>,
    /// Seed of the control regions (one random other region per region).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub control_seed: u64,
    /// Also write the summary (JSON) here.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Output JSON Lines: one line per region and prompt.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite outputs.
    #[arg(long)]
    pub force: bool,
}

pub fn explain_steer(mut a: ExplainSteerArgs) -> Result<()> {
    use exemplar::analysis::explain_steer as es;
    for o in std::iter::once(&a.out).chain(&a.summary) {
        check_output(o, a.force)?;
    }
    if a.words == 0 {
        bail!("--words must be at least 1");
    }
    if let Some(spec) = &a.region_set {
        for r in region_set(spec)? {
            if !a.region.contains(&r) {
                a.region.push(r);
            }
        }
    }
    let (dict, t) = a.on.resolve()?;
    target::check_regions(&dict, &a.region, "region")?;
    let prompts = read_texts(&a.prompts, &a.text_field)?;
    let text = std::fs::read_to_string(&a.explanations)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.explanations.display()))?;
    let mut words: std::collections::HashMap<usize, Vec<String>> = Default::default();
    for (i, l) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
            anyhow::anyhow!("{} line {}: not JSON: {e}", a.explanations.display(), i + 1)
        })?;
        let key = a.words_from.as_str();
        let (Some(r), Some(mi)) = (v["region"].as_u64(), v[key].as_array()) else {
            bail!(
                "{} line {}: no `region` and `{key}` (write it with `explain -o`)",
                a.explanations.display(),
                i + 1
            );
        };
        let w = mi
            .iter()
            .filter_map(|m| m["word"].as_str().map(str::to_string))
            .take(a.words)
            .collect();
        words.insert(r as usize, w);
    }
    let (model, tok) = load_model(&a.on.model)?;
    let mut targets = vec![];
    for &r in &a.region {
        let Some(w) = words.get(&r) else {
            bail!(
                "{} has no explanation of region {r}",
                a.explanations.display()
            );
        };
        targets.push(es::first_tokens(&tok, w)?);
    }
    let gate = if a.gated {
        Some(vec![])
    } else if !a.gate_region.is_empty() {
        Some(a.gate_region.clone())
    } else {
        None
    };
    let run = es::ShiftRun {
        dict: &dict,
        hook: t.hook,
        prompts: &prompts,
        regions: &a.region,
        targets: &targets,
        value: a.value,
        keep_norm: true,
        gate,
        control_seed: a.control_seed,
    };
    let mut file = exemplar::output::AtomicFile::create(&a.out, a.force)?;
    let pb = exemplar::progress::progress_bar((prompts.len() * a.region.len()) as u64, "steer");
    let records = es::run(&model, &tok, &run, |r| {
        let line = serde_json::to_string(r)
            .map_err(|e| exemplar::Error::param("record", e.to_string()))?;
        use std::io::Write;
        writeln!(file, "{line}").map_err(|e| exemplar::Error::io(&a.out, e))?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    file.commit()?;
    let sum = es::summarize(&records);
    if let Some(p) = &a.summary {
        write_atomic(p, serde_json::to_string_pretty(&sum)?.as_bytes(), a.force)?;
    }
    println!(
        "{} regions × {} prompts at {}, raised to {} (norm kept){}, {} words",
        a.region.len(),
        prompts.len(),
        t.hook,
        a.value,
        if a.gated || !a.gate_region.is_empty() {
            ", gated"
        } else {
            ""
        },
        a.words_from
    );
    println!(
        "{:<8} {:>8} {:>12} {:>14}",
        "region", "control", "shift (nats)", "control shift"
    );
    for r in &sum.regions {
        println!(
            "r{:<7} r{:<7} {:>12.4} {:>14.4}",
            r.region, r.control_region, r.shift, r.control_shift
        );
    }
    println!(
        "mean shift {:.4} vs control {:.4}; {} of {} regions above their control → {}",
        sum.mean_shift,
        sum.mean_control_shift,
        sum.regions_above_control,
        sum.regions.len(),
        a.out.display()
    );
    Ok(())
}
