"""Errors are typed exceptions carrying the CLI's messages."""

import numpy as np
import pytest
import torch

import exemplar
from conftest import DEMO


def cli_error(r):
    """The CLI's message: its stderr's `error: ...` line (and `caused by` lines), unprefixed."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    # Notes before the error (e.g. "no CUDA device ...; using the CPU") and hints after it
    # are not part of the message.
    first = next(i for i, l in enumerate(lines) if l.startswith("error: "))
    lines = [l for l in lines[first:] if not l.startswith("hint:")]
    return "\n".join([lines[0][len("error: "):], *lines[1:]])


def test_the_hierarchy():
    e = exemplar
    assert issubclass(e.InvalidInputError, e.ExemplarError)
    assert issubclass(e.InvalidInputError, ValueError)
    assert issubclass(e.FileFormatError, ValueError)
    assert issubclass(e.FileIOError, OSError)
    assert issubclass(e.OutputExistsError, e.FileIOError)
    assert issubclass(e.OutputExistsError, FileExistsError)
    assert issubclass(e.CudaUnavailableError, e.ExemplarError)
    assert not issubclass(e.FileIOError, ValueError)


def test_a_nonfinite_row_names_file_and_row_as_the_cli(cli, demo_f16, tmp_path):
    x = demo_f16.astype(np.float32)
    x[1234, 5] = np.nan
    p = tmp_path / "x.npy"
    np.save(p, x)
    want = cli_error(cli("build", "-a", p, "-p", 5, "-o", tmp_path / "d", ok=False))
    with pytest.raises(exemplar.InvalidInputError) as e:
        exemplar.build(p, percentile=5)
    assert str(e.value) == want == f"{p}: row 1234 holds a non-finite value (NaN or Inf)"
    assert (e.value.path, e.value.row) == (str(p), 1234)
    with pytest.raises(exemplar.InvalidInputError, match=r"^<array 0>: row 1234 holds"):
        exemplar.build(x, percentile=5)
    b = exemplar.Builder(percentile=5, batch_size=512)
    b.add(x[:1000])
    with pytest.raises(exemplar.InvalidInputError, match=r"^add\(\) call 1: row 234 holds"):
        b.add(x[1000:])
    # The builder is still usable: the bad call added nothing.
    assert b.rows == 1000
    assert b.add(x[1235:])
    assert len(b.finish()) > 0
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    with pytest.raises(exemplar.InvalidInputError, match=r"^x: row 1234 holds"):
        d.assign(x)


def test_a_row_equal_to_the_center_is_named(cli, demo_f16, tmp_path):
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    x = demo_f16.astype(np.float32)[:100].copy()
    x[42] = d.center
    with pytest.raises(exemplar.InvalidInputError) as e:
        d.assign(x)
    assert str(e.value) == (
        "x: row 42 has zero norm after centering (it equals the center), so it has no direction"
    )
    for f in (d.encode, d.distances):
        with pytest.raises(exemplar.InvalidInputError, match=r"^x: row 42 has zero norm"):
            f(x)
    # The CLI says the same of a file.
    p, dp = tmp_path / "x.npy", tmp_path / "d.safetensors"
    np.save(p, x)
    d.save(dp)
    want = cli_error(cli("assign", "-d", dp, "-a", p, "-o", tmp_path / "r.npz", ok=False))
    assert want == f"{p}: row 42 has zero norm after centering (it equals the center), so it has no direction"


def test_bad_parameters_have_the_cli_messages(cli, tmp_path):
    want = cli_error(cli("build", "-a", DEMO, "-p", 150, "-o", tmp_path / "d", ok=False))
    with pytest.raises(exemplar.InvalidInputError) as e:
        exemplar.build(DEMO, percentile=150)
    assert str(e.value) == want == "invalid percentile: must lie strictly between 0 and 100, got 150"
    assert e.value.name == "percentile"
    with pytest.raises(exemplar.InvalidInputError, match="^invalid percentile: must lie"):
        exemplar.Builder(percentile=0)
    want = cli_error(cli("build", "-a", DEMO, "-p", 5, "--saturation-window", 0,
                         "-o", tmp_path / "d", ok=False))
    with pytest.raises(exemplar.InvalidInputError) as e:
        exemplar.Builder(percentile=5, saturation_window=0)
    assert str(e.value) == want
    with pytest.raises(exemplar.InvalidInputError, match="percentile= .* or calibration="):
        exemplar.build(DEMO)
    with pytest.raises(exemplar.InvalidInputError, match="not both"):
        exemplar.build(DEMO, percentile=5, calibration=exemplar.calibrate(DEMO, percentile=5))
    with pytest.raises(exemplar.InvalidInputError, match="invalid readout: `bogus`"):
        exemplar.build(DEMO, percentile=5, batch_size=512).encode(np.zeros((1, 384), np.float32) + 1, readout="bogus")
    with pytest.raises(exemplar.InvalidInputError, match="^invalid device: `gpu` is not cpu, cuda or auto"):
        exemplar.build(DEMO, percentile=5, device="gpu")


def test_files_missing_corrupt_or_existing(cli, tmp_path):
    missing = tmp_path / "nope.npy"
    want = cli_error(cli("build", "-a", missing, "-p", 5, "-o", tmp_path / "d", ok=False))
    with pytest.raises(exemplar.FileIOError) as e:
        exemplar.build(missing, percentile=5)
    assert isinstance(e.value, OSError) and e.value.path == str(missing)
    # The CLI prints the OS error as a cause line too; the exception's message is its first line.
    assert str(e.value) == want.splitlines()[0]
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    want = cli_error(cli("build", "-a", bad, "-p", 5, "-o", tmp_path / "d", ok=False))
    with pytest.raises(exemplar.FileFormatError) as e:
        exemplar.build(bad, percentile=5)
    assert str(e.value) == want
    with pytest.raises(exemplar.FileFormatError):
        exemplar.Dictionary.load(DEMO)  # activations, not a dictionary
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    out = tmp_path / "d.safetensors"
    d.save(out)
    with pytest.raises(exemplar.OutputExistsError) as e:
        d.save(out)
    assert isinstance(e.value, FileExistsError)
    assert str(e.value) == f"{out} already exists; it is not overwritten"
    d.save(out, force=True)


def test_shapes_and_dtypes(demo_f16):
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    with pytest.raises(exemplar.InvalidInputError) as e:
        d.assign(demo_f16[:, :100])
    assert str(e.value) == "dimension mismatch: x has D = 100, expected D = 384"
    with pytest.raises(exemplar.InvalidInputError, match="dtype float64; exemplar reads float32"):
        d.assign(demo_f16.astype(np.float64))
    with pytest.raises(exemplar.InvalidInputError, match="dtype torch.int64"):
        d.assign(torch.zeros((2, 384), dtype=torch.int64))
    with pytest.raises(exemplar.InvalidInputError, match="scalar"):
        d.assign(np.float32(1.0))
    with pytest.raises(exemplar.InvalidInputError, match="mixes activation files and arrays"):
        exemplar.build([DEMO, demo_f16], percentile=5)
    b = exemplar.Builder(percentile=5)
    b.add(demo_f16[:10])
    with pytest.raises(exemplar.InvalidInputError, match="add\\(\\) call 1 has D = 3, expected D = 384"):
        b.add(np.ones((4, 3), np.float32))
    with pytest.raises(exemplar.InvalidInputError, match="no rows to build from"):
        exemplar.Builder(percentile=5).finish()


def test_cuda_is_refused_clearly_without_a_device():
    ok, why = exemplar.cuda_status()
    if ok:
        pytest.skip(f"a CUDA device is present ({why})")
    assert why
    with pytest.raises(exemplar.CudaUnavailableError, match="^CUDA is not available"):
        exemplar.build(DEMO, percentile=5, device="cuda")
    # "auto" falls back to the CPU, as the CLI does.
    d = exemplar.build(DEMO, percentile=5, batch_size=512, device="auto")
    assert d.metadata["backend"] == "cpu"
