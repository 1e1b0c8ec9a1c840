"""The benchmarks and the study behind the defaults (docs/benchmarks.md, docs/science.md).

Each ``bench/*.py`` is a script (``python bench/study.py``, ``python bench/scale.py`` ...); what they share —
the paths to ``../shared/data``, the CIFAR classes and checkpoints, the clock and the environment line — is in
``bench/shared.py``; the study's sections are the modules of ``bench/sections/``.
"""
