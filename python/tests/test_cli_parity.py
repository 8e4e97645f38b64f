"""The bindings against the CLI, bit for bit: the same dictionary file (every tensor byte and
header entry but the timings) for builds from files, arrays, tensors and a streaming Builder;
the same calibration file; the same `assign` and `encode` arrays."""

import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import exemplar
from conftest import DEMO, assert_same_dictionary, bits_equal, dictionary_record, load_npz


@pytest.fixture(scope="module")
def files(tmp_path_factory, demo_f16):
    """The demo rows as files the CLI reads: f16 safetensors without a sidecar (`plain`), f32
    .npy, bf16 safetensors, and f32 .npy with NaN/Inf rows (`holes`)."""
    d = tmp_path_factory.mktemp("inputs")
    plain = d / "plain.safetensors"
    shutil.copyfile(DEMO, plain)
    f32 = demo_f16.astype(np.float32)
    np.save(d / "f32.npy", f32)
    bf16 = torch.from_numpy(f32).to(torch.bfloat16)
    save_file({"activations": bf16}, str(d / "bf16.safetensors"))
    holes = f32.copy()
    for r in (0, 511, 512, 1000, 1001, 4546, 4547):
        holes[r, r % 384] = np.nan if r % 2 else np.inf
    np.save(d / "holes.npy", holes)
    return {
        "dir": d,
        "plain": plain,
        "f32": d / "f32.npy",
        "bf16": d / "bf16.safetensors",
        "holes": d / "holes.npy",
        "f32_rows": f32,
        "bf16_rows": bf16,
        "holes_rows": holes,
    }


@pytest.fixture(scope="module")
def dict_file(files, cli, tmp_path_factory):
    """A dictionary the CLI built (p5, batches of 512) on the plain demo rows."""
    out = tmp_path_factory.mktemp("dict") / "d.safetensors"
    cli("build", "-a", files["plain"], "-p", 5, "--batch-size", 512, "-o", out)
    return out


def chunks(x, sizes=(1, 700, 3, 2000, 511, 64)):
    """x cut into pieces of the given sizes (cycled), in order."""
    i, k = 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        yield x[i : i + n]
        i, k = i + n, k + 1


def test_build_from_files_with_provenance_is_the_cli_build(cli, tmp_path):
    ref, ids = tmp_path / "cli.safetensors", tmp_path / "ids.npy"
    cli("build", "-a", DEMO, "-p", 5, "--batch-size", 512, "--assignments", ids, "-o", ref)
    d, a = exemplar.build(str(DEMO), percentile=5, batch_size=512, return_assignments=True)
    d.save(tmp_path / "py.safetensors")
    assert_same_dictionary(ref, tmp_path / "py.safetensors")
    assert bits_equal(np.load(ids), a)
    # The examples carry the sidecar's text.
    assert any(e["context"] for e in d.examples(0))
    # Batches of whole documents (`--batch-documents`), as a build from text batches them.
    ref = tmp_path / "docs.safetensors"
    cli("build", "-a", DEMO, "-p", 5, "--batch-documents", 8, "-o", ref)
    exemplar.build(DEMO, percentile=5, batch_documents=8).save(tmp_path / "py-docs.safetensors")
    assert_same_dictionary(ref, tmp_path / "py-docs.safetensors")
    assert dictionary_record(ref)[1]["batch_documents"] == 8


def test_build_with_the_cli_defaults(cli, files, demo_f16, tmp_path):
    """Batches of 16,384, 200,000 calibration rows, window 1, two-phase: the CLI's defaults."""
    ref = tmp_path / "cli.safetensors"
    cli("build", "-a", files["plain"], "-p", 1, "-o", ref)
    exemplar.build(files["plain"], percentile=1).save(tmp_path / "files.safetensors")
    assert_same_dictionary(ref, tmp_path / "files.safetensors")
    # From the array itself: the same dictionary, input fingerprint included; only `inputs`
    # (a path, or "<array 0>") differs.
    exemplar.build(demo_f16, percentile=1).save(tmp_path / "array.safetensors")
    assert_same_dictionary(ref, tmp_path / "array.safetensors", ignore=["inputs"])
    _, info = dictionary_record(tmp_path / "array.safetensors")
    assert info["inputs"] == ["<array 0>"]
    assert info["batch_size"] == 16384 and info["saturation_window"] == 1
    assert info["semantics"] == "two-phase" and info["calibration_activations"] == 4548


@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_builds_from_arrays_tensors_and_a_stream_equal_the_cli(cli, files, kind, tmp_path):
    ref = tmp_path / "cli.safetensors"
    cli("build", "-a", files[kind], "-p", 5, "--batch-size", 512, "-o", ref)
    if kind == "f32":
        inputs = [files["f32_rows"], torch.from_numpy(files["f32_rows"])]
    else:
        inputs = [files["bf16_rows"], files["f32_rows"].astype(ml_dtypes.bfloat16)]
    for i, x in enumerate(inputs):
        out = tmp_path / f"array{i}.safetensors"
        exemplar.build(x, percentile=5, batch_size=512).save(out)
        assert_same_dictionary(ref, out, ignore=["inputs"])
    # A streaming Builder fed in pieces that are not batches: the same dictionary.
    b = exemplar.Builder(percentile=5, batch_size=512)
    for piece in chunks(inputs[0]):
        assert b.add(piece)
    out = tmp_path / "stream.safetensors"
    b.finish().save(out)
    assert_same_dictionary(ref, out, ignore=["inputs"])
    assert dictionary_record(out)[1]["inputs"] == ["<Builder.add>"]


FLAG_SETS = [
    (["--strict-order", "--seed", 7], dict(strict_order=True, seed=7)),
    (["--max-activations", 1000], dict(max_activations=1000)),
    (["--max-tokens", 1300], dict(max_tokens=1300)),
    (["--no-saturation", "--min-members", 2], dict(saturation_window=None, min_members=2)),
    (["--saturation-window", 3, "--examples", 3, "--reservoir", 5],
     dict(saturation_window=3, examples=3, reservoir=5)),
    (["--merge-close"], dict(merge_close=True)),
    (["--merge-close", "--merge-threshold", 0.3], dict(merge_close=True, merge_threshold=0.3)),
    (["--calibration-activations", 1000, "--percentile-method", "nearest-rank"],
     dict(calibration_activations=1000, percentile_method="nearest-rank")),
    (["--model-name", "minilm", "--hook", "layer3"], dict(model_name="minilm", hook="layer3")),
]


@pytest.mark.parametrize("flags,kwargs", FLAG_SETS, ids=lambda v: str(v))
def test_build_flags_equal_the_cli_flags(cli, files, flags, kwargs, tmp_path):
    ref = tmp_path / "cli.safetensors"
    cli("build", "-a", files["plain"], "-p", 5, "--batch-size", 512, *flags, "-o", ref)
    exemplar.build(files["plain"], percentile=5, batch_size=512, **kwargs).save(
        tmp_path / "py.safetensors"
    )
    assert_same_dictionary(ref, tmp_path / "py.safetensors")
    # The streaming Builder takes the same flags.
    b = exemplar.Builder(percentile=5, batch_size=512, **kwargs)
    for piece in chunks(files["f32_rows"]):
        if not b.add(piece):
            break
    b.finish().save(tmp_path / "stream.safetensors")
    ref32 = tmp_path / "cli32.safetensors"
    cli("build", "-a", files["f32"], "-p", 5, "--batch-size", 512, *flags, "-o", ref32)
    assert_same_dictionary(ref32, tmp_path / "stream.safetensors", ignore=["inputs"])


def test_a_budget_stops_the_stream_and_add_says_so(cli, files, tmp_path):
    ref = tmp_path / "cli.safetensors"
    cli("build", "-a", files["f32"], "-p", 5, "--batch-size", 512,
        "--max-activations", 1500, "-o", ref)
    b = exemplar.Builder(percentile=5, batch_size=512, max_activations=1500)
    wanted = [b.add(piece) for piece in chunks(files["f32_rows"], sizes=(400,))]
    # 200,000 calibration rows are never reached: the build calibrates on all 4,548 at the
    # end; before that every add is accepted.
    assert all(wanted)
    out = tmp_path / "stream.safetensors"
    b.finish().save(out)
    assert_same_dictionary(ref, out, ignore=["inputs"])
    # With a calibration of 1,024 rows the build runs as rows come, and stops at the budget.
    b = exemplar.Builder(percentile=5, batch_size=512, max_activations=1500,
                         calibration_activations=1024)
    wanted = [b.add(piece) for piece in chunks(files["f32_rows"], sizes=(400,))]
    assert wanted[:3] == [True] * 3 and not any(wanted[4:]), wanted
    assert not b.wants_more
    ref2 = tmp_path / "cli2.safetensors"
    cli("build", "-a", files["f32"], "-p", 5, "--batch-size", 512, "--max-activations", 1500,
        "--calibration-activations", 1024, "-o", ref2)
    b.finish().save(tmp_path / "stream2.safetensors")
    assert_same_dictionary(ref2, tmp_path / "stream2.safetensors", ignore=["inputs"])


def test_nonfinite_rows_are_skipped_as_the_cli_skips_them(cli, files, tmp_path):
    ref, ids = tmp_path / "cli.safetensors", tmp_path / "ids.npy"
    cli("build", "-a", files["holes"], "-p", 5, "--batch-size", 512, "--skip-nonfinite",
        "--assignments", ids, "-o", ref)
    d, a = exemplar.build(files["holes_rows"], percentile=5, batch_size=512,
                          skip_nonfinite=True, return_assignments=True)
    d.save(tmp_path / "py.safetensors")
    assert_same_dictionary(ref, tmp_path / "py.safetensors", ignore=["inputs"])
    assert bits_equal(np.load(ids), a)
    b = exemplar.Builder(percentile=5, batch_size=512, skip_nonfinite=True)
    for piece in chunks(files["holes_rows"]):
        b.add(piece)
    b.finish().save(tmp_path / "stream.safetensors")
    assert_same_dictionary(ref, tmp_path / "stream.safetensors", ignore=["inputs"])
    # assign and encode: skipped rows are −1 / NaN and zeros, as the CLI writes them.
    r = tmp_path / "r.npz"
    cli("assign", "-d", ref, "-a", files["holes"], "--skip-nonfinite", "-o", r)
    want = load_npz(r)
    got_ids, got_d = d.assign(files["holes_rows"], skip_nonfinite=True)
    assert bits_equal(want["ids"], got_ids) and bits_equal(want["distances"], got_d)
    c = tmp_path / "c.npy"
    cli("encode", "-d", ref, "-a", files["holes"], "--skip-nonfinite", "--readout", "cosine",
        "-o", c)
    assert bits_equal(np.load(c), d.encode(files["holes_rows"], readout="cosine",
                                            skip_nonfinite=True))


def test_calibrate_writes_the_cli_calibration_file(cli, files, tmp_path):
    ref = tmp_path / "cli.safetensors"
    cli("calibrate", "-a", files["plain"], "-p", 5, "--batch-size", 512,
        "--calibration-activations", 2000, "-o", ref)
    cal = exemplar.calibrate(files["plain"], percentile=5, batch_size=512,
                             calibration_activations=2000)
    cal.save(tmp_path / "py.safetensors")
    # No timings in a calibration file: the very same bytes.
    assert ref.read_bytes() == (tmp_path / "py.safetensors").read_bytes()
    assert cal.n_activations == 2048 and len(cal.batch_percentiles) == 4
    again = exemplar.Calibration.load(ref)
    assert again.theta == cal.theta and bits_equal(again.center, cal.center)
    assert again.input_fingerprint == cal.input_fingerprint
    # From the array: the same values and fingerprint.
    arr = exemplar.calibrate(files["f32_rows"].astype(np.float16), percentile=5, batch_size=512,
                             calibration_activations=2000)
    assert arr.theta == cal.theta and bits_equal(arr.center, cal.center)
    assert arr.input_fingerprint == cal.input_fingerprint and arr.inputs == ["<array 0>"]
    # A build with that calibration (object or file) is `build -c`.
    out = tmp_path / "cli-build.safetensors"
    cli("build", "-a", files["plain"], "-c", ref, "--batch-size", 512, "-o", out)
    for c in (cal, ref, str(ref)):
        exemplar.build(files["plain"], calibration=c, batch_size=512).save(
            tmp_path / "b.safetensors", force=True
        )
        assert_same_dictionary(out, tmp_path / "b.safetensors")
    b = exemplar.Builder(calibration=cal, batch_size=512)
    for piece in chunks(files["f32_rows"]):
        if not b.add(piece):
            break
    b.finish().save(tmp_path / "s.safetensors")
    out32 = tmp_path / "cli-build32.safetensors"
    cli("build", "-a", files["f32"], "-c", ref, "--batch-size", 512, "-o", out32)
    assert_same_dictionary(out32, tmp_path / "s.safetensors", ignore=["inputs"])


@pytest.mark.parametrize("kind", ["plain", "f32", "bf16"])
def test_assign_returns_the_cli_arrays(cli, files, dict_file, demo_f16, kind, tmp_path):
    r = tmp_path / "r.npz"
    cli("assign", "-d", dict_file, "-a", files[kind], "-o", r)
    want = load_npz(r)
    d = exemplar.Dictionary.load(dict_file)
    xs = {
        "plain": [demo_f16, torch.from_numpy(demo_f16)],
        "f32": [files["f32_rows"], torch.from_numpy(files["f32_rows"])],
        "bf16": [files["bf16_rows"], files["f32_rows"].astype(ml_dtypes.bfloat16)],
    }[kind]
    for x in xs:
        ids, dist = d.assign(x)
        assert ids.dtype == np.int64 and dist.dtype == np.float32
        assert bits_equal(want["ids"], ids) and bits_equal(want["distances"], dist)
        assert bits_equal(want["within_threshold"], d.within_threshold(dist))
    # Leading axes are kept: (2, 2274, D) in, (2, 2274) out.
    ids, dist = d.assign(xs[0].reshape(2, -1, 384))
    assert ids.shape == (2, 2274) and bits_equal(want["ids"], ids.reshape(-1))
    assert d.within_threshold(dist).shape == (2, 2274)


@pytest.mark.parametrize(
    "readout,k,basis",
    [("one-hot", 1, "exemplar"), ("topk", 5, "exemplar"), ("topk-cosine", 3, "mean"),
     ("signed", 1, "exemplar"), ("cosine", 1, "mean")],
)
def test_encode_returns_the_cli_codes(cli, files, dict_file, demo_f16, readout, k, basis,
                                      tmp_path):
    c = tmp_path / "c.npy"
    cli("encode", "-d", dict_file, "-a", files["plain"], "--readout", readout, "-k", k,
        "--basis", basis, "-o", c)
    d = exemplar.Dictionary.load(dict_file)
    got = d.encode(demo_f16, readout=readout, k=k, basis=basis)
    assert got.shape == (4548, len(d))
    assert bits_equal(np.load(c), got)
    # The same values by numpy (the readout's definition), to the GEMM's rounding.
    x = demo_f16.astype(np.float32) - d.center
    w = d.exemplars if basis == "exemplar" else d.mean_directions
    if readout in ("cosine", "topk-cosine", "one-hot"):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    dense = x @ w.T
    if readout == "one-hot":
        assert (got.argmax(axis=1) == dense.argmax(axis=1)).mean() > 0.999
        assert (got.sum(axis=1) == 1).all()
    elif readout.startswith("topk"):
        top = np.sort(dense, axis=1)[:, -k:]
        np.testing.assert_allclose(np.sort(got, axis=1)[:, -k:], np.maximum(top, 0),
                                   atol=1e-4)
        assert ((got != 0).sum(axis=1) <= k).all()
    else:
        np.testing.assert_allclose(got, dense, atol=1e-4)


def test_distances_are_the_library_distances(dict_file, demo_f16):
    d = exemplar.Dictionary.load(dict_file)
    dist = d.distances(demo_f16[:300])
    ids, nearest = d.assign(demo_f16[:300])
    assert dist.shape == (300, len(d)) and dist.dtype == np.float32
    assert (dist.argmin(axis=1) == ids).mean() > 0.99
    np.testing.assert_allclose(dist.min(axis=1), nearest, atol=1e-5)
