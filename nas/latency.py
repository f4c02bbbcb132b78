"""Latency measurement: times a module on a device with a fixed input, built on
``torch.utils.benchmark`` (warm-up, adaptive repeats until the spread is small, fixed
thread count, CUDA synchronisation), under ``torch.inference_mode``."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils import benchmark

from nas.errors import NASError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HarnessSettings:
    """How latency is measured; stored in every LUT file and compared on reuse."""

    device: str = "cpu"
    threads: int = 1
    batch: int = 1
    dtype: str = "float32"
    warmup: int = 5
    # adaptive_autorange: repeat until IQR/median < threshold (or max_run_time seconds)
    threshold: float = 0.05
    min_run_time: float = 0.05
    max_run_time: float = 2.0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise NASError(f"latency dtype {self.dtype!r} is not one of {', '.join(map(repr, DTYPES))}")
        if self.threads < 1 or self.batch < 1:
            raise NASError(f"latency needs threads >= 1 and batch >= 1, got threads={self.threads}, batch={self.batch}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise NASError(f"latency device {self.device!r} asked for, but CUDA is not available here")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise NASError(f"latency device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    # Settings that change what a latency means; the others only change how long we look.
    def identity(self) -> dict:
        return {k: getattr(self, k) for k in ("device", "threads", "batch", "dtype")}


@dataclass(frozen=True)
class Timing:
    median_ms: float
    iqr_ms: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: str = "cpu") -> str:
    """A human-readable name of the processor that runs ``device``."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(module: nn.Module, input_shape: tuple, settings: HarnessSettings) -> Timing:
    """Median latency (ms) of one forward pass of ``module`` on a batch of ``input_shape``."""
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    module = module.eval().to(device=device, dtype=dtype)
    x = torch.randn(settings.batch, *input_shape, device=device, dtype=dtype)
    previous_threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(settings.threads)
            for _ in range(settings.warmup):
                module(x)
            timer = benchmark.Timer(stmt="module(x)", globals={"module": module, "x": x},
                                    num_threads=settings.threads)
            m = timer.adaptive_autorange(threshold=settings.threshold, min_run_time=settings.min_run_time,
                                         max_run_time=settings.max_run_time)
    finally:
        torch.set_num_threads(previous_threads)
    return Timing(m.median * 1e3, m.iqr * 1e3, len(m.times))
