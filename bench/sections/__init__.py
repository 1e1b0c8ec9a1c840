"""The sections of the study (``bench/study.py``, docs/science.md), one module each: ``main_run`` (1-4, with
``figures``), ``nongap`` (5, on the models of ``trained``), ``heldout`` (6), ``methods`` (7, both on ``stages``),
and ``doc`` (8 and the page: science.md and science/study.json); section 9, the rare-look benchmark
(``bench/rare_looks.py``): ``rare_looks`` (cases, models, audits, peers), ``rare_looks_report`` (its tables, which
it splices into science.md itself) and ``rare_looks_metrics``."""
