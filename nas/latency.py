"""Latency measurement: times modules on a device with a fixed input, built on
``torch.utils.benchmark`` (warm-up, blocked repeats, fixed thread count, CUDA
synchronisation), under ``torch.inference_mode``.

Shared machines drift: on the CPUs this project is tested on, the same pooling layer
runs at 0.29 ms for seconds, then at 0.51 ms, then back, in every process at once. A
latency taken in one short window is a sample of that state, not of the op. So items
are timed in interleaved *rounds*: every round times every item once (in a fresh,
seeded random order), and an item's latency is the mean over rounds of the per-round
median. Means, not medians, across rounds, because expected latencies add up: the sum
of the layers' means is the mean of the whole model, the sum of medians is not.

Two back ends: ``torch`` (eager PyTorch) and, where the ``onnxruntime`` package is
installed, ``onnxruntime`` (the module exported to ONNX and run by an ONNX Runtime CPU
session with the same thread count).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark

from nas.errors import NASError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class HarnessSettings:
    """How latency is measured; stored in every LUT file and compared on reuse."""

    device: str = "cpu"
    threads: int = 1
    batch: int = 1
    dtype: str = "float32"
    backend: str = "torch"
    warmup: int = 3
    rounds: int = 7  # interleaved passes over all items (see the module docstring)
    min_run_time: float = 0.05  # seconds of timed runs per item per round

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise NASError(f"latency dtype {self.dtype!r} is not one of {', '.join(map(repr, DTYPES))}")
        if self.threads < 1 or self.batch < 1:
            raise NASError(f"latency needs threads >= 1 and batch >= 1, got threads={self.threads}, batch={self.batch}")
        if self.rounds < 1 or self.warmup < 0 or not self.min_run_time > 0:
            raise NASError(f"latency needs rounds >= 1, warmup >= 0 and min_run_time > 0, got rounds={self.rounds}, "
                           f"warmup={self.warmup}, min_run_time={self.min_run_time}")
        if self.backend not in BACKENDS:
            raise NASError(f"latency backend {self.backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
        if self.backend == "onnxruntime" and (self.device != "cpu" or self.dtype != "float32"):
            raise NASError("the onnxruntime latency backend measures device='cpu' with dtype='float32' only, "
                           f"got device={self.device!r}, dtype={self.dtype!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise NASError(f"latency device {self.device!r} asked for, but CUDA is not available here")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise NASError(f"latency device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "HarnessSettings":
        # Files written before a field existed still load (the field takes its default).
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    # Settings that change what a latency means; the others only change how long we look.
    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY_FIELDS}


IDENTITY_FIELDS = ("device", "threads", "batch", "dtype", "backend")


@dataclass
class Timing:
    """One item's per-round medians (ms) and the number of timed runs behind them."""

    rounds_ms: list = field(default_factory=list)
    runs: int = 0

    @property
    def ms(self) -> float:
        """The latency estimate: mean over rounds of the per-round median."""
        return float(np.mean(self.rounds_ms))

    @property
    def median_ms(self) -> float:
        return float(np.median(self.rounds_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.rounds_ms, [25, 75])
        return float(q3 - q1)

    def to_dict(self) -> dict:
        return {"ms": self.ms, "median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "repeats": self.runs,
                "rounds_ms": list(self.rounds_ms)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Timing":
        return cls(list(d["rounds_ms"]), int(d["repeats"]))


#: builds the module to time and gives its input shape (without the batch dimension)
Builder = Callable[[], "tuple[nn.Module, tuple]"]


def _time_round(module: nn.Module, input_shape: tuple, settings: HarnessSettings) -> tuple[float, int]:
    """(median ms, timed runs) of one round: warm-up, then blocked repeats."""
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    module = module.eval().to(device=device, dtype=dtype)
    x = torch.randn(settings.batch, *input_shape, device=device, dtype=dtype)
    with torch.inference_mode():
        if settings.backend == "onnxruntime":
            stmt, env = "session.run(None, feed)", _onnxruntime_session(module, x, settings.threads)
        else:
            stmt, env = "module(x)", {"module": module, "x": x}
        for _ in range(settings.warmup):
            exec(stmt, {}, env)
        m = benchmark.Timer(stmt=stmt, globals=env, num_threads=settings.threads).blocked_autorange(
            min_run_time=settings.min_run_time)
    return m.median * 1e3, m.number_per_run * len(m.raw_times)


def _onnxruntime_session(module: nn.Module, x: torch.Tensor, threads: int) -> dict:
    """An ONNX Runtime CPU session running ``module`` exported to ONNX, and its input."""
    try:
        import onnxruntime
    except ImportError:
        raise NASError("the onnxruntime latency backend needs the onnxruntime and onnx packages: "
                       "pip install 'hwnas[onnx]'") from None
    from nas.export import onnx_bytes

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes(module, x), options, providers=["CPUExecutionProvider"])
    return {"session": session, "feed": {"x": x.numpy()}}


def measure_interleaved(builders: Mapping[Hashable, Builder], settings: HarnessSettings,
                        done: Mapping[Hashable, Timing] | None = None, seed: int = 0,
                        on_measured: Callable[[Hashable, Timing], None] | None = None,
                        progress: bool = False, desc: str = "latency",
                        item_settings: Mapping[Hashable, HarnessSettings] | None = None) -> dict[Hashable, Timing]:
    """Time every item ``settings.rounds`` times in interleaved rounds.

    ``done`` holds timings from an interrupted run: an item continues from the rounds it
    has. ``on_measured(key, timing)`` is called after every round of every item (to save
    as you go). Modules are rebuilt per round (seeded, so with the same weights) rather
    than kept: a space's 50 validation models need not fit in memory together.
    ``item_settings`` gives some items their own rounds and timing (a LUT's whole
    calibration models timed in the same rounds as its short-timed layers, so that both
    see the same speed states of the machine); the thread count is ``settings``'.
    """
    from tqdm.auto import tqdm

    own = dict(item_settings or {})
    setting = {k: own.get(k, settings) for k in builders}
    if any(s.threads != settings.threads for s in setting.values()):
        raise NASError("measure_interleaved: every item must be timed with the same thread count")
    timings = {k: Timing(list(done[k].rounds_ms), done[k].runs) if done and k in done else Timing()
               for k in builders}
    todo = sum(max(0, setting[k].rounds - len(t.rounds_ms)) for k, t in timings.items())
    order_rng = random.Random(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tqdm(total=todo, desc=desc, unit="timing", disable=not progress) as bar:
            for r in range(max((s.rounds for s in setting.values()), default=0)):
                keys = [k for k, t in timings.items() if len(t.rounds_ms) <= r < setting[k].rounds]
                order_rng.shuffle(keys)
                for k in keys:
                    torch.manual_seed(0)
                    module, input_shape = builders[k]()
                    ms, runs = _time_round(module, tuple(input_shape), setting[k])
                    timings[k].rounds_ms.append(ms)
                    timings[k].runs += runs
                    if on_measured is not None:
                        on_measured(k, timings[k])
                    bar.update()
    finally:
        torch.set_num_threads(previous_threads)
    return timings


def measure(module: nn.Module, input_shape: tuple, settings: HarnessSettings) -> Timing:
    """Latency of one forward pass of ``module`` on a batch of ``input_shape``."""
    return measure_interleaved({0: lambda: (module, input_shape)}, settings)[0]
