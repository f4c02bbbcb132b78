"""Training shared weights across processes (``torchrun --nproc_per_node=N``).

torchrun starts N copies of a command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a
rendezvous address in the environment; :func:`world` joins them into one process group
(gloo on CPU; on a machine with CUDA, NCCL for CUDA tensors and gloo for the rest) and
says which process this is.

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

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nas.errors import NASError

#: how long a process waits in a collective for the others (rank 0 alone trains HANT's
#: teacher, for example, while the others wait for its weights)
COLLECTIVE_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among the ones training together (one: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory, ledger and checkpoints."""
        return self.rank == 0

    def micro_batches(self, requested: int | None, field: str) -> tuple[int, range]:
        """The number of micro-batches per step (``requested``, or one per process) and
        the ones this process computes; ``field`` names the setting for the error."""
        n = self.size if requested is None else requested
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n % self.size:
            raise NASError(f"{field} must be a multiple of the {self.size} processes training together "
                           f"(or null: one per process), got {requested!r}")
        per = n // self.size
        return n, range(self.rank * per, (self.rank + 1) * per)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` summed (``op="max"``: maximized) over the processes, in place."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (any picklable object)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (e.g. a SIGTERM one of them received)."""
        if self.size == 1:
            return flag
        return bool(self.all_reduce(torch.tensor([float(flag)])).item())


def world() -> World:
    """This process's :class:`World`; under torchrun, joins the process group on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # "cuda" then means this process's GPU
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        try:
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise NASError(f"cannot join the {size} processes torchrun started: {str(exc).splitlines()[0]}") from None
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def leave() -> None:
    """Leave the process group (at the end of a run), all processes together: a process
    that tears gloo down while rank 0 still writes the run directory was seen to abort
    ("terminate called without an active exception"), failing the whole torchrun."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sum_gradients(world: World, optimizers, scalars=()) -> list[float]:
    """Add the gradients every optimizer in ``optimizers`` steps on over the processes (each
    process's loss is its micro-batches' share of the step's loss, so the sum is the
    step's gradient) and ``scalars`` (e.g. the loss); returns the summed scalars. A
    parameter no process gave a gradient keeps none (an optimizer skips it)."""
    if world.size == 1:
        return [float(s) for s in scalars]
    tensors, flags, had = [], [], []
    for opt in optimizers:
        if hasattr(opt, "sum_over"):  # spaces.uib.SliceSGD: sums the slices its passes used
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
