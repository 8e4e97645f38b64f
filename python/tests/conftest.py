"""Shared fixtures: the repository's demo activations, and the `exemplar` CLI the bindings are
compared with (EXEMPLAR_CLI, else target/debug/exemplar; a missing CLI fails, never skips)."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo" / "minilm-l6-layer3.safetensors"

# Measurements, not settings: two runs of the same build differ only in these.
MEASURED = {
    "build_seconds",
    "created_unix",
    "clustering_seconds",
    "calibration_seconds",
    "forward_seconds",
    "activation_d2h_bytes",
}


def cli_path() -> Path:
    p = Path(os.environ.get("EXEMPLAR_CLI") or ROOT / "target" / "debug" / "exemplar")
    if not p.exists():
        pytest.fail(
            f"the exemplar CLI is needed to compare with ({p} does not exist): "
            "run `cargo build --bin exemplar` or set EXEMPLAR_CLI"
        )
    return p


@pytest.fixture(scope="session")
def cli():
    exe = cli_path()

    def run(*args, ok=True):
        r = subprocess.run(
            [str(exe), *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, "CI": "1"},
        )
        if ok and r.returncode != 0:
            raise AssertionError(f"exemplar {' '.join(map(str, args))} failed:\n{r.stderr}")
        return r

    return run


@pytest.fixture(scope="session")
def demo_f16():
    """The demo activations (4,548 × 384, float16) as stored."""
    return load_file(str(DEMO))["activations"]


def read_safetensors(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def dictionary_record(path, ignore=()):
    """The `exemplar` metadata object of a dictionary file without the measurements (and the
    `ignore`d fields)."""
    header, _ = read_safetensors(path)
    meta = dict(header["__metadata__"])
    info = json.loads(meta.pop("exemplar"))
    for k in MEASURED | set(ignore):
        info.pop(k, None)
    return meta, info


def assert_same_dictionary(a, b, ignore=()):
    """Two dictionary files are the same bit for bit: every tensor byte and every header entry,
    except the measurements (timings, creation time) and the `ignore`d metadata fields."""
    ha, da = read_safetensors(a)
    hb, db = read_safetensors(b)
    ta = {k: v for k, v in ha.items() if k != "__metadata__"}
    tb = {k: v for k, v in hb.items() if k != "__metadata__"}
    assert ta == tb, "tensor names, dtypes, shapes or offsets differ"
    assert da == db, "tensor bytes differ"
    assert dictionary_record(a, ignore) == dictionary_record(b, ignore)


def load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def bits_equal(a, b):
    """Bitwise equality of two arrays (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
