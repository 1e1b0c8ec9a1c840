"""The audit's own stages on clusters a section chooses (sections 6 and 7): a public or trained CIFAR model
opened at the study's settings, J mosaics per pair scored by several models on the same mosaics, and the small
statistics both sections take of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from bench.sections.trained import trained_models
from bench.shared import WEIGHTS
from xich.engine.audit import AuditConfig, OpenedAudit, open_audit, rank_clusters, score_mosaics_with
from xich.engine.runtime import PreparedModel
from xich.method.baselines import kendall_tau
from xich.method.mosaic import plan_mosaics
from xich.method.significance import significant_pairs

def open_public(data: Path, model: str, classes: tuple[str, ...], clusters: int, j: int, seed: int,
                method: str = "gradcam", control: bool = False, cache: Path | None = None) -> OpenedAudit:
    """A public CIFAR ResNet at the package's defaults (native tiles: 64-px mosaics), or one of the study's trained
    models (``resnet20-flat``, ``resnet20-mlp``, ``vit``: from ``cache``, trained there first if absent; their
    32-px mosaics, the only input size they take)."""
    if model in WEIGHTS:
        weights = data / "cifar-resnet" / WEIGHTS[model]
    else:
        weights = trained_models(data, cache=cache, specs=(f"cifar:{model}",))[f"cifar:{model}"]
    return open_audit(AuditConfig(model=f"cifar:{model}", weights=str(weights), data=str(data / "cifar10-jpeg"),
                                  clusters=clusters, mosaics_per_pair=j, seed=seed, classes=classes, device="cpu",
                                  method=method, control=control))


def score_clusters(opened: OpenedAudit, models: dict[str, PreparedModel], tiles, labels: np.ndarray, n: int,
                   index: int, seed: int) -> dict:
    """J mosaics per pair of the clusters ``labels`` (seeded by [seed, class index], as the audit plans them),
    scored by every model on the same mosaics → key → PairStatistics."""
    plan = plan_mosaics(labels, n, opened.config.mosaics_per_pair, np.random.default_rng([seed, index]))
    ds = score_mosaics_with(opened, models, tiles, plan, index)
    return {k: rank_clusters(plan, d, n) for k, d in zip(models, ds)}


def _floats(a) -> list[float | None]:
    return [None if v is None or np.isnan(v) else float(v) for v in np.asarray(a, dtype=float)]


def _tau(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    return None if ok.sum() < 2 else _floats([kendall_tau(a[ok], b[ok])])[0]


def _rho(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def _sig(st) -> set[tuple[int, int]]:
    return {tuple(p) for p in significant_pairs(st.D, st.p_holm)}

