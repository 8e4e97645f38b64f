//! Circuit task files: JSON Lines, one prompt pair per line with the four string fields
//! `prompt`, `answer`, `corrupted_prompt`, `wrong_answer`. The metric is the logit difference
//! `logit(answer) − logit(wrong_answer)` at the prompt's last token; the corrupted prompt is
//! the matched negative (the model cannot give the answer from it).
//!
//! Every error names the file, the line and the field.

use crate::error::{Error, Result};
use std::path::Path;

/// The fields of a task line, in the order the errors list them.
pub const FIELDS: [&str; 4] = ["prompt", "answer", "corrupted_prompt", "wrong_answer"];

/// One line of a task file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskItem {
    /// 1-based line number in the file.
    pub line: usize,
    pub prompt: String,
    pub answer: String,
    pub corrupted_prompt: String,
    pub wrong_answer: String,
}

/// A task line as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedItem {
    /// 1-based line number in the file.
    pub line: usize,
    /// `[BOS] + ids` of the prompt.
    pub clean: Vec<i64>,
    /// `[BOS] + ids` of the corrupted prompt (as long as `clean`).
    pub corrupted: Vec<i64>,
    /// The answer's one token.
    pub answer: i64,
    /// The wrong answer's one token.
    pub wrong: i64,
}

/// Reads a task file (blank lines are skipped). Errors: a line that is not a JSON object, a
/// missing or non-string field, an empty file.
pub fn read_task(path: &Path) -> Result<Vec<TaskItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_task(path, &text)
}

/// [`read_task`] on text already read (`path` only names it in errors).
pub fn parse_task(path: &Path, text: &str) -> Result<Vec<TaskItem>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |m: String| Error::format(path, format!("line {line}: {m}"));
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut fields = Vec::with_capacity(4);
        for f in FIELDS {
            match obj.get(f) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => fields.push(s.clone()),
                Some(serde_json::Value::String(_)) => {
                    return Err(bad(format!("field `{f}` is empty")))
                }
                Some(other) => {
                    return Err(bad(format!(
                        "field `{f}` must be a string, found {}",
                        json_kind(other)
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "field `{f}` is missing (a task line has {})",
                        FIELDS.join(", ")
                    )))
                }
            }
        }
        let mut it = fields.into_iter();
        let mut next = || it.next().expect("four fields");
        out.push(TaskItem {
            line,
            prompt: next(),
            answer: next(),
            corrupted_prompt: next(),
            wrong_answer: next(),
        });
    }
    if out.is_empty() {
        return Err(Error::EmptyInput(format!(
            "{}: no task line (JSON Lines with {})",
            path.display(),
            FIELDS.join(", ")
        )));
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Tokenises every item with `encode` (text → `[BOS] + ids`, as
/// [`crate::model::Tokenizer::encode`]) and checks what the method needs: the answer and the
/// wrong answer are one token each, and the clean and corrupted prompts have the same length
/// (patching is position by position). Errors name the file, the line and the field.
pub fn encode_task(
    path: &Path,
    items: &[TaskItem],
    encode: impl Fn(&str) -> Result<Vec<i64>>,
) -> Result<Vec<EncodedItem>> {
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let bad = |m: String| Error::format(path, format!("line {}: {m}", it.line));
        let one_token = |field: &str, text: &str| -> Result<i64> {
            let ids = encode(text)?;
            let body = ids.get(1..).unwrap_or(&[]);
            match body {
                [id] => Ok(*id),
                _ => Err(bad(format!(
                    "field `{field}` ({text:?}) is {} tokens; it must be exactly one token",
                    body.len()
                ))),
            }
        };
        let answer = one_token("answer", &it.answer)?;
        let wrong = one_token("wrong_answer", &it.wrong_answer)?;
        if answer == wrong {
            return Err(bad(format!(
                "fields `answer` and `wrong_answer` are the same token ({:?}, {:?}): the logit difference is 0",
                it.answer, it.wrong_answer
            )));
        }
        let clean = encode(&it.prompt)?;
        let corrupted = encode(&it.corrupted_prompt)?;
        if clean.len() < 2 {
            return Err(bad("field `prompt` has no token".into()));
        }
        if clean.len() != corrupted.len() {
            return Err(bad(format!(
                "field `prompt` is {} tokens but `corrupted_prompt` is {}; patching is position by position, so they must tokenise to the same length",
                clean.len() - 1,
                corrupted.len() - 1
            )));
        }
        out.push(EncodedItem {
            line: it.line,
            clean,
            corrupted,
            answer,
            wrong,
        });
    }
    Ok(out)
}

/// An attention head: block and head index, named `a{layer}.h{head}` as in MIB / EAP-IG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Head {
    pub layer: usize,
    pub head: usize,
}

impl Head {
    /// `a{layer}.h{head}`.
    pub fn name(&self) -> String {
        format!("a{}.h{}", self.layer, self.head)
    }

    /// Index in the flat order (layer-major) of a model with `heads` heads per layer.
    pub fn flat(&self, heads: usize) -> usize {
        self.layer * heads + self.head
    }

    /// Parses `a3.h1` or `3.1` and checks it against a model of `layers` blocks with `heads`
    /// heads each.
    pub fn parse(s: &str, layers: usize, heads: usize) -> Result<Head> {
        let bad = |m: String| Error::param("head", format!("`{s}`: {m}"));
        let t = s.trim();
        let (l, h) = match t.strip_prefix('a') {
            Some(rest) => rest.split_once(".h").ok_or_else(|| {
                bad("expected a{layer}.h{head} (e.g. a3.h1) or layer.head".into())
            })?,
            None => t.split_once('.').ok_or_else(|| {
                bad("expected a{layer}.h{head} (e.g. a3.h1) or layer.head".into())
            })?,
        };
        let num = |v: &str, what: &str| -> Result<usize> {
            v.parse()
                .map_err(|_| bad(format!("the {what} `{v}` is not a non-negative integer")))
        };
        let (layer, head) = (num(l, "layer")?, num(h, "head")?);
        if layer >= layers {
            return Err(bad(format!(
                "layer {layer} is out of range (the model has {layers} layers, 0..{})",
                layers - 1
            )));
        }
        if head >= heads {
            return Err(bad(format!(
                "head {head} is out of range (the model has {heads} heads per layer, 0..{})",
                heads - 1
            )));
        }
        Ok(Head { layer, head })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_fields_are_named() {
        let p = Path::new("t.jsonl");
        let ok = r#"{"prompt":"a b","answer":" c","corrupted_prompt":"a d","wrong_answer":" e"}"#;
        let items = parse_task(p, &format!("{ok}\n\n{ok}\n")).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line, 3);
        let e = parse_task(p, &format!("{ok}\n{{\"prompt\":\"x\"}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("`answer` is missing"),
            "{e}"
        );
        let e = parse_task(p, r#"{"prompt":"x","answer":3}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("`answer` must be a string"),
            "{e}"
        );
        assert!(parse_task(p, "\n").is_err());
    }

    #[test]
    fn heads_parse_and_range() {
        assert_eq!(
            Head::parse("a3.h1", 18, 4).unwrap(),
            Head { layer: 3, head: 1 }
        );
        assert_eq!(
            Head::parse("17.3", 18, 4).unwrap(),
            Head { layer: 17, head: 3 }
        );
        let e = Head::parse("a3.h4", 18, 4).unwrap_err().to_string();
        assert!(e.contains("head 4 is out of range"), "{e}");
        let e = Head::parse("a18.h0", 18, 4).unwrap_err().to_string();
        assert!(e.contains("layer 18 is out of range"), "{e}");
        assert!(Head::parse("x", 18, 4).is_err());
    }
}
