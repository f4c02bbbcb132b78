"""The training kit: what searchers and evaluators that train networks share.

The training loop and its checkpoints (``train``), in-memory data sets (``data``), several
processes training one set of weights (``distributed``), the generic supernet pieces and
the slice-local optimizer (``supernet``), relaxations for differentiable search
(``relax``), HANT's layer-wise distillation (``layerwise``), the ``train`` evaluator
(``evaluator``) and the harness every weight-training searcher runs on (``harness``).

It imports the library (``nas``), never the app (``nas.app``).
"""
