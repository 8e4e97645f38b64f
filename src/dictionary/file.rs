//! The dictionary file: one safetensors file, specified in `docs/format.md`.

use super::{BuildInfo, Dictionary, Example};
use crate::data::TokenRef;
use crate::error::{Error, Result};
use crate::tensorfile::{self, Dtype, TensorFile, TensorOut};
use std::io::Write;
use std::path::Path;

/// `__metadata__["format"]` of a dictionary file.
pub const FORMAT: &str = "exemplar-dictionary";
/// Version of the layout written by this crate; readers accept versions up to it.
pub const FORMAT_VERSION: u32 = 1;

/// The JSON object stored in `__metadata__["exemplar"]`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    theta: f64,
    dim: usize,
    partitions: usize,
    /// `"standardize"` when the file holds `scale_mean` and `scale_inv_std`: every reader
    /// standardises rows first (docs/format.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaling: Option<String>,
    #[serde(flatten)]
    info: BuildInfo,
}

fn flatten_examples(rows: &[Vec<Example>], n: usize) -> (Vec<f32>, Vec<i64>, Vec<i64>, Vec<i64>) {
    let k = rows.len();
    let mut dist = vec![f32::NAN; k * n];
    let mut row = vec![-1i64; k * n];
    let mut doc = vec![-1i64; k * n];
    let mut pos = vec![-1i64; k * n];
    for (p, exs) in rows.iter().enumerate() {
        for (j, e) in exs.iter().enumerate() {
            dist[p * n + j] = e.distance;
            row[p * n + j] = e.stream_row;
            if let Some(t) = e.token {
                doc[p * n + j] = t.doc_id;
                pos[p * n + j] = t.position;
            }
        }
    }
    (dist, row, doc, pos)
}

fn token_of(doc: i64, pos: i64) -> Option<TokenRef> {
    (doc >= 0).then_some(TokenRef {
        doc_id: doc,
        position: pos,
    })
}

impl Dictionary {
    /// Saves the dictionary atomically; an existing file is replaced only with `force`.
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        self.save_with(path, force, &[], Vec::new())
    }

    /// [`Dictionary::save`] with extra `__metadata__` entries and tensors (checkpoints use it).
    pub(crate) fn save_with(
        &self,
        path: &Path,
        force: bool,
        extra_meta: &[(&str, String)],
        extra_tensors: Vec<TensorOut<'_>>,
    ) -> Result<()> {
        let (k, d) = (self.len(), self.dim);
        let n = self.examples_per_partition;
        let r = self.reservoir_size;
        let header = Header {
            theta: self.theta,
            dim: d,
            partitions: k,
            scaling: self.scaling.as_ref().map(|_| "standardize".to_string()),
            info: self.info.clone(),
        };
        let mut meta = tensorfile::header_metadata(FORMAT, FORMAT_VERSION, &header);
        for (k, v) in extra_meta {
            meta.insert((*k).to_string(), v.clone());
        }
        let means = self.mean_directions();
        let coherence: Vec<f32> = (0..k).map(|p| self.coherence(p) as f32).collect();
        let counts: Vec<i64> = self.counts.iter().map(|&c| c as i64).collect();
        let ex_doc: Vec<i64> = self
            .exemplar_tokens
            .iter()
            .map(|t| t.map_or(-1, |t| t.doc_id))
            .collect();
        let ex_pos: Vec<i64> = self
            .exemplar_tokens
            .iter()
            .map(|t| t.map_or(-1, |t| t.position))
            .collect();
        let (c_dist, c_row, c_doc, c_pos) = flatten_examples(&self.closest, n);
        let (f_dist, f_row, f_doc, f_pos) = flatten_examples(&self.farthest, n);
        let mut res_rows = vec![-1i64; k * r];
        for (p, rows) in self.reservoir_rows.iter().enumerate() {
            res_rows[p * r..p * r + rows.len()].copy_from_slice(rows);
        }
        let doc_ids: Vec<i64> = self.documents.keys().copied().collect();
        let mut doc_offsets = vec![0i64];
        let mut doc_bytes = Vec::new();
        for toks in self.documents.values() {
            serde_json::to_writer(&mut doc_bytes, toks).expect("strings serialise");
            doc_offsets.push(doc_bytes.len() as i64);
        }
        let reservoir = &self.reservoir;
        let mut tensors = vec![
            TensorOut::f32("center", vec![d], &self.center),
            TensorOut::f32("exemplars", vec![k, d], &self.exemplars),
            TensorOut::f32("mean_directions", vec![k, d], &means),
            TensorOut::f64("direction_sums", vec![k, d], &self.direction_sums),
            TensorOut::i64("member_counts", vec![k], &counts),
            TensorOut::f32("coherence", vec![k], &coherence),
            TensorOut::f64("sum_distances", vec![k], &self.sum_distances),
            TensorOut::f64("sum_sq_distances", vec![k], &self.sum_sq_distances),
            TensorOut::i64("exemplar_rows", vec![k], &self.exemplar_rows),
            TensorOut::i64("exemplar_doc_ids", vec![k], &ex_doc),
            TensorOut::i64("exemplar_positions", vec![k], &ex_pos),
            TensorOut::i64("last_member_rows", vec![k], &self.last_member_rows),
            TensorOut::f32("closest_distances", vec![k, n], &c_dist),
            TensorOut::i64("closest_rows", vec![k, n], &c_row),
            TensorOut::i64("closest_doc_ids", vec![k, n], &c_doc),
            TensorOut::i64("closest_positions", vec![k, n], &c_pos),
            TensorOut::f32("farthest_distances", vec![k, n], &f_dist),
            TensorOut::i64("farthest_rows", vec![k, n], &f_row),
            TensorOut::i64("farthest_doc_ids", vec![k, n], &f_doc),
            TensorOut::i64("farthest_positions", vec![k, n], &f_pos),
            TensorOut::streamed(
                "reservoir",
                Dtype::F32,
                vec![k, r, d],
                move |w: &mut dyn Write| {
                    let pad = vec![0.0f32; r * d];
                    for v in reservoir {
                        tensorfile::write_le(w, v, |x| x.to_le_bytes())?;
                        tensorfile::write_le(w, &pad[v.len()..], |x| x.to_le_bytes())?;
                    }
                    Ok(())
                },
            ),
            TensorOut::i64("reservoir_rows", vec![k, r], &res_rows),
            TensorOut::i64("document_ids", vec![doc_ids.len()], &doc_ids),
            TensorOut::i64("document_offsets", vec![doc_offsets.len()], &doc_offsets),
            TensorOut::u8("document_tokens", &doc_bytes),
        ];
        if let Some(sc) = &self.scaling {
            tensors.push(TensorOut::f32("scale_mean", vec![d], &sc.mean));
            tensors.push(TensorOut::f32("scale_inv_std", vec![d], &sc.inv_std));
        }
        tensors.extend(extra_tensors);
        tensorfile::write(path, tensors, &meta, force)
    }

    /// Loads a dictionary file, checking its format, version and every tensor's shape.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_from(&TensorFile::open(path)?)
    }

    /// [`Dictionary::load`] from an opened file (whose other entries the caller may read).
    pub(crate) fn load_from(f: &TensorFile) -> Result<Self> {
        let path = f.path();
        let header: Header = f.header(FORMAT, FORMAT_VERSION, "dictionary")?;
        let (k, d) = (header.partitions, header.dim);
        let n = header.info.examples_per_partition as usize;
        let r = header.info.reservoir_size as usize;
        let center = f.f32("center", &[d])?;
        let mut dict = Dictionary::new(center, header.theta)
            .map_err(|e| Error::format(path, e.to_string()))?;
        dict.examples_per_partition = n;
        dict.reservoir_size = r;
        dict.exemplars = f.f32("exemplars", &[k, d])?;
        dict.direction_sums = f.f64("direction_sums", &[k, d])?;
        dict.counts = f
            .i64("member_counts", &[k])?
            .into_iter()
            .map(|c| c.max(0) as u64)
            .collect();
        dict.sum_distances = f.f64("sum_distances", &[k])?;
        dict.sum_sq_distances = f.f64("sum_sq_distances", &[k])?;
        dict.exemplar_rows = f.i64("exemplar_rows", &[k])?;
        let ex_doc = f.i64("exemplar_doc_ids", &[k])?;
        let ex_pos = f.i64("exemplar_positions", &[k])?;
        dict.exemplar_tokens = ex_doc
            .iter()
            .zip(&ex_pos)
            .map(|(&a, &b)| token_of(a, b))
            .collect();
        dict.last_member_rows = f.i64("last_member_rows", &[k])?;
        let read_examples = |prefix: &str| -> Result<Vec<Vec<Example>>> {
            let dist = f.f32(&format!("{prefix}_distances"), &[k, n])?;
            let row = f.i64(&format!("{prefix}_rows"), &[k, n])?;
            let doc = f.i64(&format!("{prefix}_doc_ids"), &[k, n])?;
            let pos = f.i64(&format!("{prefix}_positions"), &[k, n])?;
            Ok((0..k)
                .map(|p| {
                    (0..n)
                        .map(|j| p * n + j)
                        .take_while(|&i| row[i] >= 0)
                        .map(|i| Example {
                            distance: dist[i],
                            stream_row: row[i],
                            token: token_of(doc[i], pos[i]),
                        })
                        .collect()
                })
                .collect())
        };
        dict.closest = read_examples("closest")?;
        dict.farthest = read_examples("farthest")?;
        let res = f.f32("reservoir", &[k, r, d])?;
        let res_rows = f.i64("reservoir_rows", &[k, r])?;
        dict.reservoir_rows = Vec::with_capacity(k);
        dict.reservoir = Vec::with_capacity(k);
        for p in 0..k {
            let rows: Vec<i64> = res_rows[p * r..(p + 1) * r]
                .iter()
                .copied()
                .take_while(|&x| x >= 0)
                .collect();
            let m = rows.len();
            dict.reservoir
                .push(res[p * r * d..(p * r + m) * d].to_vec());
            dict.reservoir_rows.push(rows);
        }
        let m = f.shape("document_ids")?.first().copied().unwrap_or(0);
        let doc_ids = f.i64("document_ids", &[m])?;
        let offsets = f.i64("document_offsets", &[m + 1])?;
        let bytes = f.u8("document_tokens")?;
        for (i, &id) in doc_ids.iter().enumerate() {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            if a > b || b > bytes.len() {
                return Err(Error::format(
                    path,
                    format!("document {id}: offsets out of range"),
                ));
            }
            let toks: Vec<String> = serde_json::from_slice(&bytes[a..b]).map_err(|e| {
                Error::format(path, format!("document {id}: invalid token list: {e}"))
            })?;
            dict.documents.insert(id, toks);
        }
        dict.scaling = match header.scaling.as_deref() {
            None => None,
            Some("standardize") => {
                let sc = crate::geometry::Scaling {
                    mean: f.f32("scale_mean", &[d])?,
                    inv_std: f.f32("scale_inv_std", &[d])?,
                };
                sc.check(d)
                    .map_err(|e| Error::format(path, e.to_string()))?;
                Some(sc)
            }
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!("field `scaling` is `{other}`; only `standardize` is known"),
                ))
            }
        };
        dict.info = header.info;
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildConfig, Builder};
    use crate::data::{ActivationBatch, Document};

    #[test]
    fn save_then_load_gives_the_same_dictionary() {
        let d = 3;
        let rows: Vec<f32> = (0..40)
            .flat_map(|i| [(i % 7) as f32, 1.0 + (i % 3) as f32, (i % 5) as f32 - 2.0])
            .collect();
        let mut batch = ActivationBatch::from_rows(rows, d, 0);
        batch.tokens = Some(
            (0..40)
                .map(|i| TokenRef {
                    doc_id: i / 10,
                    position: 1 + i % 10,
                })
                .collect(),
        );
        batch.documents = (0..4)
            .map(|doc| Document {
                doc_id: doc,
                tokens: (0..11).map(|t| format!("tok{doc}.{t} \"q\"")).collect(),
            })
            .collect();
        let cfg = BuildConfig {
            reservoir_size: 4,
            examples_per_partition: 3,
            ..BuildConfig::default()
        };
        let mut b = Builder::new(vec![0.5, 0.5, 0.5], 0.05, cfg).unwrap();
        b.add_batch(&batch).unwrap();
        b.info_mut().model = Some("m".into());
        let dict = b.finish(1).dictionary;
        assert!(dict.len() > 3 && !dict.documents.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        dict.save(&p, false).unwrap();
        assert_eq!(Dictionary::load(&p).unwrap(), dict);
    }
}
