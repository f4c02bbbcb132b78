"""The ``train`` evaluator: every candidate trained from scratch on the run's data set."""

from __future__ import annotations

import torch
from torch import nn

from nas.errors import NASError
from nas.evaluators import Evaluator, Score, TrainingRecipe, arch_seed
from nas.registry import register_evaluator
from nas.training.data import as_image_dataset
from nas.training.train import OPTIMIZERS, check_precision, resolve_device, train


@register_evaluator("train")
class TrainEvaluator(Evaluator):
    """Short training from scratch on the run's data set; quality = validation accuracy."""

    needs_data = True

    def __init__(self, epochs: int = 2, batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 5e-4, device: str = "auto", seed: int = 0,
                 precision: str = "float32"):
        if epochs < 1:
            raise NASError(f"evaluator.epochs must be >= 1, got {epochs}")
        if batch_size < 2:
            raise NASError(f"evaluator.batch_size must be >= 2, got {batch_size}")
        if lr <= 0:
            raise NASError(f"evaluator.lr must be > 0, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise NASError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(map(repr, OPTIMIZERS))}")
        resolved = resolve_device(device)
        check_precision(precision, resolved)
        self.recipe = TrainingRecipe(epochs, batch_size, optimizer, lr, momentum, weight_decay, resolved, precision)
        self.seed = seed

    def bind(self, space, data=None):
        # a torch Dataset (or a pair) from Python becomes an ImageDataset read per batch
        super().bind(space, None if data is None else as_image_dataset(data))
        self.data.check_model_input(space.input_shape, space.num_classes)

    def evaluate(self, space, arch, teacher: nn.Module | None = None, distill_weight: float = 0.0,
                 temperature: float = 1.0):
        """Train ``arch`` from scratch; with a ``teacher``, with knowledge distillation from
        it (see :func:`nas.training.train.train`)."""
        s = arch_seed(self.seed, arch)
        torch.manual_seed(s)
        model = space.build(arch)
        metrics = train(model, self.data, space.input_shape, self.recipe, s, teacher=teacher,
                        distill_weight=distill_weight, temperature=temperature)
        return Score(metrics["accuracy"], metrics, model.cpu())
