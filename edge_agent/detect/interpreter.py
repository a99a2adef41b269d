"""Load a TFLite model with whichever interpreter package is installed, and describe its tensors."""

from __future__ import annotations

import ctypes
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError, RuntimeMissingError
from edge_agent.files import open_regular

log = logging.getLogger(__name__)

# Preference order: LiteRT is maintained and works with numpy 2; tflite-runtime is the legacy
# wheel many Pi images still carry; full TensorFlow is a last resort.
RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
INSTALL_HINT = (
    "pip install ai-edge-litert  (or: pip install 'edge-agent[legacy]' for tflite-runtime)"
)


class Interpreter(Protocol):
    """The subset of the TFLite Interpreter API edge-agent uses."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: shape, dtype, quantization (scale 0 = not quantized)."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True when values are integers standing for (q - zero_point) * scale."""
        return self.scale != 0.0 and self.dtype.kind in "iu"

    def describe(self) -> str:
        """Human-readable summary used in logs and errors."""
        shape = "x".join(str(d) for d in self.shape)
        quant = f" q=({self.scale:.6g},{self.zero_point})" if self.quantized else ""
        return f"{self.name} [{shape}] {self.dtype.name}{quant}"


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def interpreter_class() -> tuple[Any, str]:
    """Return (Interpreter class, module name) of the first installed runtime."""
    for name in RUNTIME_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Interpreter, name
    raise RuntimeMissingError(f"no TFLite interpreter is installed; {INSTALL_HINT}")


def check_tflite_file(path: Path) -> None:
    """Raise ModelError unless path is a readable TFLite flatbuffer."""
    try:
        with open_regular(path) as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise ModelError("model file not found", where=str(path)) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror}", where=str(path)) from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(
            "not a TFLite model (the file lacks the 'TFL3' flatbuffer identifier)", where=str(path)
        )


@dataclass
class LoadedModel:
    """An allocated interpreter plus its tensor specs and op names."""

    interpreter: Interpreter
    runtime: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: list[dict[str, Any]]
    tensors: dict[int, TensorSpec]


EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_HINT = (
    "install the Edge TPU runtime (package libedgetpu1-std from Coral's apt repository), "
    "connect the accelerator, and use a model compiled with edgetpu_compiler"
)


def load_delegate(runtime: str, delegate: str) -> Any:
    """Load a hardware delegate through the runtime's delegate API; ModelError if unavailable."""
    module = importlib.import_module(runtime)
    loader = getattr(module, "load_delegate", None)
    if loader is None:  # full TensorFlow keeps it under tf.lite.experimental
        loader = getattr(getattr(module, "experimental", None), "load_delegate", None)
    if loader is None:
        raise ModelError(f"{runtime} cannot load delegates", where="model.delegate")
    try:
        # Probe first: a failed load_delegate() leaves a half-built object that complains
        # on garbage collection.
        ctypes.CDLL(EDGETPU_LIBRARY)
        return loader(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelError(
            f"cannot load the {delegate} delegate ({EDGETPU_LIBRARY}: {exc}); {EDGETPU_HINT}",
            where="model.delegate",
        ) from None


def reference_resolver(runtime: str) -> Any:
    """The runtime's OpResolverType.BUILTIN_REF: its reference kernels, no XNNPACK. Their
    integer arithmetic is the same on every architecture and in every TFLite runtime, unlike
    the optimized kernels (XNNPACK requantizes uint8 one way on x86 and another on ARM;
    tflite-runtime 2.14 never hands int8 ops to XNNPACK while LiteRT does)."""
    module = importlib.import_module(runtime)
    kinds = getattr(module, "OpResolverType", None) or getattr(
        getattr(module, "experimental", None), "OpResolverType", None
    )
    if kinds is None or not hasattr(kinds, "BUILTIN_REF"):
        raise ModelError(f"{runtime} has no reference kernels", where="model.exact")
    return kinds.BUILTIN_REF


def load_model(
    path: Path, threads: int, delegate: str = "none", exact: bool = False
) -> LoadedModel:
    """Check, load and allocate a model (with reference kernels when `exact`); every failure
    is a ModelError naming the file."""
    check_tflite_file(path)
    cls, runtime = interpreter_class()
    extra: dict[str, Any] = {}
    if delegate != "none":
        extra["experimental_delegates"] = [load_delegate(runtime, delegate)]
    if exact:
        extra["experimental_op_resolver_type"] = reference_resolver(runtime)
    try:
        interp = cls(model_path=str(path), num_threads=threads, **extra)
        interp.allocate_tensors()
    except (ValueError, RuntimeError, SystemError) as exc:
        hint = ""
        if "NumPy" in str(exc) or isinstance(exc, SystemError):
            hint = " (tflite-runtime needs numpy<2; install ai-edge-litert instead)"
        raise ModelError(
            f"the interpreter rejected the model: {exc}{hint}", where=str(path)
        ) from None
    ops = _ops(interp)
    inputs = [_spec(d) for d in interp.get_input_details()]
    outputs = [_spec(d) for d in interp.get_output_details()]
    kernels = "reference kernels" if exact else f"{threads} threads"
    log.info("loaded %s with %s (%s)", path, runtime, kernels)
    return LoadedModel(interp, runtime, inputs, outputs, ops, _tensor_specs(interp))


def _ops(interp: Any) -> list[dict[str, Any]]:
    """Op list through the interpreter's private API (absent on some runtimes: then empty)."""
    getter = getattr(interp, "_get_ops_details", None)
    if getter is None:
        return []
    try:
        return list(getter())
    except (ValueError, RuntimeError):
        return []


def _tensor_specs(interp: Any) -> dict[int, TensorSpec]:
    try:
        return {int(d["index"]): _spec(d) for d in interp.get_tensor_details()}
    except (ValueError, RuntimeError, KeyError):
        return {}
