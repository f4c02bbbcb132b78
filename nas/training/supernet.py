"""Generic pieces of a weight-sharing supernet: kernels shared as centres and widths as
leading slices, and an optimizer that touches only the slices a step used.

A space's supernet (``spaces.uib.UIBSupernet``) builds its layers from :class:`SharedConv`
and records each training pass's slices with one :class:`Pieces`; :class:`SliceSGD`
then updates exactly those slices, so a step costs the path's size, not the supernet's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau, spearmanr
from torch import nn

from nas.training.train import accuracy, recalibrate_batchnorm
from nas.world import World


def centre_index(size: int, k: int) -> slice:
    """The central k of ``size`` positions (a kxk kernel inside a larger one)."""
    lo = (size - k) // 2
    return slice(lo, lo + k)


class Pieces:
    """The slices of shared parameters one training forward pass used.

    A slice taken from a parameter directly would give that whole parameter a gradient
    (zeros outside the slice) and make the optimizer update all of it: for the largest
    kernels and widths, several times the work of the path itself. So while recording,
    a use gets a detached view of its slice as its own leaf; :class:`SliceSGD` updates
    exactly those slices from their gradients.
    """

    def __init__(self):
        self.used: list[tuple[nn.Parameter, tuple, torch.Tensor]] = []
        self.recording = False

    def take(self, param: nn.Parameter, index: tuple) -> torch.Tensor:
        if not (self.recording and torch.is_grad_enabled()):
            return param[index]
        piece = param.detach()[index].requires_grad_()
        self.used.append((param, index, piece))
        return piece


class SliceSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay on the slices of the recorded forward passes
    only; weights a step did not use are left as they are (no decay, no stale momentum).

    One pass per step updates its slices from their own gradients. Several passes per
    step (micro-batches on different paths), or gradients summed over processes
    (:func:`nas.training.distributed.sum_gradients` calls :meth:`sum_over`), update the elements
    any pass used from the summed gradients; what is summed and sent per parameter is the
    box bounding the slices used, not the whole (largest-option) parameter."""

    def __init__(self, params, pieces: Pieces, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.pieces = pieces
        #: per parameter, after :meth:`sum_over`: (bounding box, summed gradient, 1 where used) in the box
        self.summed: dict[nn.Parameter, tuple] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)  # the pieces' gradients are new every pass

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _spans(param, index) -> list[tuple[int, int]]:
        spans = [s.indices(n)[:2] for s, n in zip(index, param.shape)]
        return spans + [(0, n) for n in param.shape[len(index):]]

    @torch.no_grad()
    def sum_over(self, world) -> None:
        """Sum the recorded passes' slice gradients per parameter, over ``world``'s
        processes too, into the box bounding every slice any of them used."""
        used = [(param, self._spans(param, index), piece) for param, index, piece in self.pieces.used
                if piece.grad is not None]
        self.pieces.used.clear()
        local: dict[nn.Parameter, list] = {}
        for param, spans, _ in used:
            old = local.get(param)
            local[param] = spans if old is None else [(min(a, c), max(b, d)) for (a, b), (c, d) in zip(old, spans)]
        params = self._params()
        if world.size > 1:  # the union of the boxes: per dimension, the lowest start and highest stop
            extents = torch.tensor([v for p in params for d in range(p.ndim)
                                    for v in ((-local[p][d][0], local[p][d][1]) if p in local else (-p.shape[d], 0))],
                                   dtype=torch.int64)
            world.all_reduce(extents, op="max")
            it = iter(extents.tolist())
            local = {}
            for p in params:
                spans = [(-next(it), next(it)) for _ in range(p.ndim)]
                if all(a < b for a, b in spans):
                    local[p] = spans
        boxes = {p: spans for p, spans in local.items() if all(a < b for a, b in spans)}
        summed = {p: (tuple(slice(a, b) for a, b in spans),
                      torch.zeros([b - a for a, b in spans], dtype=p.dtype, device=p.device),
                      torch.zeros([b - a for a, b in spans], dtype=p.dtype, device=p.device))
                  for p, spans in boxes.items()}
        for param, spans, piece in used:
            at = tuple(slice(a - b0, b - b0) for (a, b), (b0, _) in zip(spans, boxes[param]))
            _, grad, mask = summed[param]
            grad[at] += piece.grad
            mask[at] = 1.0
        if world.size > 1 and summed:
            tensors = [t for _, grad, mask in summed.values() for t in (grad, mask)]
            flat = world.all_reduce(torch.cat([t.reshape(-1) for t in tensors]))
            offset = 0
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        self.summed = summed

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        used = self.pieces.used
        if self.summed is None and len({id(param) for param, _, _ in used}) == len(used):
            for param, index, piece in used:  # one pass: its slices, in place
                if piece.grad is None:
                    continue
                grad = piece.grad.add(param[index], alpha=decay) if decay else piece.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buf = state["momentum_buffer"][index]
                buf.mul_(momentum).add_(grad)
                param[index].sub_(buf, alpha=lr)
            used.clear()
            return
        if self.summed is None:
            self.sum_over(World())
        for param, (box, grad, mask) in self.summed.items():
            # whole-box arithmetic, kept where a pass used the element (the one-pass update's operations)
            chosen = mask > 0
            region = param[box]
            if decay:
                grad = grad.add(region, alpha=decay)
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buf = state["momentum_buffer"][box]
            buf.copy_(torch.where(chosen, buf.mul(momentum).add_(grad), buf))
            region.copy_(torch.where(chosen, region.sub(buf, alpha=lr), region))
        self.summed = None


class SharedConv(nn.Module):
    """A conv + BN whose weights serve every narrower and smaller use: a use takes the
    first ``c_out`` filters, the first ``c_in`` input channels and the central ``k``."""

    def __init__(self, c_in: int, c_out: int, k: int, pieces: Pieces, depthwise: bool = False):
        super().__init__()
        self.depthwise = depthwise
        self.weight = nn.Parameter(torch.empty(c_out, 1 if depthwise else c_in, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bn = nn.BatchNorm2d(c_out)
        self.pieces = pieces

    def weight_index(self, c_out: int, c_in: int, k: int) -> tuple:
        centre = centre_index(self.weight.shape[-1], k)
        return (slice(0, c_out), slice(None) if self.depthwise else slice(0, c_in), centre, centre)

    def forward(self, x, c_out: int, k: int, stride: int, act: bool):
        c_in = x.shape[1]
        w = self.pieces.take(self.weight, self.weight_index(c_out, c_in, k))
        y = F.conv2d(x, w, None, stride, k // 2, groups=c_in if self.depthwise else 1)
        bn, out = self.bn, (slice(0, c_out),)
        y = F.batch_norm(y, bn.running_mean[:c_out], bn.running_var[:c_out], self.pieces.take(bn.weight, out),
                         self.pieces.take(bn.bias, out), bn.training, bn.momentum, bn.eps)
        return F.relu(y) if act else y

    def export(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        """Copy the slice a standalone layer uses into it."""
        c_out, k = conv.out_channels, conv.kernel_size[0]
        with torch.no_grad():
            conv.weight.copy_(self.weight[self.weight_index(c_out, conv.in_channels, k)])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(self.bn, name)[:c_out])


def inherited_accuracy(supernet: nn.Module, arch, data, input_shape, batch_size: int, device,
                       calibration_batches: int = 20) -> float:
    """Validation accuracy of ``arch`` with the weights it inherits from ``supernet`` (a
    space's supernet with ``export(arch)``): its standalone model with those weights, whose
    BatchNorm statistics are re-estimated on training batches first, since statistics
    shared by every path describe none of them. The supernet itself is left unchanged."""
    model = supernet.export(arch).to(device, memory_format=torch.channels_last)
    recalibrate_batchnorm(model, data, input_shape, batch_size, device, calibration_batches)
    with torch.no_grad():
        return accuracy(model, data, data.val, input_shape, batch_size, device)[0]


def ranking_agreement(inherited, standalone) -> dict:
    """How well a supernet ranks paths: Kendall's tau-b and Spearman's rho between their
    accuracies with inherited weights and trained alone (1: the same order; 0: unrelated)."""
    if len(inherited) != len(standalone) or len(inherited) < 2:
        raise ValueError(f"ranking needs two equally long lists of at least 2 accuracies, got "
                         f"{len(inherited)} and {len(standalone)}")
    return {"kendall_tau": float(kendalltau(inherited, standalone).statistic),
            "spearman": float(spearmanr(inherited, standalone).statistic), "paths": len(inherited)}
