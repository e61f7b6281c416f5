"""Where the network runs and in which arithmetic: the device (CPU or a CUDA GPU) and the autocast dtype.

Device and precision selection live here alone, so inference does not import training.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from n2vpipe.errors import UnusableEnvironment


class GpuUnusable(UnusableEnvironment):
    """A GPU was asked for (``device: cuda``) or given to the job (``CUDA_VISIBLE_DEVICES``), but torch
    cannot use it; the message says why."""


def gpus_given_to_job(environ: Mapping[str, str]) -> str | None:
    """The GPUs the scheduler gave this job (SLURM sets ``CUDA_VISIBLE_DEVICES`` for ``--gpus``),
    or ``None`` when it gave none."""
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible if visible and visible not in ("-1", "none", "NoDevFiles") else None


def why_cuda_is_unusable() -> str:
    """Why ``torch.cuda.is_available()`` is false, in words."""
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch in the "
                "job's environment")
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but finds no usable GPU (a driver "
            "older than that CUDA, or no device visible to the job); check nvidia-smi on the node")


def select_device(requested: str, environ: Mapping[str, str] = os.environ) -> torch.device:
    """``cuda`` when requested or when ``auto`` finds a GPU, else ``cpu``.

    Raises :class:`GpuUnusable` when ``cuda`` was requested, or the job was given GPUs
    (``CUDA_VISIBLE_DEVICES``), but torch cannot use them: such a job would otherwise train
    on the CPU, fifty times slower, without a word. ``device: cpu`` always takes the CPU.
    On CUDA, cuDNN benchmarks its convolution algorithms once per input shape and
    keeps the fastest: patches and blocks repeat a handful of shapes.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    given = gpus_given_to_job(environ)
    if requested == "cuda":
        raise GpuUnusable(f"device: cuda was asked for, but {why_cuda_is_unusable()}; or set device: cpu")
    if given is not None:
        raise GpuUnusable(f"the job was given GPU(s) {given} (CUDA_VISIBLE_DEVICES), but {why_cuda_is_unusable()}; "
                          "or run it without GPUs (--set-resources train:gpu=0)")
    return torch.device("cpu")


def to_device(array: np.ndarray, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """``array`` as a tensor on ``device`` in ``layout``; to a GPU it goes from pinned memory, without
    waiting for the copy (the next batch is prepared meanwhile)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, memory_format=layout, non_blocking=True)


@functools.cache
def cpu_has_amx_bf16(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 matrices with Intel AMX, from the flags in ``cpuinfo_path``.

    AVX-512 BF16 alone (AMD Zen 4, Intel Cooper Lake) does not count: on an AMD EPYC, bfloat16
    training there was 1.7x faster but not reproducible (conv3d weight gradients on 2x8x8 inputs
    came out as garbage, different on each call), so ``auto`` keeps float32 on such CPUs."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo)
    except OSError:
        return False


def gpu_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes bfloat16 in hardware (compute capability 8.0, Ampere, and later).

    Older GPUs only emulate it, and cuDNN has no bfloat16 convolutions there.
    """
    return torch.cuda.get_device_capability() >= (8, 0)


def autocast_dtype(precision: str, device: torch.device,
                   native_bf16: Callable[[], bool] = gpu_has_native_bf16) -> torch.dtype | None:
    """The dtype the network computes in under autocast, or ``None`` for plain float32.

    ``bfloat16``/``float16`` when asked. ``auto``: on CUDA bfloat16 where the GPU has
    it (``native_bf16``), float16 on older GPUs (V100, T4: bfloat16 is emulated there,
    slower than float32); bfloat16 on CPUs with AMX; float32 on other CPUs.
    """
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.bfloat16 if cpu_has_amx_bf16() else None


def arithmetic_name(dtype: torch.dtype | None) -> str:
    """``float32``, ``bfloat16`` or ``float16``: what :func:`autocast_dtype` chose, for logs and model.json."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
