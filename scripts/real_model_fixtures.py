#!/usr/bin/env python3
"""What Hugging Face transformers computes with the real Gemma 3 270M on the test texts.

    .venv/bin/python scripts/real_model_fixtures.py SNAPSHOT_DIR OUT_DIR

SNAPSHOT_DIR is the converted checkpoint of scripts/get-model.sh (google/gemma-3-270m, f32).
The texts are tests/data/gemma3-270m-texts.json: a short prompt, Python source, a multilingual
paragraph and a 681-token section of the language reference (longer than the 512-token sliding
window). tests/gemma3_real.rs compares the Rust forward with what this script writes.

OUT_DIR/expected.safetensors (float32 unless noted), per text NAME:

    NAME.input_ids                  int64 [1, T]   HF tokenizer ids (BOS first)
    NAME.HOOK.L                     the activation at blocks.L.<hook>, batch of 1, for
                                    HOOK in resid_post, attn_out, mlp_out, q, k, v, rot_q, rot_k,
                                    z ([1, T, heads, head_dim] for the per-head ones) and
                                    attn_scores, pattern ([1, heads, T, T]);
                                    resid_pre.0 (the scaled embedding) once
    NAME.logit_positions            int64 [P]      positions whose logits are stored
    NAME.logits                     [P, vocab]     logits at those positions

Which layers are stored: every hook at every layer for `prompt`, `multilingual` and `code`
(attention maps of `code` only at LAYERS_MAPS); for `long`, resid_post at every layer and every
hook at LAYERS_LONG. Also:

    prompt.generated_ids            int64 [1, T + GEN_TOKENS]  greedy continuation (generate)
    iv.direction                    [d_model]   unit e; the edit adds IV_ALPHA·e at
                                                blocks.IV_LAYER.hook_resid_post (a forward hook
                                                on decoder layer IV_LAYER)
    iv.logits                       [P, vocab]  multilingual's logits at its logit_positions
                                                under that edit

OUT_DIR/tokenizer_expected.json holds HF's ids for every text and extra tokenizer strings.

Deterministic (CPU, float32, eager attention) and idempotent: OUT_DIR/STAMP records this
script's hash, the snapshot's STAMP and the texts' hash; a matching STAMP exits at once without
importing torch. Written into OUT_DIR.tmp-<pid> and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ROOT / "tests" / "data" / "gemma3-270m-texts.json"
LAYERS_MAPS = (0, 5, 17)
LAYERS_LONG = (4, 5, 17)
GEN_TOKENS = 12
IV_LAYER = 9
IV_ALPHA = 400.0
PER_HEAD = ("q", "k", "v", "rot_q", "rot_k", "z")


def stamp(snapshot: Path) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    t = hashlib.sha256(TEXTS.read_bytes()).hexdigest()
    s = (snapshot / "STAMP").read_text().strip()
    return f"script:{h} texts:{t} model:[{s}]"


def logit_positions(t: int) -> list[int]:
    return sorted({0, 1, 2, t - 3, t - 2, t - 1, *range(0, t, 64)} & set(range(t)))


class Recorder:
    """TransformerLens-named activations through forward hooks (and the eager attention call)."""

    def __init__(self, model, mg, torch):
        self.t: dict[str, object] = {}
        self.handles = []
        self.mg, self.torch = mg, torch
        cfg = model.config
        H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

        def post(key, fn=lambda o: o):
            def h(mod, args, out):
                self.t[key] = fn(out[0] if isinstance(out, tuple) else out).detach().clone()

            return h

        def heads(n):
            return lambda o: o.reshape(*o.shape[:-1], n, hd)

        for l, layer in enumerate(model.model.layers):
            a = layer.self_attn
            self.handles += [
                layer.register_forward_pre_hook(self._pre(f"resid_pre.{l}"), with_kwargs=True),
                layer.register_forward_hook(post(f"resid_post.{l}")),
                layer.post_attention_layernorm.register_forward_hook(post(f"attn_out.{l}")),
                layer.post_feedforward_layernorm.register_forward_hook(post(f"mlp_out.{l}")),
                a.q_proj.register_forward_hook(post(f"q.{l}", heads(H))),
                a.k_proj.register_forward_hook(post(f"k.{l}", heads(KV))),
                a.v_proj.register_forward_hook(post(f"v.{l}", heads(KV))),
                a.o_proj.register_forward_pre_hook(lambda m, args, l=l: self._z(l, args[0], H, hd)),
            ]
        self.orig = mg.eager_attention_forward
        mg.eager_attention_forward = self._eager

    def _pre(self, key):
        def h(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.t[key] = x.detach().clone()

        return h

    def _z(self, l, x, H, hd):
        self.t[f"z.{l}"] = x.reshape(*x.shape[:-1], H, hd).detach().clone()

    def _eager(self, module, query, key, value, attention_mask, **kw):
        torch, l = self.torch, module.layer_idx
        self.t[f"rot_q.{l}"] = query.transpose(1, 2).detach().clone()
        self.t[f"rot_k.{l}"] = key.transpose(1, 2).detach().clone()
        k = self.mg.repeat_kv(key, module.num_key_value_groups)
        s = torch.matmul(query, k.transpose(2, 3)) * kw["scaling"]
        if kw.get("softcap") is not None:
            s = torch.tanh(s / kw["softcap"]) * kw["softcap"]
        if attention_mask is not None:
            s = s + attention_mask[:, :, :, : k.shape[-2]]
        self.t[f"attn_scores.{l}"] = s.detach().clone()
        out, w = self.orig(module, query, key, value, attention_mask, **kw)
        self.t[f"pattern.{l}"] = w.detach().clone()
        return out, w

    def close(self):
        for h in self.handles:
            h.remove()
        self.mg.eager_attention_forward = self.orig


def build(snapshot: Path, out: Path) -> None:
    import torch
    import transformers
    import transformers.models.gemma3.modeling_gemma3 as mg
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    spec = json.loads(TEXTS.read_text())
    tok = AutoTokenizer.from_pretrained(snapshot)
    model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32, attn_implementation="eager").eval()
    L = model.config.num_hidden_layers
    exp: dict[str, torch.Tensor] = {}
    tok_expected = []
    for item in spec["texts"]:
        name, text = item["name"], item["text"]
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == model.config.bos_token_id
        tok_expected.append({"text": text, "ids": ids[0].tolist()})
        rec = Recorder(model, mg, torch)
        try:
            with torch.no_grad():
                res = model(input_ids=ids, output_attentions=True, use_cache=False)
        finally:
            rec.close()
        t = ids.shape[1]
        exp[f"{name}.input_ids"] = ids
        exp[f"{name}.resid_pre.0"] = rec.t["resid_pre.0"]
        for l in range(L):
            mid = rec.t[f"resid_pre.{l}"] + rec.t[f"attn_out.{l}"]
            assert torch.equal(rec.t[f"resid_post.{l}"], mid + rec.t[f"mlp_out.{l}"]), (name, l)
            every = name != "long" or l in LAYERS_LONG
            keys = ["resid_post"] + (["attn_out", "mlp_out", *PER_HEAD] if every else [])
            if every and (name in ("prompt", "multilingual") or l in LAYERS_MAPS):
                keys += ["attn_scores", "pattern"]
            for k in keys:
                exp[f"{name}.{k}.{l}"] = rec.t[f"{k}.{l}"]
        pos = logit_positions(t)
        exp[f"{name}.logit_positions"] = torch.tensor(pos, dtype=torch.int64)
        exp[f"{name}.logits"] = res.logits[0, pos]
        if name == "prompt":
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=GEN_TOKENS)
            exp["prompt.generated_ids"] = gen
            print(f"greedy: {tok.decode(gen[0, t:])!r}", file=sys.stderr)
        if name == "multilingual":
            g = torch.Generator().manual_seed(1234)
            e = torch.randn(model.config.hidden_size, generator=g)
            e = e / e.norm()
            h = model.model.layers[IV_LAYER].register_forward_hook(lambda m, a, o: o + IV_ALPHA * e)
            try:
                with torch.no_grad():
                    lg = model(input_ids=ids, use_cache=False).logits[0, pos]
            finally:
                h.remove()
            change = (lg - res.logits[0, pos]).abs().max().item()
            assert change > 0.1, f"the edit must change the logits (max change {change})"
            print(f"intervention: max |logit change| {change:.3f}", file=sys.stderr)
            exp["iv.direction"] = e
            exp["iv.logits"] = lg
    for text in spec["tokenizer_texts"]:
        tok_expected.append({"text": text, "ids": tok(text)["input_ids"]})
    exp = {k: v.detach().contiguous() for k, v in sorted(exp.items())}
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(exp, str(tmp / "expected.safetensors"), metadata={"generator": "scripts/real_model_fixtures.py"})
    (tmp / "tokenizer_expected.json").write_text(json.dumps(tok_expected, ensure_ascii=False, indent=1) + "\n")
    (tmp / "STAMP").write_text(stamp(snapshot) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = (out / "expected.safetensors").stat().st_size
    print(f"[real_model_fixtures] wrote {out} ({len(exp)} tensors, {size / 1e6:.0f} MB)", file=sys.stderr)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    snapshot, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    if not (snapshot / "STAMP").exists():
        raise SystemExit(f"{snapshot}: no STAMP; make the snapshot with scripts/get-model.sh gemma-3-270m")
    try:
        if (out / "STAMP").read_text().strip() == stamp(snapshot):
            print(f"[real_model_fixtures] {out} is up to date", file=sys.stderr)
            return
    except OSError:
        pass
    build(snapshot, out)


if __name__ == "__main__":
    main()
