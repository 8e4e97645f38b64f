"""CUDA tensors through DLPack, on a machine without a GPU: a DLPack producer that claims CUDA
memory (built with ctypes; its address is never read) takes the CUDA path, whose host-side
checks run here (stream, dtype, contiguity), and which then says clearly that no device is
usable, or that this build has no CUDA. On a GPU the path itself runs (see docs/gpu.md)."""

import ctypes

import numpy as np
import pytest

import exemplar
from conftest import DEMO


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeCudaTensor:
    """Claims `shape` of (code, bits) values on cuda:0 at an address nobody may read."""

    NAME = b"dltensor"

    def __init__(self, shape, code=2, bits=32, strides=None):
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._strides = (ctypes.c_int64 * len(shape))(*strides) if strides else None
        self._mt = DLManagedTensor()
        t = self._mt.dl_tensor
        t.data = 0x7F0000000000
        t.device = DLDevice(2, 0)
        t.ndim = len(shape)
        t.dtype = DLDataType(code, bits, 1)
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        if self._strides is not None:
            t.strides = ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64))
        self.streams = []

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return _capsule_new(ctypes.addressof(self._mt), self.NAME, None)


@pytest.fixture(scope="module")
def d():
    if exemplar.cuda_status()[0]:
        pytest.skip("a CUDA device is present: the fake tensor's address must not reach it")
    return exemplar.build(DEMO, percentile=5, batch_size=512)


def test_a_cuda_tensor_is_read_in_place_or_refused_clearly(d):
    x = FakeCudaTensor((2, 3, 384))
    with pytest.raises(exemplar.CudaUnavailableError) as e:
        d.assign(x)
    if exemplar.CUDA_BUILD:
        # The capsule was taken for the legacy default stream, and parsed; then no device.
        assert x.streams == [1]
        assert str(e.value) == "CUDA is not available: the CUDA driver (libcuda.so) cannot be loaded"
    else:
        assert x.streams == []
        assert "has no CUDA support" in str(e.value) and "x.cpu()" in str(e.value)


@pytest.mark.skipif(not exemplar.CUDA_BUILD, reason="a build without CUDA refuses before parsing")
def test_the_dlpack_view_is_checked_before_any_device_work(d):
    with pytest.raises(exemplar.InvalidInputError, match="float32 or bfloat16"):
        d.assign(FakeCudaTensor((4, 384), code=2, bits=16))  # float16
    with pytest.raises(exemplar.InvalidInputError, match="not contiguous"):
        d.assign(FakeCudaTensor((4, 384), strides=(1, 4)))
    with pytest.raises(exemplar.InvalidInputError, match="D = 100, expected D = 384"):
        d.assign(FakeCudaTensor((4, 100)))
    # bfloat16 and explicit row-major strides pass the checks (then: no device here).
    with pytest.raises(exemplar.CudaUnavailableError):
        d.assign(FakeCudaTensor((4, 384), code=4, bits=16, strides=(384, 1)))
    # Only assign reads CUDA tensors in place; the others say so.
    for f in (d.encode, d.distances):
        with pytest.raises(exemplar.InvalidInputError, match="only assign reads CUDA tensors"):
            f(FakeCudaTensor((4, 384)))
    with pytest.raises(exemplar.InvalidInputError, match="builds read host memory"):
        exemplar.build(FakeCudaTensor((4, 384)), percentile=5)
    b = exemplar.Builder(percentile=5)
    with pytest.raises(exemplar.InvalidInputError, match="the builder reads host memory"):
        b.add(FakeCudaTensor((4, 384)))
    assert np.isfinite(d.theta)


def test_a_cuda_tensor_is_assigned_in_place_like_the_host_rows(demo_f16):
    """On a GPU (unrun so far): ids and distances of a CUDA tensor read in place equal those of
    the same rows on the host, bit for bit, in f32 and bf16."""
    torch = pytest.importorskip("torch")
    if not (exemplar.CUDA_BUILD and exemplar.cuda_status()[0] and torch.cuda.is_available()):
        pytest.skip("needs a CUDA device, CUDA torch and a build with CUDA")
    d = exemplar.build(DEMO, percentile=5, batch_size=512)
    x = torch.from_numpy(demo_f16.astype(np.float32))
    for dtype in (torch.float32, torch.bfloat16):
        xc = x.to(dtype).cuda().reshape(2, -1, 384)
        ids, dist = d.assign(xc)
        want_ids, want_dist = d.assign(xc.cpu())
        assert ids.shape == (2, 2274)
        assert (ids == want_ids).all()
        assert dist.tobytes() == want_dist.tobytes()
    with pytest.raises(exemplar.InvalidInputError, match="not contiguous"):
        d.assign(x.cuda().t())
