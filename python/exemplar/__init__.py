"""Exemplar Partitioning (EP) from Python: the ``exemplar`` Rust crate as an extension module.

Every computation runs in the crate itself (the same code as the ``exemplar`` CLI), so a
dictionary built here is the CLI's dictionary bit for bit, and ``assign``/``encode`` return the
CLI's arrays. See docs/python.md.

    import exemplar
    d = exemplar.build("acts.safetensors", percentile=1)        # or arrays / torch tensors
    ids, dist = d.assign(x)                                      # nearest exemplar, distance
    inside = d.within_threshold(dist)                            # the OOD signal

    b = exemplar.Builder(percentile=1)                           # from your own model loop
    for batch in activations():
        if not b.add(batch):                                     # False once saturated
            break
    d = b.finish()
"""

from ._native import (
    CRATE_VERSION,
    CUDA_BUILD,
    Builder,
    Calibration,
    CudaError,
    CudaUnavailableError,
    Dictionary,
    ExemplarError,
    FileFormatError,
    FileIOError,
    InvalidInputError,
    OutputExistsError,
    build,
    calibrate,
    cuda_status,
)

__version__ = CRATE_VERSION

__all__ = [
    "Builder",
    "Calibration",
    "CudaError",
    "CudaUnavailableError",
    "CUDA_BUILD",
    "Dictionary",
    "ExemplarError",
    "FileFormatError",
    "FileIOError",
    "InvalidInputError",
    "OutputExistsError",
    "build",
    "calibrate",
    "cuda_status",
    "load",
]


def load(path):
    """Loads a dictionary file: ``Dictionary.load(path)``."""
    return Dictionary.load(path)
