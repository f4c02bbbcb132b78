"""Layer-wise spaces (capability ``layerwise``): a teacher network whose layers each have
candidate replacements, and HANT's pretraining and scoring of those candidates.

A space offers ``layerwise`` with:

- ``layer_decisions()``: one Decision per replaceable layer, its options the candidates;
- ``reference_option``: the option that keeps the teacher's own layer;
- ``teacher_chain()``: the teacher as ``(prefix, layers, suffix)`` lists of OpSpecs that
  run one after the other (its model is ``build_sequential`` of all three, so the
  ``model.pt`` of a run that trained the teacher loads into it);
- ``layer_ops(layer, option)``: the OpSpecs of a candidate (what cost models price);
- ``fixed_ops()``: the OpSpecs outside the layers;
- ``parameter_free(layer, option)``: whether a candidate needs no training (zero-shot).

:class:`LayerwiseNet` holds the teacher and the candidate modules; :func:`distill` trains
every candidate of every layer to reproduce its teacher layer's output from the teacher's
own input to that layer (HANT's Eq. 2), all in one pass over the data per epoch, with
checkpoints and resume; :func:`loss_changes` scores each candidate by the change of the
teacher's loss when only that layer is swapped (the linear proxy of HANT's Sec. 2.2).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nas.arch import Arch
from nas.errors import NASError
from nas.ops import build_sequential
from nas.training.data import ImageDataset, Split
from nas.training.distributed import RunningStats, sum_gradients
from nas.training.harness import cosine_lr, set_lr
from nas.training.train import TrainingCheckpoint, load_batch
from nas.world import World


class LayerwiseNet(nn.Module):
    """The teacher (``teacher``, a Sequential of prefix, layers and suffix) and candidate
    modules per layer (``candidates[layer]["o<option index>"]``)."""

    def __init__(self, space):
        super().__init__()
        space.require("layerwise", "LayerwiseNet")
        prefix, layers, suffix = space.teacher_chain()
        self.space = space
        self.decisions = space.layer_decisions()
        self.n_prefix, self.n_layers = len(prefix), len(layers)
        self.teacher = build_sequential(prefix + layers + suffix)
        self.candidates = nn.ModuleList(nn.ModuleDict() for _ in layers)

    def option_key(self, layer: int, option) -> str:
        return f"o{self.decisions[layer].index(option)}"

    def add_candidates(self, options: list[list]) -> None:
        """Build the candidate modules of ``options[layer]`` (the reference option is the
        teacher layer itself)."""
        if len(options) != self.n_layers:
            raise NASError(f"options for {len(options)} layers given; the space has {self.n_layers}")
        for layer, opts in enumerate(options):
            for option in opts:
                key = self.option_key(layer, option)
                if option != self.space.reference_option and key not in self.candidates[layer]:
                    self.candidates[layer][key] = build_sequential(self.space.layer_ops(layer, option))

    def teacher_layer(self, layer: int) -> nn.Module:
        return self.teacher[self.n_prefix + layer]

    def module(self, layer: int, option) -> nn.Module:
        if option == self.space.reference_option:
            return self.teacher_layer(layer)
        return self.candidates[layer][self.option_key(layer, option)]

    def prefix(self, x):
        for m in list(self.teacher)[:self.n_prefix]:
            x = m(x)
        return x

    def suffix(self, h, start: int = None):
        """Run teacher layers from ``start`` (default: none left) and the head."""
        start = self.n_layers if start is None else start
        for m in list(self.teacher)[self.n_prefix + start:]:
            h = m(h)
        return h

    def layer_inputs(self, x) -> list[torch.Tensor]:
        """The teacher's input to every layer, then the last layer's output."""
        h = self.prefix(x)
        acts = [h]
        for i in range(self.n_layers):
            h = self.teacher_layer(i)(h)
            acts.append(h)
        return acts

    def forward(self, x, arch: Arch | None = None):
        h = self.prefix(x)
        for i, d in enumerate(self.decisions):
            option = self.space.reference_option if arch is None else arch[d.name]
            h = self.module(i, option)(h)
        return self.suffix(h)

    def extract(self, arch: Arch) -> nn.Sequential:
        """A standalone copy of the network ``arch`` selects, with these weights (the
        layout of ``space.build(arch)``)."""
        mods = list(self.teacher)[:self.n_prefix]
        for i, d in enumerate(self.decisions):
            option, module = arch[d.name], self.module(i, arch[d.name])
            # a candidate is the Sequential of its layer's ops, which space.build lays out flat
            mods += [module] if option == self.space.reference_option else list(module)
        mods += list(self.teacher)[self.n_prefix + self.n_layers:]
        return copy.deepcopy(nn.Sequential(*mods))


def hold_out(data: ImageDataset, n: int, seed: int) -> tuple[ImageDataset, Split]:
    """``data`` without ``n`` seeded random training examples, and those examples: HANT
    scores and ranks candidates on training images the candidates were not trained on."""
    total = len(data.train)
    if not 0 < n < total:
        raise NASError(f"held_out must be between 1 and the {total - 1} training examples it can take, got {n}")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    keep, out = perm[n:].sort().values, perm[:n].sort().values
    rest = copy.copy(data)
    rest.train = data.train.subset(keep)
    return rest, data.train.subset(out)


@dataclass(frozen=True)
class DistillSettings:
    """How :func:`distill` trains the candidates: ``epochs`` over the data (at most
    ``max_batches`` batches each) of inputs shaped ``input_shape``, Adam at ``lr`` with a
    cosine schedule, batches drawn by ``seed``, on ``device``, each batch cut into
    ``micro_batches`` (None: one per process); a checkpoint at ``checkpoint`` (None: none)
    every ``every`` steps; a progress bar when ``show_progress``."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    input_shape: tuple
    device: object = "cpu"
    max_batches: int | None = None
    checkpoint: Path | None = None
    every: int = 20
    micro_batches: int | None = None
    show_progress: bool = True


def distill(net: LayerwiseNet, options: list[list], data: ImageDataset, settings: DistillSettings,
            world: World | None = None, on_step=None) -> dict:
    """Train every candidate in ``options`` (Eq. 2): per batch, the teacher (frozen, eval
    mode) gives each layer's input and output; every candidate of that layer maps the
    input and takes an MSE loss to the output; one Adam step (cosine schedule) over all
    candidates. Checkpoints (candidates, optimizer, position) go to ``settings.checkpoint``
    every ``settings.every`` steps and at the end; a call with the same arguments resumes
    from there and ends where an uninterrupted run ends. ``on_step(step, mse)`` sees each
    step's MSE per candidate (``"layer:option"``). Returns the last batch's MSE per candidate.

    Each batch is cut into ``settings.micro_batches`` slices (default: one per process of
    ``world``; :mod:`nas.training.distributed`), each weighted by its share of the batch; under
    torchrun the processes share them and add their gradients, and rank 0 alone writes
    the checkpoint. The result equals one process's with the same ``micro_batches``."""
    world = world if world is not None else World()
    if settings.epochs < 1 or settings.batch_size < 2:
        raise NASError(f"pretraining needs epochs >= 1 and batch_size >= 2, got {settings.epochs}, "
                       f"{settings.batch_size}")
    micro = n_micro, _ = world.micro_batches(settings.micro_batches, "searcher.micro_batches")
    if settings.batch_size < 2 * n_micro:
        raise NASError(f"searcher.batch_size ({settings.batch_size}) must give each of the {n_micro} micro-batches "
                       "at least 2 examples")
    net.add_candidates(options)
    trained = [(i, o) for i, opts in enumerate(options) for o in opts
               if o != net.space.reference_option and any(True for _ in net.module(i, o).parameters())]
    net.to(device=settings.device, memory_format=torch.channels_last)
    params = [p for i, o in trained for p in net.module(i, o).parameters()]
    if not params:
        return {}
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    return _Distillation(net, trained, data, settings, world, micro, optimizer).train(on_step)


class _Distillation:
    """The steps of one :func:`distill` call."""

    def __init__(self, net, trained, data, settings: DistillSettings, world: World, micro: tuple, optimizer):
        self.net, self.trained, self.data, self.settings, self.world = net, trained, data, settings, world
        self.n_micro, self.mine = micro  # how many micro-batches a step has, and this process's
        self.opt = optimizer
        self.per_epoch = max(1, len(data.train) // settings.batch_size)
        if settings.max_batches is not None:
            self.per_epoch = min(self.per_epoch, int(settings.max_batches))
        self.total = settings.epochs * self.per_epoch

    def train(self, on_step) -> dict:
        st = self.settings
        identity = {"seed": st.seed, "candidates": [(i, str(o)) for i, o in self.trained], "epochs": st.epochs,
                    "batch_size": st.batch_size, "lr": st.lr, "per_epoch": self.per_epoch,
                    "micro_batches": self.n_micro}
        saver = TrainingCheckpoint(st.checkpoint, st.every, identity, self.world)
        done, mse = 0, {}
        state = saver.load()
        if state is not None:
            self.net.candidates.load_state_dict(state["candidates"])
            self.opt.load_state_dict(state["optimizer"])
            done, mse = state["step"], state["mse"]
        self.net.teacher.eval()
        bar = tqdm(total=self.total, initial=done, desc="pretraining candidates", unit="batch",
                   disable=not st.show_progress, dynamic_ncols=True)
        saver.__enter__()  # SIGTERM: save at the end of the current step, then stop
        try:
            for step in range(done, self.total):
                mse = self.step(step)
                bar.update(1)
                bar.set_postfix(mean_mse=f"{np.mean(list(mse.values())):.4f}", refresh=False)
                if on_step is not None:
                    on_step(step, mse)
                saver.step_done(step, lambda step=step, mse=mse: {
                    "candidates": self.net.candidates.state_dict(), "optimizer": self.opt.state_dict(),
                    "step": step + 1, "mse": mse}, last=step + 1 == self.total)
        finally:
            saver.__exit__()
            bar.close()
        return mse

    def step(self, step: int) -> dict:
        """One Adam step of every candidate on the step's batch; the MSE per candidate."""
        st, net = self.settings, self.net
        epoch, s = divmod(step, self.per_epoch)
        perm = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(st.seed * 1000 + epoch))
        batch = torch.tensor_split(perm[s * st.batch_size:(s + 1) * st.batch_size], self.n_micro)
        set_lr(self.opt, cosine_lr(st.lr, step, self.total))
        self.opt.zero_grad(set_to_none=True)
        step_mse = torch.zeros(len(self.trained), dtype=torch.float64)
        with RunningStats(net.candidates, self.world, self.n_micro) as stats:
            for p in self.mine:
                x, _ = load_batch(self.data, batch[p], st.input_shape, st.device)
                with torch.no_grad():
                    acts = net.layer_inputs(x)
                losses = [F.mse_loss(net.module(i, o).train()(acts[i]), acts[i + 1]) for i, o in self.trained]
                stacked = torch.stack(losses) * (len(batch[p]) / st.batch_size)
                stacked.sum().backward()
                stats.pass_done()
                step_mse += stacked.detach().double().cpu()
        step_mse = sum_gradients(self.world, [self.opt], step_mse.tolist())
        for (i, o), value in zip(self.trained, step_mse):
            if not math.isfinite(value):
                raise NASError(f"pretraining diverged: candidate {o!r} of layer {i + 1} has loss {value} "
                               f"at step {step}; lower searcher.pretrain_lr")
        self.opt.step()
        return {f"{i}:{o}": float(v) for (i, o), v in zip(self.trained, step_mse)}


@torch.no_grad()
def loss_changes(net: LayerwiseNet, options: list[list], x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 256) -> tuple[float, list[np.ndarray]]:
    """The teacher's cross-entropy on ``(x, y)`` and, per layer, its change when that
    layer alone runs the candidate ``options[layer][j]`` (0 for the reference option)."""
    net.eval()
    base, deltas = 0.0, [np.zeros(len(opts)) for opts in options]
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        weight = len(yb) / len(y)
        acts = net.layer_inputs(xb)
        ref = F.cross_entropy(net.suffix(acts[-1]), yb).item()
        base += weight * ref
        for i, opts in enumerate(options):
            for j, option in enumerate(opts):
                if option == net.space.reference_option:
                    continue
                out = net.suffix(net.module(i, option)(acts[i]), start=i + 1)
                deltas[i][j] += weight * (F.cross_entropy(out, yb).item() - ref)
    return base, deltas
