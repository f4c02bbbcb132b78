"""Which processes run a search together (``torchrun --nproc_per_node=N``).

torchrun starts N copies of a command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a
rendezvous address in the environment; :func:`world` joins them into one process group
(gloo on CPU; on a machine with CUDA, NCCL for CUDA tensors and gloo for the rest) and
says which process this is. The search problem needs it (rank 0 alone writes the run
folder and the ledger); what the processes do together while training shared weights is
in :mod:`nas.training.distributed`.
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
