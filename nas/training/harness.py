"""The harness every searcher that trains weights runs on (tunas, differentiable, ilp).

:class:`WeightTraining` is set up once per search from the problem: the data set and
training recipe (:meth:`SearchProblem.training`), the device, the micro-batches of a step
and which of them this process computes, the checkpoint (resumed only by a run with the
same identity) and a progress bar. Its :meth:`WeightTraining.step` runs one training step
over the micro-batches (gradients summed over the processes, BatchNorm statistics as their
mean) and :meth:`WeightTraining.measure` a forward pass per micro-batch without gradients.
``cosine_lr`` is the one learning-rate schedule of a search's steps.

A new searcher that trains shared weights writes its algorithm (what a path is, what the
loss of a micro-batch is, what it logs) and leaves the rest here.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from nas.errors import NASError
from nas.training.distributed import RunningStats, sum_gradients
from nas.training.train import TrainingCheckpoint, load_batch, resolve_device, sample_indices

#: searcher settings that do not change what a search computes (left out of a checkpoint's identity)
NOT_IDENTITY = ("measure_latency", "device", "checkpoint_every")


def cosine_lr(base_lr: float, step: int, steps: int) -> float:
    """The learning rate at ``step`` of ``steps`` on a cosine schedule from ``base_lr`` to 0."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def search_device(setting: str, recipe) -> torch.device:
    """Where a searcher trains: its ``device`` setting, or with ``"auto"`` where the run's
    evaluator trains (its recipe's device, resolved already)."""
    return recipe.device if setting == "auto" else resolve_device(setting)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class WeightTraining:
    """One searcher's training set-up on one problem.

    ``searcher`` is the searcher (its ``name``, ``device``, ``micro_batches`` and
    ``checkpoint_every`` fields are read); ``why`` says what it trains, for the error
    without data; ``batches`` maps a batch-size field to ``(its value, examples each
    micro-batch needs at least)``; ``identity`` is what, besides the searcher's settings
    and the seed, must match for a checkpoint to be resumed."""

    def __init__(self, problem, searcher, why: str, batches: dict[str, tuple[int, int]], identity: dict):
        self.problem, self.world = problem, problem.world
        self.data, self.recipe = problem.training(f"searcher {searcher.name!r}", why)
        self.device = search_device(searcher.device, self.recipe)
        self.n_micro, self.mine = self.world.micro_batches(searcher.micro_batches, "searcher.micro_batches")
        short = [f"{field} ({size}) must give each of the {self.n_micro} micro-batches at least {least} "
                 f"example{'s' if least > 1 else ''}" for field, (size, least) in batches.items()
                 if size < least * self.n_micro]
        if short:
            raise NASError(f"searcher.{'; '.join(short)}")
        settings = {k: v for k, v in vars(searcher).items() if k not in NOT_IDENTITY}
        folder = problem.checkpoint_folder(searcher.name)
        self.checkpoint = TrainingCheckpoint(
            folder / "state.pt" if folder is not None else None, searcher.checkpoint_every,
            {"searcher": {**settings, "micro_batches": self.n_micro}, "seed": problem.seed, **identity}, self.world)
        self.name = searcher.name

    def progress_bar(self, total: int, initial: int = 0) -> tqdm:
        return tqdm(total=total, initial=initial, desc=self.name, unit="step",
                    disable=not self.problem.show_progress, dynamic_ncols=True)

    def batches(self, pool: torch.Tensor, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A step's global batch of ``size`` indices drawn from ``pool``, cut into the micro-batches."""
        return torch.tensor_split(sample_indices(pool, size, gen), self.n_micro)

    def step(self, module, optimizers, batch, batch_size: int,
             loss_of: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        """Gradients of one step: per micro-batch ``p`` of this process, ``loss_of(p, x, y)``
        weighted by its share of the ``batch_size`` examples; summed over the processes.
        Returns the step's loss. The optimizers' ``zero_grad`` and ``step`` are the caller's."""
        loss = 0.0
        with RunningStats(module, self.world, self.n_micro) as stats:
            for p in self.mine:
                x, y = load_batch(self.data, batch[p], self.problem.space.input_shape, self.device)
                share = loss_of(p, x, y) * (len(batch[p]) / batch_size)
                share.backward()
                stats.pass_done()
                loss += share.item()
        (loss,) = sum_gradients(self.world, optimizers, [loss])
        return loss

    @torch.no_grad()
    def measure(self, module, batch, value_of: Callable[[int, torch.Tensor, torch.Tensor], float]) -> list[float]:
        """``value_of(p, x, y)`` of every micro-batch ``p`` (each process computes its own,
        the others' are summed in), without gradients."""
        values = torch.zeros(self.n_micro, dtype=torch.float64)
        with RunningStats(module, self.world, self.n_micro) as stats:
            for p in self.mine:
                x, y = load_batch(self.data, batch[p], self.problem.space.input_shape, self.device)
                values[p] = value_of(p, x, y)
                stats.pass_done()
        self.world.all_reduce(values)
        return values.tolist()
