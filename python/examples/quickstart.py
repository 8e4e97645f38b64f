"""exemplar from Python, end to end, on the repository's embedded demo activations
(all-MiniLM-L6-v2, layer 3, 4,548 tokens of Python's documentation; no network).

Run it cell by cell in a notebook, or as a script:

    python python/examples/quickstart.py [path/to/minilm-l6-layer3.safetensors]
"""

# %% Setup
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import exemplar

here = Path(__file__).resolve()
demo = Path(sys.argv[1]) if len(sys.argv) > 1 else (
    here.parents[2] / "data" / "demo" / "minilm-l6-layer3.safetensors"
)
acts = load_file(str(demo))["activations"]  # float16, (4548, 384)
print(f"{acts.shape[0]} activations of width {acts.shape[1]} ({acts.dtype})")
out = Path(tempfile.mkdtemp(prefix="exemplar-quickstart-"))

# %% 1. Build from the file: the CLI's `exemplar build -a FILE -p 5 --batch-size 512`.
# The provenance sidecar next to the file is picked up, so examples come with their text.
d = exemplar.build(demo, percentile=5, batch_size=512)
print(d)
print(f"θ = {d.theta:.4f}, K = {len(d)}, saturated: {d.metadata['saturated']}")

# %% 2. The largest regions and their closest examples (the token in [[...]]).
for k in np.argsort(-d.member_counts)[:3]:
    print(f"region {k}: {d.member_counts[k]} members, coherence {d.coherence[k]:.3f}")
    for e in d.examples(int(k))[:3]:
        print(f"    d={e['distance']:.3f}  {e['context']}")

# %% 3. Assign new rows: nearest exemplar, cosine distance, and the OOD signal (within θ).
ids, dist = d.assign(acts[:1000])
inside = d.within_threshold(dist)
print(f"rows of the build itself within θ: {inside.mean():.1%}")
rng = np.random.default_rng(0)
noise = (d.center + rng.normal(0, 1, (1000, acts.shape[1]))).astype(np.float32)
_, noise_dist = d.assign(noise)
print(f"random directions within θ: {d.within_threshold(noise_dist).mean():.1%}")

# Any leading shape works: (batch, seq, D) in, (batch, seq) out.
ids3, _ = d.assign(acts[:1000].reshape(10, 100, -1))
assert ids3.shape == (10, 100) and (ids3.reshape(-1) == ids).all()

# %% 4. Encode as dictionary codes (the readouts of `exemplar encode`).
codes = d.encode(acts[:8], readout="topk", k=3)
print("top-3 codes:", codes.shape, "nonzeros per row:", (codes != 0).sum(axis=1))

# %% 5. Save, and load again (one safetensors file; numpy + safetensors can read it too).
path = out / "demo.safetensors"
d.save(path)
again = exemplar.Dictionary.load(path)
assert (again.assign(acts[:100])[0] == ids[:100]).all()
print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")

# %% 6. Build from your own model loop: a streaming Builder takes batches as they come
# (here: the demo rows in uneven pieces, as forward passes would hand them over). It
# calibrates on the first rows like `exemplar build -p`, clusters in batches of
# `batch_size` rows, and says when it has saturated.
b = exemplar.Builder(percentile=5, batch_size=512)
for piece in np.array_split(acts, 23):  # e.g. resid[:, 1:].reshape(-1, D) per forward
    if not b.add(piece):
        print("saturated: stop feeding")
        break
streamed = b.finish()
# The same dictionary as from the file (examples aside: the stream carries no text).
assert (streamed.exemplars == d.exemplars).all() and streamed.theta == d.theta
print(f"streamed: K = {len(streamed)} (same exemplars as the file build)")

# %% 7. Torch tensors work the same (CPU; CUDA tensors go to Dictionary.assign in place
# when the package is built with CUDA).
try:
    import torch

    t = torch.from_numpy(acts[:1000]).to(torch.bfloat16)
    ids_bf16, _ = d.assign(t)
    print(f"bf16 tensor: {np.mean(ids_bf16 == ids):.1%} of rows keep their region")
except ImportError:
    print("(torch not installed: skipped the tensor cell)")

# %% 8. Calibrate separately (`exemplar calibrate`), then build with that calibration.
cal = exemplar.calibrate(demo, percentile=5, batch_size=512)
print(cal)
d2 = exemplar.build(demo, calibration=cal, batch_size=512)
assert (d2.exemplars == d.exemplars).all()
print("done")
