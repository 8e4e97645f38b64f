#!/usr/bin/env python3
"""Write tiny random Gemma-2 and Gemma 3 (text) checkpoints plus Hugging Face transformers' outputs
on them.

Ground truth for the Rust (tch) Gemma implementation (feature `torch`) on configs no package ships
(the real Gemma 3 270M is checked by scripts/real_model_fixtures.py). Layout, tensor names and the
semantics they pin down: docs/gemma-fixtures.md.

    .venv/bin/python scripts/gemma_fixtures.py OUT_DIR

Deterministic (fixed seeds, CPU, float32, eager attention) and idempotent: the finished tree
carries OUT_DIR/STAMP = "sha256:<hash of this file>"; when it exists and matches, the script exits
at once ("up to date") without importing torch. Otherwise everything is built in a sibling
OUT_DIR.tmp-<pid>, checked (reloaded from disk), STAMP is written last, and the directory is
renamed into place, so a half-finished run is never taken for a finished one.

One sub-directory per config: config.json, generation_config.json, model weights (one file or
shards + index), tokenizer.json, tokenizer_expected.json, expected.safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

SCRIPT_HASH = "sha256:" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

# ---------------------------------------------------------------------------------------------
# Configs. `hf` goes to transformers.Gemma2Config verbatim; the rest drives this script.
# ---------------------------------------------------------------------------------------------
CONFIGS = [
    {
        "name": "gqa",
        "family": "gemma2",
        "seed": 1234,
        "T": 13,  # > sliding_window
        "qk_std": 0.3,  # std of q_proj / k_proj weights: makes attention soft-capping active
        "max_shard_size": None,  # single model.safetensors
        "hf": dict(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=6,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
    },
    {
        "name": "sharded",
        "family": "gemma2",
        "seed": 5678,
        "T": 11,
        "qk_std": 0.4,
        "max_shard_size": "150KB",  # ~390 KB of weights -> 3 shards
        "hf": dict(
            vocab_size=128,
            hidden_size=48,  # != num_attention_heads * head_dim = 64
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            sliding_window=4,
            query_pre_attn_scalar=24,  # != head_dim
            attn_logit_softcapping=25.0,  # different caps than "gqa": catches hard-coded constants
            final_logit_softcapping=20.0,
            rope_theta=500.0,
            rms_norm_eps=1e-5,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
    },
    {
        # Gemma 3 text: q/k norms, one RoPE base per attention type (linear scaling on the global
        # layers, as the 4B+ checkpoints have), no soft-capping, 4 query heads on 1 KV head like
        # gemma-3-270m, heads * head_dim != hidden.
        "name": "gemma3",
        "family": "gemma3",
        "seed": 9012,
        "T": 13,  # > sliding_window
        "qk_std": 0.3,
        "max_shard_size": None,
        "hf": dict(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=5,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            sliding_window=5,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=32,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            rms_norm_eps=1e-6,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
    },
]

# Interventions checked against PyTorch forward hooks on the HF model (both families).
IV_LAYER = 1  # block of the edits
IV_ALPHA = 3.0  # add IV_ALPHA * e (unit e) at blocks.IV_LAYER.hook_resid_post
IV_HEAD = 1  # attn.hook_z of this head is patched from a second input

PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, Gemma's convention
GEN_PROMPT_LEN = 7  # T0
GEN_NEW_TOKENS = 6
GEN_MIN_DISTINCT = 4
GEN_MIN_MARGIN = 0.05  # top1 - top2 logit at every greedy step: robust against float noise

# Init scales (see docs). Norm weights are NOT zero (HF's init) so that `x * (1 + w)` is tested.
EMBED_STD = 0.3
NORM_STD = 0.1
# post_attention_layernorm / post_feedforward_layernorm weights ~ N(POST_NORM_MEAN, NORM_STD): the
# blocks' writes (scale 1 + w) then outweigh the token embedding in the residual stream, so that the
# tied unembedding does not just predict the current token again (greedy generation would repeat it).
POST_NORM_MEAN = 2.0
# model.norm.weight ~ N(FINAL_NORM_MEAN, NORM_STD): scales all logits (argmax unchanged) so that the
# final logit soft-capping is clearly active.
FINAL_NORM_MEAN = 2.0
LINEAR_STD = 0.05

# Fixed English text for the tokenizer (written for this script).
CORPUS = """\
The river runs past the old mill and under the stone bridge before it reaches the sea.
In the morning the fishermen pull their boats onto the sand and sort the catch in baskets.
Children walk along the shore, looking for shells, and the gulls circle above the harbour.

A small library stands at the corner of the market square. Its shelves hold maps, letters
and books about the history of the town, and the reading room is quiet even in summer.
The librarian keeps a list of every visitor, and she remembers the names of most of them.

When the wind turns to the north the weather changes quickly. Clouds gather over the hills,
the rain begins to fall, and the streets empty as people hurry home to light their fires.
By the evening the storm has passed, the sky is clear again, and the stars are bright.

Learning to read a map takes patience. First find the north arrow, then the scale, and then
the roads and rivers that connect one place to another. With practice the lines and symbols
begin to tell a story about the land, the people who live there, and the paths they follow.
"""

TOKENIZER_TEXTS = [
    "The river runs past the old mill.",
    "Children read maps in the library when the weather turns.",
    "Quiet storms: 42 ships, 7 bridges & one Zebra!",  # digits, '&', 'Z' are not in the corpus -> <unk>
    "harbour lights, northern hills and bright evening stars",
]


# ---------------------------------------------------------------------------------------------
def read_stamp(out_dir: Path) -> str | None:
    try:
        return (out_dir / "STAMP").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False, min_frequency=1
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    assert tok.post_processor is None
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    expected = []
    for text in TOKENIZER_TEXTS:
        enc = tok.encode(text, add_special_tokens=False)
        expected.append({"text": text, "ids": [BOS] + list(enc.ids), "tokens": ["<bos>"] + list(enc.tokens)})
    return tok, expected


def init_weights(model, cfg, torch):
    """Re-initialise every parameter (tied lm_head shares embed_tokens) from a seeded generator."""
    g = torch.Generator().manual_seed(cfg["seed"])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("embed_tokens.weight"):
                std = EMBED_STD
            elif name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * NORM_STD + POST_NORM_MEAN)
                continue
            elif name == "model.norm.weight":
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * NORM_STD + FINAL_NORM_MEAN)
                continue
            elif name.endswith("norm.weight"):
                std = NORM_STD
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                std = cfg["qk_std"]
            elif name.endswith("proj.weight"):
                std = LINEAR_STD
            else:
                raise AssertionError(f"unexpected parameter {name}")
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)


def greedy_reference(model, prompt, torch):
    """Plain argmax decoding, full recompute each step (no cache). Returns ids and top1-top2 margins."""
    seq, margins = prompt.clone(), []
    with torch.no_grad():
        for _ in range(GEN_NEW_TOKENS):
            last = model(input_ids=seq, use_cache=False).logits[:, -1]
            top2 = last.topk(2, dim=-1).values[0]
            margins.append((top2[0] - top2[1]).item())
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, margins


def make_inputs(cfg, torch, k=0):
    T, V = cfg["T"], cfg["hf"]["vocab_size"]
    lengths = [T, T - 4, 5]
    g = torch.Generator().manual_seed(cfg["seed"] + 1 + k)
    ids = torch.randint(4, V, (len(lengths), T), generator=g, dtype=torch.int64)
    ids[:, 0] = BOS
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = PAD
    return ids, mask, lengths


class Recorder:
    """Forward hooks (TransformerLens-style names) plus raw attention scores via eager attention."""

    def __init__(self, model, torch, mg):
        self.torch = torch
        self.t = {}
        self.score_stats = []  # (layer, max |raw score| over allowed entries, #allowed with |s|>10, #allowed)
        self.handles = []
        cfg = model.config
        self.n_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.n_kv = cfg.num_key_value_heads
        for l, layer in enumerate(model.model.layers):
            att = layer.self_attn
            self._hook(att.q_proj, "post", f"q.{l}", lambda o: o.reshape(*o.shape[:-1], self.n_heads, self.head_dim))
            self._hook(att.k_proj, "post", f"k.{l}", lambda o: o.reshape(*o.shape[:-1], self.n_kv, self.head_dim))
            self._hook(att.v_proj, "post", f"v.{l}", lambda o: o.reshape(*o.shape[:-1], self.n_kv, self.head_dim))
            self._hook(layer, "pre", f"resid_pre.{l}", lambda a, kw: a[0] if a else kw["hidden_states"])
            self._hook(layer, "post", f"resid_post.{l}", lambda o: o[0] if isinstance(o, tuple) else o)
            self._hook(layer.post_attention_layernorm, "post", f"attn_out.{l}", lambda o: o)
            self._hook(layer.pre_feedforward_layernorm, "pre", f"_ffn_in.{l}", lambda a, kw: a[0])
            self._hook(layer.post_feedforward_layernorm, "post", f"mlp_out.{l}", lambda o: o)
            self._hook(layer.self_attn.o_proj, "pre", f"z.{l}", self._z)
        self.mg = mg
        self.orig_eager = mg.eager_attention_forward
        mg.eager_attention_forward = self._eager

    def _z(self, a, kw):
        x = a[0]
        return x.reshape(*x.shape[:-1], self.n_heads, self.head_dim)

    def _hook(self, module, kind, key, fn):
        def pre(mod, args, kwargs):
            self.t[key] = fn(args, kwargs).detach().clone()

        def post(mod, args, output):
            self.t[key] = fn(output).detach().clone()

        if kind == "pre":
            self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            self.handles.append(module.register_forward_hook(post))

    def _eager(self, module, query, key, value, attention_mask, **kw):
        torch = self.torch
        l = module.layer_idx
        # query/key arrive after the q/k norms and RoPE, [B, heads, T, head_dim].
        self.t[f"rot_q.{l}"] = query.transpose(1, 2).detach().clone()
        self.t[f"rot_k.{l}"] = key.transpose(1, 2).detach().clone()
        k = self.mg.repeat_kv(key, module.num_key_value_groups)
        s = torch.matmul(query, k.transpose(2, 3)) * kw["scaling"]
        allowed = (attention_mask == 0).expand_as(s) if attention_mask is not None else torch.ones_like(s, dtype=bool)
        a = s.abs()[allowed]
        self.score_stats.append((l, a.max().item(), int((a > 10).sum()), a.numel()))
        # The scores as eager attention forms them: scaled, soft-capped, plus the additive mask.
        cap = kw.get("softcap")
        if cap is not None:
            s = torch.tanh(s / cap) * cap
        if attention_mask is not None:
            s = s + attention_mask[:, :, :, : k.shape[-2]]
        self.t[f"attn_scores.{l}"] = s.detach().clone()
        return self.orig_eager(module, query, key, value, attention_mask, **kw)

    def close(self):
        for h in self.handles:
            h.remove()
        self.mg.eager_attention_forward = self.orig_eager


def softcap(x, cap, torch):
    return torch.tanh(x / cap) * cap


def build_one(cfg, root: Path, torch, transformers, st_torch, st_numpy, first: bool):
    import numpy as np

    if cfg["family"] == "gemma2":
        import transformers.models.gemma2.modeling_gemma2 as mg
        from transformers import Gemma2Config as Config, Gemma2ForCausalLM as ForCausalLM
    else:
        import transformers.models.gemma3.modeling_gemma3 as mg
        from transformers import Gemma3TextConfig as Config, Gemma3ForCausalLM as ForCausalLM

    name = cfg["name"]
    d = root / name
    d.mkdir(parents=True)
    torch.manual_seed(cfg["seed"])

    config = Config(**cfg["hf"], dtype="float32", attn_implementation="eager")
    L, T, V = config.num_hidden_layers, cfg["T"], config.vocab_size
    if cfg["family"] == "gemma2":
        assert config.layer_types == ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
    else:
        assert config.layer_types == cfg["hf"]["layer_types"]
    model = ForCausalLM(config).eval()
    assert model.config._attn_implementation == "eager"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    init_weights(model, cfg, torch)

    # ---- weights + config ----
    save_kw = {"safe_serialization": True}
    if cfg["max_shard_size"]:
        save_kw["max_shard_size"] = cfg["max_shard_size"]
    model.save_pretrained(d, **save_kw)
    cj = json.loads((d / "config.json").read_text())
    assert cj["model_type"] == {"gemma2": "gemma2", "gemma3": "gemma3_text"}[cfg["family"]], cj
    assert cj["dtype"] == "float32", cj

    # ---- tokenizer ----
    tok, tok_expected = build_tokenizer(V)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_expected.json").write_text(json.dumps(tok_expected, indent=1, ensure_ascii=False) + "\n")

    # ---- inputs ----
    # A random tied-embedding model mostly just repeats its current token under greedy decoding.
    # Take the first input draw whose generation prompt (first GEN_PROMPT_LEN tokens of sequence 0)
    # yields >= GEN_MIN_DISTINCT distinct new tokens, with clear argmax margins and no PAD/EOS, so
    # that the generated ids actually depend on the KV cache / sliding window being right.
    for draw in range(200):
        ids, mask, lengths = make_inputs(cfg, torch, draw)
        seq, margins = greedy_reference(model, ids[:1, :GEN_PROMPT_LEN], torch)
        new = seq[0, GEN_PROMPT_LEN:].tolist()
        if len(set(new)) >= GEN_MIN_DISTINCT and min(margins) > GEN_MIN_MARGIN and not {PAD, EOS} & set(new):
            break
    else:
        raise AssertionError("no suitable generation prompt found")

    # ---- forward pass with hooks ----
    rec = Recorder(model, torch, mg)
    try:
        with torch.no_grad():
            out = model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True, use_cache=False
            )
    finally:
        rec.close()
    hs = out.hidden_states
    assert len(hs) == L + 1 and len(out.attentions) == L
    t = rec.t
    E = model.model.embed_tokens.weight

    exp = {"input_ids": ids, "attention_mask": mask, "logits": out.logits}
    for i, h in enumerate(hs):
        exp[f"hidden_states.{i}"] = h
    for l in range(L):
        for k in ("resid_pre", "attn_out", "mlp_out", "resid_post", "z", "q", "k", "v", "rot_q", "rot_k", "attn_scores"):
            exp[f"{k}.{l}"] = t[f"{k}.{l}"]
        exp[f"resid_mid.{l}"] = t[f"resid_pre.{l}"] + t[f"attn_out.{l}"]
        exp[f"pattern.{l}"] = out.attentions[l]
        assert torch.allclose(exp[f"pattern.{l}"], torch.softmax(t[f"attn_scores.{l}"], dim=-1), atol=1e-6), l

    # ---- consistency checks (exact: same float ops as HF) ----
    with torch.no_grad():
        emb0 = model.model.embed_tokens(ids)
    assert torch.equal(hs[0], emb0) and torch.equal(hs[0], t["resid_pre.0"])
    for l in range(L):
        assert torch.equal(exp[f"resid_mid.{l}"], t[f"_ffn_in.{l}"]), l
        assert torch.equal(t[f"resid_post.{l}"], exp[f"resid_mid.{l}"] + t[f"mlp_out.{l}"]), l
        if l + 1 < L:
            assert torch.equal(t[f"resid_post.{l}"], t[f"resid_pre.{l + 1}"]), l
            assert torch.equal(hs[l + 1], t[f"resid_post.{l}"]), l
    assert not torch.equal(hs[L], t[f"resid_post.{L - 1}"])
    with torch.no_grad():
        normed = model.model.norm(t[f"resid_post.{L - 1}"])
    assert torch.equal(hs[L], normed), "last hidden_states entry is model.norm(resid_post[L-1])"
    uncapped = hs[L] @ E.T
    if config.final_logit_softcapping is not None:
        assert torch.allclose(out.logits, softcap(uncapped, config.final_logit_softcapping, torch), atol=1e-5)
    else:
        assert torch.allclose(out.logits, uncapped, atol=1e-5)
    for l in range(L):  # z matches (T, H, hd) and o_proj(z) -> post_attention_layernorm -> attn_out
        with torch.no_grad():
            lay = model.model.layers[l]
            ao = lay.post_attention_layernorm(lay.self_attn.o_proj(t[f"z.{l}"].flatten(-2)))
        assert torch.equal(ao, t[f"attn_out.{l}"]), l

    # batch invariance at valid positions: each sequence alone, unpadded
    with torch.no_grad():
        for b, n in enumerate(lengths):
            solo = model(input_ids=ids[b : b + 1, :n], use_cache=False).logits[0]
            err = (solo - out.logits[b, :n]).abs().max().item()
            assert err < 1e-4, (name, b, err)

    # ---- greedy generation ----
    prompt = ids[:1, :GEN_PROMPT_LEN]
    with torch.no_grad():
        gen = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=GEN_NEW_TOKENS,
            min_new_tokens=0,
            eos_token_id=None,
            pad_token_id=PAD,
            use_cache=True,
        )
    assert gen.shape == (1, GEN_PROMPT_LEN + GEN_NEW_TOKENS), gen.shape
    assert torch.equal(gen, seq), (gen, seq)
    assert min(margins) > GEN_MIN_MARGIN, ("argmax too close to a tie for a robust Rust check", margins)
    assert not any(int(x) in (PAD, EOS) for x in gen[0, GEN_PROMPT_LEN:]), "pick another seed: EOS/PAD generated"
    exp["generated_ids"] = gen

    # ---- soft-capping effects (Gemma-2) ----
    final_cap_diff = (out.logits - uncapped).abs().max().item()
    attn_cap_diff = float("nan")
    if config.attn_logit_softcapping is not None:
        with torch.no_grad():
            for lay in model.model.layers:
                lay.self_attn.attn_logit_softcapping = None
            nocap = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for lay in model.model.layers:
                lay.self_attn.attn_logit_softcapping = config.attn_logit_softcapping
        valid = mask.bool()
        attn_cap_diff = (nocap - out.logits)[valid].abs().max().item()

    # ---- interventions with PyTorch forward hooks (the Rust edits must give the same logits) ----
    g = torch.Generator().manual_seed(cfg["seed"] + 77)
    e = torch.randn(config.hidden_size, generator=g)
    e = e / e.norm()
    layer = model.model.layers[IV_LAYER]

    def add_hook(mod, args, output):
        return output + IV_ALPHA * e

    h = layer.register_forward_hook(add_hook)
    try:
        with torch.no_grad():
            iv_add = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        h.remove()
    assert (iv_add - out.logits)[mask.bool()].abs().max().item() > 1e-3, "the edit must change the logits"
    exp["iv.add.direction"] = e
    exp["iv.add.logits"] = iv_add
    # Patch one head's z (the o_proj input) from a second input of the same shape and mask.
    patch_ids, _, _ = make_inputs(cfg, torch, 1000)
    patch_ids = torch.where(mask.bool(), patch_ids, ids)
    with torch.no_grad():
        rec_src = {}
        hsrc = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: rec_src.__setitem__("z", a[0].clone()))
        try:
            model(input_ids=patch_ids, attention_mask=mask, use_cache=False)
        finally:
            hsrc.remove()
    hd, H = config.head_dim, config.num_attention_heads

    def patch_hook(mod, args):
        x = args[0].clone().view(*args[0].shape[:-1], H, hd)
        src = rec_src["z"].view(*args[0].shape[:-1], H, hd)
        x[:, :, IV_HEAD, :] = src[:, :, IV_HEAD, :]
        return (x.view(args[0].shape),)

    h = layer.self_attn.o_proj.register_forward_pre_hook(patch_hook)
    try:
        with torch.no_grad():
            iv_patch = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        h.remove()
    assert (iv_patch - out.logits)[mask.bool()].abs().max().item() > 1e-3, "the patch must change the logits"
    exp["iv.patch.input_ids"] = patch_ids
    exp["iv.patch.logits"] = iv_patch

    # ---- write expected.safetensors ----
    exp = {k: v.detach().contiguous() for k, v in sorted(exp.items())}
    for k, v in exp.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), k
    st_torch.save_file(exp, str(d / "expected.safetensors"), metadata={"generator": "scripts/gemma_fixtures.py"})

    # ---- reload checks ----
    back = st_numpy.load_file(str(d / "expected.safetensors"))
    assert sorted(back) == sorted(exp)
    for k, v in exp.items():
        assert np.array_equal(back[k], v.numpy()), k
    sd = {k: v for k, v in model.state_dict().items()}
    idx_path = d / "model.safetensors.index.json"
    if cfg["max_shard_size"]:
        assert not (d / "model.safetensors").exists()
        wmap = json.loads(idx_path.read_text())["weight_map"]
        shards = sorted(set(wmap.values()))
        assert len(shards) >= 2, shards
        written = {}
        for s in shards:
            part = st_numpy.load_file(str(d / s))
            for k in part:
                assert wmap[k] == s, k
            written.update(part)
        assert sorted(written) == sorted(wmap)
    else:
        assert not idx_path.exists()
        shards = ["model.safetensors"]
        written = st_numpy.load_file(str(d / "model.safetensors"))
    names = sorted(written)
    assert "lm_head.weight" not in names, "tied lm_head is not written"
    for wn in names:
        assert np.array_equal(written[wn], sd[wn].numpy()), wn
        assert written[wn].dtype == np.float32
    re = ForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        relog = re(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(relog, out.logits), "reloaded checkpoint reproduces logits"

    # ---- summary ----
    print(f"== {name}: L={L} H={config.num_attention_heads} KV={config.num_key_value_heads} "
          f"hd={config.head_dim} D={config.hidden_size} V={V} T={T} lengths={lengths} "
          f"window={config.sliding_window} layer_types={config.layer_types}")
    print(f"   weight files: {shards}")
    if first:
        print("   weight names as written:")
        for wn in names:
            print(f"     {wn} {list(written[wn].shape)}")
    for l, mx, n10, n in rec.score_stats:
        print(f"   layer {l} ({config.layer_types[l]}): max |raw attn score| = {mx:.2f} "
              f"(cap {config.attn_logit_softcapping}); {n10}/{n} allowed scores have |s| > 10")
    print(f"   max |logits| capped {out.logits.abs().max().item():.2f} / uncapped {uncapped.abs().max().item():.2f} "
          f"(cap {config.final_logit_softcapping}); max |capped - uncapped| = {final_cap_diff:.3f}")
    print(f"   attention soft-capping off -> max |logit change| at valid positions = {attn_cap_diff:.4f}")
    print(f"   input draw {draw}; generated_ids = {gen[0].tolist()} (min top1-top2 logit margin {min(margins):.3f})")
    print(f"   tokenizer ids[0] = {tok_expected[0]['ids']}")
    print(f"   expected.safetensors: {len(exp)} tensors, e.g. "
          + ", ".join(f"{k} {list(exp[k].shape)}" for k in ("input_ids", "hidden_states.0", "z.0", "pattern.0", "logits")))


def remove_dead_leftovers(out_dir: Path) -> None:
    """Delete OUT_DIR.tmp-<pid> / OUT_DIR.old-<pid> left behind by runs that were killed."""
    if not out_dir.parent.is_dir():
        return
    for p in out_dir.parent.iterdir():
        for tag in (".tmp-", ".old-"):
            pre = out_dir.name + tag
            if p.name.startswith(pre) and p.name[len(pre):].isdigit():
                pid = int(p.name[len(pre):])
                try:
                    os.kill(pid, 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
                if not alive:
                    shutil.rmtree(p, ignore_errors=True)


def main(argv):
    if len(argv) != 2:
        print("usage: .venv/bin/python scripts/gemma_fixtures.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[1]).absolute()
    if read_stamp(out_dir) == SCRIPT_HASH:
        print(f"{out_dir}: up to date")
        return 0

    import safetensors.numpy as st_numpy
    import safetensors.torch as st_torch
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)

    remove_dead_leftovers(out_dir)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for i, cfg in enumerate(CONFIGS):
            build_one(cfg, tmp, torch, transformers, st_torch, st_numpy, first=(i == 0))
        for f in tmp.rglob("*"):  # safetensors writes 0600; make the tree readable like other outputs
            f.chmod(0o755 if f.is_dir() else 0o644)
        (tmp / "STAMP").write_text(
            f"{SCRIPT_HASH}\ntransformers {transformers.__version__}, torch {torch.__version__}\n"
        )
        # Swap into place. A concurrent run may have finished first: accept its tree if it is current.
        old = None
        if out_dir.exists():
            if read_stamp(out_dir) == SCRIPT_HASH:
                shutil.rmtree(tmp)
                print(f"{out_dir}: up to date (written concurrently)")
                return 0
            old = out_dir.parent / f"{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if read_stamp(out_dir) != SCRIPT_HASH:
                raise
            shutil.rmtree(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{out_dir}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
