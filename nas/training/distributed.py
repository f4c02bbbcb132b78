"""Training shared weights across processes (``torchrun --nproc_per_node=N``).

Which process this is and how the processes talk: :mod:`nas.world`.

The searchers that train shared weights (tunas, differentiable, HANT's pretraining) split
each step's work into *micro-batches*: the step's global batch is cut into
``micro_batches`` slices, each trained on its own path (TuNAS's cores each sample their
own architecture) and weighted by its share of the batch. Process ``r`` of ``N`` computes
the ``r``-th block of ``micro_batches / N`` of them; :func:`sum_gradients` adds the
processes' gradients, and :class:`RunningStats` makes BatchNorm's running statistics
follow the mean of the micro-batches' statistics. Every process draws the same random
numbers (paths, batch indices) and applies the same update, so weights, controller and
architecture parameters stay identical everywhere, and a step gives the same result on
one process with the same number of micro-batches (up to the order of float sums). A
checkpoint is therefore independent of the number of processes: a run stopped under
torchrun resumes in one process and vice versa.
"""

from __future__ import annotations

import torch

from nas.training.supernet import SliceSGD
from nas.world import World


def sum_gradients(world: World, optimizers, scalars=()) -> list[float]:
    """Add the gradients every optimizer in ``optimizers`` steps on over the processes (each
    process's loss is its micro-batches' share of the step's loss, so the sum is the
    step's gradient) and ``scalars`` (e.g. the loss); returns the summed scalars. A
    parameter no process gave a gradient keeps none (an optimizer skips it)."""
    if world.size == 1:
        return [float(s) for s in scalars]
    tensors, flags, had = [], [], []
    for opt in optimizers:
        if isinstance(opt, SliceSGD):  # sums only the slices its passes used
            opt.sum_over(world)
            continue
        for group in opt.param_groups:
            for p in group["params"]:
                flags.append(p)
                had.append(0.0 if p.grad is None else 1.0)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                tensors.append(p.grad)
    device = tensors[0].device if tensors else torch.device("cpu")
    if tensors:
        flat = world.all_reduce(torch.cat([t.reshape(-1) for t in tensors]))
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    # in double precision: summed losses are reported, and a flag is exact
    rest = world.all_reduce(torch.tensor(had + [float(s) for s in scalars], dtype=torch.float64, device=device)).tolist()
    for p, used in zip(flags, rest[:len(flags)]):
        if not used:
            p.grad = None
    return rest[len(flags):]


class RunningStats:
    """Running statistics (BatchNorm's buffers) of a step with several micro-batches, as
    if updated once by their mean: each micro-batch's forward pass starts from the
    step's statistics, and the step ends with the mean of what the passes left (over
    all processes). Independent of how the micro-batches are spread over processes."""

    def __init__(self, module: torch.nn.Module, world: World, n_micro_batches: int):
        self.buffers = [b for b in module.buffers() if b.numel()]
        self.world, self.n = world, n_micro_batches
        self.active = n_micro_batches > 1

    def __enter__(self):
        if self.active:
            self.start = [b.detach().clone() for b in self.buffers]
            self.total = [torch.zeros_like(b, dtype=torch.float64) for b in self.buffers]
        return self

    def pass_done(self) -> None:
        """After one micro-batch's forward pass."""
        if self.active:
            for b, start, total in zip(self.buffers, self.start, self.total):
                total.add_(b)
                b.copy_(start)

    def __exit__(self, *exc) -> None:
        if not self.active or exc[0] is not None:
            return
        if self.world.size > 1 and self.total:
            flat = self.world.all_reduce(torch.cat([t.reshape(-1) for t in self.total]))
            offset = 0
            for t in self.total:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        for b, total in zip(self.buffers, self.total):
            b.copy_(total / self.n)
