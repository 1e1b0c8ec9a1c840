"""The sections of the study (``bench/study.py``, docs/science.md), one module each: ``main_run`` (1-4, with
``figures``), ``nongap`` (5, on the models of ``trained``), ``heldout`` (6), ``methods`` (7, both on ``stages``),
and ``doc`` (8 and the page: science.md and science/study.json)."""
