"""Type stubs of the extension module (docs/python.md has the guide)."""

from os import PathLike
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

Rows = Any  # numpy float32/float16/bfloat16 array or torch tensor of shape (..., D)
PathArg = Union[str, PathLike[str]]
Inputs = Union[PathArg, Rows, Sequence[Union[PathArg, Rows]]]
Progress = Optional[Callable[[int, Optional[int]], None]]

CUDA_BUILD: bool
CRATE_VERSION: str

class ExemplarError(Exception): ...
class InvalidInputError(ExemplarError, ValueError): ...
class FileFormatError(ExemplarError, ValueError): ...
class FileIOError(ExemplarError, OSError): ...
class OutputExistsError(FileIOError, FileExistsError): ...
class CudaUnavailableError(ExemplarError): ...
class CudaError(ExemplarError): ...

class Dictionary:
    @staticmethod
    def load(path: PathArg) -> Dictionary: ...
    def save(self, path: PathArg, *, force: bool = False) -> None: ...
    def assign(
        self, x: Rows, *, device: str = "cpu", skip_nonfinite: bool = False
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def distances(self, x: Rows, *, skip_nonfinite: bool = False) -> npt.NDArray[np.float32]: ...
    def within_threshold(self, distances: npt.ArrayLike) -> npt.NDArray[np.bool_]: ...
    def encode(
        self,
        x: Rows,
        *,
        readout: str = "one-hot",
        k: int = 1,
        basis: str = "exemplar",
        skip_nonfinite: bool = False,
    ) -> npt.NDArray[np.float32]: ...
    def examples(
        self, k: int, *, which: str = "closest", window: int = 8
    ) -> list[dict[str, Any]]: ...
    @property
    def dim(self) -> int: ...
    @property
    def theta(self) -> float: ...
    @property
    def center(self) -> npt.NDArray[np.float32]: ...
    @property
    def exemplars(self) -> npt.NDArray[np.float32]: ...
    @property
    def mean_directions(self) -> npt.NDArray[np.float32]: ...
    @property
    def member_counts(self) -> npt.NDArray[np.int64]: ...
    @property
    def coherence(self) -> npt.NDArray[np.float64]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...

class Calibration:
    @staticmethod
    def load(path: PathArg) -> Calibration: ...
    def save(self, path: PathArg, *, force: bool = False) -> None: ...
    @property
    def center(self) -> npt.NDArray[np.float32]: ...
    @property
    def theta(self) -> float: ...
    @property
    def percentile(self) -> float: ...
    @property
    def percentile_method(self) -> str: ...
    @property
    def n_activations(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def batch_percentiles(self) -> npt.NDArray[np.float64]: ...
    @property
    def dim(self) -> int: ...
    @property
    def inputs(self) -> list[str]: ...
    @property
    def input_fingerprint(self) -> Optional[str]: ...

def calibrate(
    inputs: Inputs,
    *,
    percentile: float,
    batch_size: int = 16384,
    calibration_activations: int = 200000,
    percentile_method: str = "linear",
    standardize: bool = False,
    tensor: Optional[str] = None,
    skip_nonfinite: bool = False,
    device: str = "auto",
    progress: Progress = None,
) -> Calibration: ...
def build(
    inputs: Inputs,
    *,
    percentile: Optional[float] = None,
    calibration: Union[None, Calibration, PathArg] = None,
    calibration_activations: int = 200000,
    percentile_method: str = "linear",
    standardize: bool = False,
    batch_size: int = 16384,
    batch_documents: Optional[int] = None,
    saturation_window: Optional[int] = 1,
    max_activations: Optional[int] = None,
    max_tokens: Optional[int] = None,
    strict_order: bool = False,
    seed: int = 0,
    examples: int = 10,
    reservoir: int = 30,
    min_members: int = 1,
    merge_close: bool = False,
    merge_threshold: Optional[float] = None,
    model_name: Optional[str] = None,
    hook: Optional[str] = None,
    tensor: Optional[str] = None,
    skip_nonfinite: bool = False,
    device: str = "auto",
    return_assignments: bool = False,
    progress: Progress = None,
) -> Any: ...  # Dictionary, or (Dictionary, int64 assignments) with return_assignments

class Builder:
    def __init__(
        self,
        *,
        percentile: Optional[float] = None,
        calibration: Union[None, Calibration, PathArg] = None,
        calibration_activations: int = 200000,
        percentile_method: str = "linear",
        standardize: bool = False,
        batch_size: int = 16384,
        saturation_window: Optional[int] = 1,
        max_activations: Optional[int] = None,
        max_tokens: Optional[int] = None,
        strict_order: bool = False,
        seed: int = 0,
        examples: int = 10,
        reservoir: int = 30,
        min_members: int = 1,
        merge_close: bool = False,
        merge_threshold: Optional[float] = None,
        model_name: Optional[str] = None,
        hook: Optional[str] = None,
        skip_nonfinite: bool = False,
        device: str = "auto",
        progress: Progress = None,
    ) -> None: ...
    def add(self, x: Rows) -> bool: ...
    def finish(self) -> Dictionary: ...
    @property
    def wants_more(self) -> bool: ...
    @property
    def rows(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def dim(self) -> Optional[int]: ...

def cuda_status() -> tuple[bool, str]: ...
