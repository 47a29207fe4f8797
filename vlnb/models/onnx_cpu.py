"""ONNX Runtime copies of frozen inference networks, for the CPU.

On a CPU, PyTorch runs EfficientNet-Lite0's depthwise convolutions far below what the cores can do: the
BatchNorm-folded channels-last tower took 21-29 ms per 224x224 image on one thread here, the same graph in
ONNX Runtime 6.6-7.0 ms (``benchmarks/towers_speed.py``), with the same features up to float rounding (about
2e-5 of values up to 6, checked in ``tests/test_onnx_cpu.py``). The offline book encodes thousands of images
with that tower (chapters 3-5), so it uses such a copy where one may stand in
(:meth:`vlnb.models.towers.TowersDualEncoder.feature_map`).

:func:`onnx_copy` exports a module in memory with ``torch.onnx.export`` (a few tenths of a second for the
tower) and opens an :class:`OrtFunction` on the bytes: no file is written or read, so nothing outside the
process can stand in for the graph. The graph is data, not code: ONNX Runtime runs its standard operators; no
custom-operator library is ever registered. ``onnxruntime`` and ``onnx`` come with ``vlnb[towers]``; where
either is missing, or ``VLNB_CPU_BACKEND=torch`` is set, :func:`onnx_copy` returns None and the caller keeps
its PyTorch path.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from torch import nn

#: ``VLNB_CPU_BACKEND``: "onnxruntime" (default, where installed) or "torch" (the PyTorch path everywhere)
BACKEND_ENV = "VLNB_CPU_BACKEND"
BACKENDS = ("onnxruntime", "torch")


def cpu_backend() -> str:
    """The CPU inference backend asked for (``VLNB_CPU_BACKEND``; unset: "onnxruntime"); a wrong value is a
    ``ValueError`` naming the allowed ones."""
    value = os.environ.get(BACKEND_ENV, "onnxruntime").strip().lower() or "onnxruntime"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: must be one of {', '.join(BACKENDS)}")
    return value


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's package can be imported."""
    try:
        import onnx  # noqa: F401  # lazy: optional (vlnb[towers]); torch.onnx.export needs it
        import onnxruntime  # noqa: F401  # lazy: optional (vlnb[towers])
    except ImportError:
        return False
    return True


class OrtFunction:
    """One input tensor -> one output tensor through an ONNX Runtime session on the CPU (``threads`` intra-op
    threads, no spinning: beside other processes an idle thread must not hold a core)."""

    def __init__(self, model_bytes: bytes, threads: int = 1):
        import onnxruntime as ort  # lazy: optional (vlnb[towers])

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its graph-optimisation notes are not for the reader
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out)


def onnx_copy(module: nn.Module, example: torch.Tensor, threads: int | None = None) -> OrtFunction | None:
    """An :class:`OrtFunction` computing ``module(x)`` for inputs shaped like ``example`` (any batch size), or
    None where ONNX Runtime is not installed or not wanted (:func:`cpu_backend`). ``module`` must be in eval
    mode and hold no state that changes between calls; ``threads`` defaults to ``torch.get_num_threads()``."""
    if cpu_backend() != "onnxruntime" or not onnxruntime_available():
        return None
    if module.training:
        raise ValueError("onnx_copy needs the module in eval mode")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of torch.export's (which needs onnxscript); its
        # notes on constant folding of the static padding are about graph size, not results
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example[:1].detach().to("cpu", torch.float32),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return OrtFunction(buf.getvalue(), torch.get_num_threads() if threads is None else threads)
