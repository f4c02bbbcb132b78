"""Short training from scratch, the quality signal of the ``train`` evaluator."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from nas.errors import NASError
from nas.evaluators import TrainingRecipe
from nas.export import save_atomic
from nas.training.data import ImageDataset, Split
from nas.world import World


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NASError(f"device {device!r} asked for, but CUDA is not available here; use device=cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise NASError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from None


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """NASError unless ``precision`` is one of PRECISIONS and runs on ``device``."""
    if precision not in PRECISIONS:
        raise NASError(f"evaluator.precision {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "float16" and device.type != "cuda":
        raise NASError("evaluator.precision=float16 is mixed precision with loss scaling on a CUDA device; "
                       f"the device here is {device.type}: use bfloat16 (or float32)")


def sample_indices(pool: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` indices drawn with replacement from ``pool`` (a step's global batch: every
    process draws the same and takes its micro-batches of it)."""
    return pool[torch.randint(len(pool), (size,), generator=generator)]


def load_batch(data: ImageDataset, idx: torch.Tensor, input_shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training examples ``idx`` on ``device``, in the channels-last layout searchers
    that train supernets step on."""
    x, y = data.batch(data.train, idx, input_shape)
    return x.to(device, memory_format=torch.channels_last), y.to(device)


#: set by SIGTERM while a checkpointing loop runs: it saves at its next step and stops
STOP_REQUESTED = threading.Event()
_checkpointing_loops = 0


def handle_sigterm(signum, frame) -> None:
    """The CLI's SIGTERM handler: a loop that checkpoints (``TrainingCheckpoint``) saves
    at the end of its current step and stops; anything else stops at once."""
    if _checkpointing_loops:
        STOP_REQUESTED.set()
    else:
        raise KeyboardInterrupt


class TrainingCheckpoint:
    """Checkpoints of a searcher's training loop in ``path`` (None: none): at the end of
    every ``every``-th step and, after SIGTERM, of the current step (then the run stops
    with KeyboardInterrupt; the same command resumes). ``identity`` holds the settings
    that decide the result: a checkpoint made with others is not resumed.

    Among processes training together (``world``), rank 0 reads and writes the
    checkpoint and hands what it read to the others; a SIGTERM any of them received
    stops all of them after the same step."""

    def __init__(self, path: Path | None, every: int, identity: dict, world: World = World()):
        if every < 1:
            raise NASError(f"checkpoint_every must be >= 1, got {every}")
        self.path, self.every, self.identity = (Path(path) if path is not None else None), every, identity
        self.world = world

    def load(self) -> dict | None:
        state = None
        if self.world.is_main and self.path is not None and self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("identity") != self.identity:
                print(f"note: {self.path} was made with other settings; starting afresh", file=sys.stderr)
                state = None
        return self.world.broadcast(state)

    def __enter__(self):
        global _checkpointing_loops
        _checkpointing_loops += 1
        return self

    def __exit__(self, *exc) -> None:
        global _checkpointing_loops
        _checkpointing_loops -= 1

    def step_done(self, step: int, state, last: bool = False) -> None:
        """After step ``step`` (0-based); ``state()`` gives what to save (``last``: the
        loop's final step, always saved)."""
        stop = self.world.any(STOP_REQUESTED.is_set())
        if self.path is not None and self.world.is_main and ((step + 1) % self.every == 0 or stop or last):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"identity": self.identity, **state()}, self.path)
        if stop:
            STOP_REQUESTED.clear()
            raise KeyboardInterrupt


def rng_states(gen: torch.Generator, rng) -> dict:
    """The random states a training loop draws from: its torch generator, its numpy
    generator (or None) and torch's global one."""
    return {"gen": gen.get_state(), "torch": torch.get_rng_state(),
            "numpy": rng.bit_generator.state if rng is not None else None}


def set_rng_states(states: dict, gen: torch.Generator, rng) -> None:
    gen.set_state(states["gen"])
    torch.set_rng_state(states["torch"])
    if rng is not None:
        rng.bit_generator.state = states["numpy"]


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise NASError(f"unknown optimizer {name!r}; accepted: {', '.join(map(repr, OPTIMIZERS))}")


@torch.inference_mode()
def accuracy(model: nn.Module, data: ImageDataset, split: Split, input_shape, batch_size: int,
             device: torch.device, **forward_kw) -> tuple[float, float]:
    """(top-1 accuracy in [0, 1], mean cross-entropy) of ``model`` on ``split``;
    ``forward_kw`` go to every forward call (e.g. the ``arch`` of a layer-wise network)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(split), batch_size):
        idx = slice(start, start + batch_size)
        x, y = data.batch(split, idx, input_shape)
        x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
        out = model(x, **forward_kw)
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    n = max(1, len(split))
    return correct / n, loss_sum / n


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: ImageDataset, input_shape, batch_size: int, device,
                          max_batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over training batches.

    After a few hundred steps the exponential running averages still lag the weights, and
    validation accuracy in eval mode can be far below what the network has learned.

    The batches are a fixed random sample of the training split (the same every call), not
    its first examples: a split stored by class (mnist5k is) would give batches of one or two
    classes, whose variances miss the spread between classes and whose means cover only
    the first classes, and eval-mode accuracy would drop by several points.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    n = len(data.train)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_batches * batch_size]
    for start in range(0, len(sample), batch_size):
        x, _ = data.batch(data.train, sample[start:start + batch_size], input_shape)
        if len(x) > 1:
            model(x.to(device, memory_format=torch.channels_last))
    for bn, m in zip(bns, momenta):
        bn.momentum = m


def train(model: nn.Module, data: ImageDataset, input_shape, recipe: TrainingRecipe, seed: int, *,
          teacher: nn.Module | None = None, distill_weight: float = 0.0, temperature: float = 1.0) -> dict:
    """Train ``model`` on ``data.train`` by ``recipe`` with a cosine learning-rate schedule;
    report validation accuracy and loss. Deterministic for a given seed on one device.

    With a ``teacher``, the loss adds ``distill_weight`` times the KL divergence from the
    teacher's to the model's class distribution at ``temperature`` (times its square, as
    in Hinton et al.): fine-tuning with distillation."""
    epochs, batch_size, device = recipe.epochs, recipe.batch_size, recipe.device
    if epochs < 0 or batch_size < 1:
        raise NASError(f"training needs epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    # channels_last: depthwise convolutions train several times faster on CPU in this layout
    model.to(device=device, memory_format=torch.channels_last)
    opt = make_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum, recipe.weight_decay)
    n = len(data.train)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, epochs * steps_per_epoch)
    if teacher is not None:
        teacher.to(device=device, memory_format=torch.channels_last).eval()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    # mixed precision: the forward pass autocast to bfloat16/float16, float16's loss scaled
    low = PRECISIONS[recipe.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=low is torch.float16)
    start = time.perf_counter()
    train_loss = float("nan")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            x, y = data.batch(data.train, idx, input_shape)
            x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
            with torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None):
                out = model(x)
                if teacher is not None and distill_weight:
                    with torch.no_grad():
                        soft = nn.functional.softmax(teacher(x).float() / temperature, dim=1)
            out = out.float()  # the loss in float32
            loss = nn.functional.cross_entropy(out, y)
            if teacher is not None and distill_weight:
                kl = nn.functional.kl_div(nn.functional.log_softmax(out / temperature, dim=1), soft,
                                          reduction="batchmean")
                loss = loss + distill_weight * temperature ** 2 * kl
            if not torch.isfinite(loss):
                raise NASError(f"training diverged: loss is {loss.item()} at epoch {epoch}, step {s}; "
                               "lower evaluator.lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            train_loss = loss.item()
    recalibrate_batchnorm(model, data, input_shape, batch_size, device)
    train_time = time.perf_counter() - start
    val_acc, val_loss = accuracy(model, data, data.val, input_shape, 512, device)
    return {"accuracy": val_acc, "val_loss": val_loss, "train_loss": train_loss, "train_seconds": train_time}
