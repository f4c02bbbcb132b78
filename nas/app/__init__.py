"""The application: the Hydra CLI and its configuration (``run``, ``conf/``), plots, report,
dashboard, W&B sweeps and tracking, the LUT command line and the local PostgreSQL helper.

The commands keep their names: ``python -m nas.run`` (``nas/run.py``), ``nas.lut``,
``nas.sweep``, ``nas.dashboard`` and ``nas.report`` are two-line doors into this package.
Nothing outside it imports it.
"""
