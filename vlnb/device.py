"""One place that decides where vlnb computes and in which precision.

- :func:`resolve_device` turns a user's ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
  ``"mps"``, ``"meta"``...) into a concrete device string. ``"auto"`` is CUDA when a GPU is available, else
  the CPU; every chapter and every ``vlnb`` function that places models defaults to ``"auto"``, so a GPU is
  never left idle because a default said ``"cpu"``. Asking for a device that is not there is an error that
  says so (not a crash deep inside a forward pass).
- :func:`autocast_dtype` is the mixed-precision choice for a float32 model on that device: bf16 only where
  the GPU computes it natively (compute capability >= 8: A100, L4, H100...), fp16 on older GPUs (a T4 is
  sm75: bf16 there is emulated, several times slower, and skips cuDNN's kernels), none on the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

AUTO = "auto"
#: device types a parameter may name (torch's own names; "meta" builds shapes only, for tests).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "meta")


def check_device_spec(spec: str) -> str:
    """``spec`` if it is ``"auto"`` or a device string torch understands of a known type; else ValueError.

    Only the syntax is checked (parameters are validated before anything runs); whether the device exists
    is checked by :func:`resolve_device`.
    """
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:1', got {spec!r}")
    s = spec.strip().lower()
    if s == AUTO:
        return s
    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {spec!r} is not a device name: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device {spec!r}: type {dev.type!r} is not supported; use one of {('auto', *DEVICE_TYPES)}")
    return s


def resolve_device(spec: str | torch.device | None = AUTO) -> str:
    """The concrete device for ``spec``: ``"auto"`` (or None) -> ``"cuda"`` when available, else ``"cpu"``.

    An explicit device must exist: ``"cuda"`` without a GPU, ``"cuda:3"`` on a one-GPU machine or ``"mps"``
    off Apple silicon raise a ValueError naming what is missing.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = check_device_spec(AUTO if spec is None else spec)
    if s == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(s)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was requested but CUDA is not available here "
                             "(torch.cuda.is_available() is False); use device='auto' or 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {spec!r} was requested but this machine has {n} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {spec!r} was requested but MPS is not available here")
    elif dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise ValueError(f"device {spec!r} was requested but no XPU is available here")
    return s


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for float32 models on ``device``: bf16 on CUDA compute capability >= 8, fp16 on older
    CUDA GPUs (T4 = sm75), None (float32, no autocast) on the CPU, MPS and anything else."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda":
        return None
    major, _minor = torch.cuda.get_device_capability(dev)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device: str | torch.device, enabled: bool = True):
    """``torch.autocast`` with :func:`autocast_dtype` on ``device``; a no-op context where that is None."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    dtype = autocast_dtype(dev) if enabled else None
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(device: str | torch.device) -> str:
    """``"bf16-autocast"``, ``"fp16-autocast"`` or ``"float32"``: the compute precision on ``device``."""
    dtype = autocast_dtype(device)
    return {torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}.get(dtype, "float32")


__all__ = ["AUTO", "DEVICE_TYPES", "autocast", "autocast_dtype", "check_device_spec", "precision_name",
           "resolve_device"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def side_by_side_jobs(n_runs: int, device: str | torch.device | None = AUTO, jobs: int | None = None) -> int:
    """Processes that run ``n_runs`` independent trainings side by side: one per core on a CPU (each with one
    thread: the book's models are small, so two one-thread runs finish sooner than one two-thread run), capped by
    ``jobs``; one on a GPU or with ``jobs=1``."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if torch.device(resolve_device(device)).type != "cpu":
        return 1
    cores = available_cores()
    return max(1, min(n_runs, cores if jobs is None else jobs, cores))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads and restore the previous number after it (None: no change)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def start_worker(threads: int = 1) -> None:
    """Start-up of a process that trains or evaluates beside others (:func:`side_by_side_jobs`): ``threads``
    torch threads, and no progress bars (nobody watches a worker's; ``TQDM_DISABLE`` unless already set)."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")


@dataclass(frozen=True)
class SideJob:
    """An independent one-thread run that a pool of side-by-side trainings may take on a core that would
    otherwise wait (:func:`vlnb.zoo.train_side_by_side`; chapter 2: the attention variants' runs beside
    scratch-world). ``fn(*args)`` runs in the pool's process (so both must pickle); ``done(result)`` runs in
    the caller's process with what it returned. ``cost``: its rough one-thread seconds, for the order in which
    the pool starts its work (the longest first)."""

    name: str
    cost: float
    fn: Callable
    args: tuple = ()
    done: Callable = field(default=lambda result: None, compare=False)


def run_side_job(fn: Callable, args: tuple, threads: int = 1):
    """A :class:`SideJob`'s body in a pool's process: :func:`start_worker` with ``threads``, then ``fn(*args)``."""
    start_worker(threads)
    return fn(*args)
