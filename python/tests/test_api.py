"""The Python surface: arrays out, metadata, examples, progress, the GIL, the Builder's life."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import exemplar
from conftest import DEMO, assert_same_dictionary, bits_equal


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    path = tmp_path_factory.mktemp("d") / "d.safetensors"
    d.save(path)
    return d, path


def test_arrays_and_metadata_are_the_file_s(built):
    d, path = built
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in ("center", "exemplars", "mean_directions",
                                          "member_counts", "coherence")}
    info = json.loads(meta["exemplar"])
    assert d.metadata == info
    assert (len(d), d.dim, d.theta) == (info["partitions"], 384, info["theta"])
    assert bits_equal(d.center, t["center"]) and bits_equal(d.exemplars, t["exemplars"])
    assert bits_equal(d.mean_directions, t["mean_directions"])
    assert bits_equal(d.member_counts, t["member_counts"])
    assert d.coherence.dtype == np.float64
    assert bits_equal(d.coherence.astype(np.float32), t["coherence"])
    assert d.member_counts.sum() == info["activations_streamed"]
    assert "partitions" in repr(d)
    # load → save gives the same file (the timings aside: serde_json reads an f64 back to
    # within one ulp unless its float_roundtrip feature is on).
    again = exemplar.load(path)
    out = path.with_name("again.safetensors")
    again.save(out)
    assert_same_dictionary(path, out)


def test_examples_hold_the_text_of_the_sidecar(built):
    d, _ = built
    k = int(d.member_counts.argmax())
    close = d.examples(k)
    assert [e["distance"] for e in close] == sorted(e["distance"] for e in close)
    assert close[0]["distance"] == 0.0  # the exemplar itself
    assert all("[[" in e["context"] and e["doc_id"] is not None for e in close)
    far = d.examples(k, which="farthest", window=2)
    assert far[0]["distance"] >= far[-1]["distance"]
    with pytest.raises(exemplar.InvalidInputError, match="does not exist"):
        d.examples(len(d))


def test_within_threshold_is_distance_at_most_theta(built):
    d, _ = built
    t = d.theta
    dist = np.array([[0.0, t], [np.nextafter(t, 3), 2.0]], dtype=np.float64)
    got = d.within_threshold(dist)
    assert got.dtype == np.bool_ and got.shape == (2, 2)
    # As the library: the f32 distance compared with θ in f64.
    assert got.tolist() == [[True, np.float32(t) <= t], [np.float32(np.nextafter(t, 3)) <= t, False]]
    with pytest.raises(exemplar.InvalidInputError):
        d.within_threshold(np.array([1, 2]))


def test_progress_is_reported_and_a_raising_callback_stops_the_build(demo_f16):
    seen = []
    exemplar.build(demo_f16, percentile=5, batch_size=512,
                   progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (512, 4548) and seen[-1] == (4548, 4548)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done >= 1024:
            raise Stop(done)

    with pytest.raises(Stop):
        exemplar.build(DEMO, percentile=5, batch_size=512, progress=stop)
    with pytest.raises(Stop):
        exemplar.calibrate(demo_f16, percentile=5, batch_size=512, progress=stop)
    calls = []
    b = exemplar.Builder(percentile=5, batch_size=512, calibration_activations=1024,
                         progress=lambda done, total: calls.append((done, total)))
    b.add(demo_f16)
    b.finish()
    assert calls and calls[0] == (512, None) and calls[-1][0] == 4548


def every_row_a_new_exemplar(n, dim=384, seed=0):
    """Rows whose build costs about n²·dim/2 multiply-adds on any machine: the 256 calibration
    rows are 32 directions repeated 8 times with a little noise (so the 1st percentile of their
    pairwise distances, θ, is tiny), and the n rows after them are independent Gaussians, each
    farther than θ from every earlier one, so each becomes an exemplar. (A build on repeated
    real rows is over in well under a second on a fast machine: it cannot show the GIL or
    Ctrl-C at work.)"""
    rng = np.random.default_rng(seed)
    calibration = np.repeat(rng.normal(size=(32, dim)), 8, axis=0)
    calibration += rng.normal(0, 1e-2, calibration.shape)
    return np.concatenate([calibration, rng.normal(size=(n, dim))]).astype(np.float32)


def test_long_work_releases_the_gil(demo_f16):
    """A Python thread keeps running while a build runs in Rust: the largest pause between
    its ticks stays far below the build's duration."""
    x = every_row_a_new_exemplar(40_000)
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.002)

    t = threading.Thread(target=tick)
    t.start()
    try:
        t0 = time.perf_counter()
        d = exemplar.build(x, percentile=1, batch_size=256, calibration_activations=256)
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    inside = [v for v in ticks if t0 <= v <= t1]
    gaps = np.diff([t0, *inside, t1])
    assert len(d) > 30_000, len(d)
    assert t1 - t0 > 0.5, "the build is too short to tell"
    assert gaps.max() < 0.5 * (t1 - t0), (gaps.max(), t1 - t0)


def test_the_builder_s_life(demo_f16):
    b = exemplar.Builder(percentile=5, batch_size=512, calibration_activations=512)
    assert b.dim is None and b.wants_more and "running" in repr(b)
    rounds = 0
    for piece in np.array_split(demo_f16, 40):
        rounds += 1
        if not b.add(piece):
            break
    assert b.batches >= 2 and b.dim == 384
    d = b.finish()
    assert len(d) > 0 and d.metadata["activations_streamed"] <= 4548
    with pytest.raises(exemplar.InvalidInputError, match="finish\\(\\) was already called"):
        b.finish()
    with pytest.raises(exemplar.InvalidInputError, match="finish\\(\\) was already called"):
        b.add(demo_f16[:1])
    # Dropping a running builder ends its thread quietly.
    b = exemplar.Builder(percentile=5, batch_size=512)
    b.add(demo_f16[:1000])
    del b


def test_a_saturated_builder_ignores_later_rows(demo_f16):
    """Saturation (window 1) stops the stream as the CLI stops reading: add() says False and
    the rows added afterwards are not clustered."""
    x = np.concatenate([demo_f16[:256]] * 20)
    b = exemplar.Builder(percentile=5, batch_size=256, calibration_activations=256)
    wanted = [b.add(piece) for piece in np.array_split(x, 20)]
    assert False in wanted
    first_false = wanted.index(False)
    assert not any(wanted[first_false:])
    d = b.finish()
    assert d.metadata["saturated"] is True
    assert d.metadata["activations_streamed"] == 256 * (first_false + 1)


def test_ctrl_c_stops_a_long_build(tmp_path):
    """SIGINT during a build (in Rust, without the GIL) raises KeyboardInterrupt between two
    batches, promptly."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "long.py"
    script.write_text(
        "import signal, sys, time, numpy as np, exemplar\n"
        # A parent started in the background without job control (`cmd &` in a script) passes
        # SIGINT on as ignored, and Python then installs no handler: restore it.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_api import every_row_a_new_exemplar\n"
        # About a minute on one core of this project's 2-core VM; SIGINT comes 0.5 s in.
        "x = every_row_a_new_exemplar(150_000)\n"
        "print('start', flush=True)\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    exemplar.build(x, percentile=1, batch_size=256, saturation_window=None,\n"
        "                   calibration_activations=256)\n"
        "except KeyboardInterrupt:\n"
        "    print(f'interrupted after {time.perf_counter() - t:.2f}s', flush=True)\n"
        "    sys.exit(3)\n"
        "print('finished', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "start"
        time.sleep(0.5)
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 3, out
    assert out.startswith("interrupted after"), out
    assert time.perf_counter() - t0 < 10
