"""The looks of a class a model may have under-learned: per-cluster signals and the rule that flags them.

The paper reads the least dominant cluster as a look the model saw little of in training (section 4, Fig. 4/5).
For a GAP → linear head that cluster is the one of lowest mean logit (``baselines.py``), which is the hard look as
often as the rare one. A look is *under-learned for want of examples* when it is both weak (the model is less
often right on it than on the class as a whole) and under-represented (its share of the training images, placed
by nearest cluster centre, is well below its share of the evaluation images). These functions compute each
candidate signal on the same clusters so that a benchmark with ground truth (``bench/rare_looks.py``) can compare
them, and the audit can lead with the one that wins.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

SIGNALS = ("least_dominant", "lowest_mean_logit", "lowest_accuracy", "lowest_margin",
           "under_represented", "weak_under_represented")
RATIO_FLAG = 0.5  # a representation ratio below this: the look is at most half as common in training as in evaluation
ALPHA = 0.05
_BASELINE_OF = {"lowest_mean_logit": "mean_logit", "lowest_accuracy": "accuracy", "lowest_margin": "mean_margin"}
OVERSAMPLE_CAP = 20.0  # the largest sampling weight an oversample file gives (a look of ratio 0.05 or less gets it)


def representation_ratio(train_counts: np.ndarray | None, eval_sizes: np.ndarray) -> np.ndarray:
    """Each cluster's training share divided by its evaluation share (Fig. 4/5 of the XICH paper as one number).

    Parameters
    ----------
    train_counts : int array (P,) — training images placed in each cluster (nearest centre); None: no training split.
    eval_sizes : int array (P,) — evaluation images in each cluster.

    Returns
    -------
    array (P,): 1 where a cluster is as common in training as in evaluation, < 1 where it is under-represented;
    NaN where the class has no training image (or ``train_counts`` is None) or the cluster no evaluation image.
    """
    eval_sizes = np.asarray(eval_sizes, dtype=np.float64)
    if train_counts is None:
        return np.full(eval_sizes.shape, np.nan)
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.shape != eval_sizes.shape or counts.ndim != 1:
        raise ValueError(f"train_counts and eval_sizes must be 1-D of one length, got {counts.shape}, {eval_sizes.shape}")
    if counts.sum() == 0 or eval_sizes.sum() == 0:
        return np.full(eval_sizes.shape, np.nan)
    eval_share = eval_sizes / eval_sizes.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(eval_sizes > 0, (counts / counts.sum()) / eval_share, np.nan)


def need(signal: str, *, scores: np.ndarray, baselines: Mapping[str, np.ndarray],
         ratio: np.ndarray) -> np.ndarray:
    """How much each cluster is in need by ``signal`` (larger = more in need); NaN where it has no value.

    ``least_dominant``: −score (eq. 7 summed); ``lowest_mean_logit`` / ``lowest_accuracy`` / ``lowest_margin``:
    −baseline; ``under_represented``: −ratio; ``weak_under_represented``: error rate × how far the cluster falls
    short of its evaluation share, (1 − accuracy) · max(0, 1 − ratio) — zero for a look as common in training as in
    evaluation, however weak.
    """
    _check_signal(signal)
    scores = np.asarray(scores, dtype=np.float64)
    ratio = np.asarray(ratio, dtype=np.float64)
    if signal == "least_dominant":
        return -scores
    if signal in _BASELINE_OF:
        return -np.asarray(baselines[_BASELINE_OF[signal]], dtype=np.float64)
    if signal == "under_represented":
        return -ratio
    accuracy = np.asarray(baselines["accuracy"], dtype=np.float64)
    return (1.0 - accuracy) * np.maximum(0.0, 1.0 - ratio)


def flag_looks(signal: str, *, scores: np.ndarray, baselines: Mapping[str, np.ndarray], ratio: np.ndarray,
               eval_sizes: np.ndarray, p_values_holm: np.ndarray | None = None,
               dominance: np.ndarray | None = None, top1: bool = False) -> list[int]:
    """The clusters ``signal`` flags, most in need first (ties: lower id first); may be empty.

    With ``top1`` the one cluster of largest :func:`need` (none if every value is NaN): a ranking always names a
    last cluster. Otherwise each signal's rule, which can flag nothing:

    - ``least_dominant``: the last cluster of the hierarchy, if it loses to another cluster with a Holm-adjusted
      p below ``ALPHA`` (needs ``p_values_holm`` and ``dominance``, P×P);
    - ``lowest_mean_logit``, ``lowest_margin``: the cluster of lowest value, if its accuracy is significantly below
      the rest of the class's (:func:`accuracy_deficit_p` < ``ALPHA``) — a mean alone has no spread to test;
    - ``lowest_accuracy``: the cluster of lowest accuracy, if that deficit is significant;
    - ``under_represented``: every cluster whose representation ratio is below ``RATIO_FLAG``;
    - ``weak_under_represented``: every under-represented cluster whose accuracy is below the class's accuracy
      over all its evaluation images.
    """
    values = need(signal, scores=scores, baselines=baselines, ratio=ratio)
    eval_sizes = np.asarray(eval_sizes, dtype=np.float64)
    if top1:
        return [] if np.all(np.isnan(values)) else [int(np.nanargmax(values))]
    accuracy = np.asarray(baselines["accuracy"], dtype=np.float64) if "accuracy" in baselines else None
    if signal in ("under_represented", "weak_under_represented"):
        keep = ~np.isnan(ratio) & (np.asarray(ratio) < RATIO_FLAG)
        if signal == "weak_under_represented":
            overall = np.nansum(accuracy * eval_sizes) / eval_sizes[~np.isnan(accuracy)].sum()
            keep &= ~np.isnan(accuracy) & (accuracy < overall)
        return _most_in_need(values, np.flatnonzero(keep))
    if np.all(np.isnan(values)):
        return []
    worst = int(np.nanargmax(values))
    if signal == "least_dominant":
        if p_values_holm is None or dominance is None:
            raise ValueError("least_dominant's rule needs p_values_holm and dominance")
        D, p = np.asarray(dominance, dtype=np.float64), np.asarray(p_values_holm, dtype=np.float64)
        loses = (D[:, worst] > 0.5) & (p[:, worst] < ALPHA)
        return [worst] if loses.any() else []
    return [worst] if accuracy_deficit_p(accuracy, eval_sizes, worst) < ALPHA else []


def accuracy_deficit_p(accuracy: np.ndarray, eval_sizes: np.ndarray, cluster: int) -> float:
    """One-sided p-value that ``cluster``'s accuracy is below that of the class's other evaluation images
    (Fisher's exact test on the 2×2 table right/wrong × this cluster/the rest); 1 where undefined."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    sizes = np.asarray(eval_sizes, dtype=np.float64)
    ok = ~np.isnan(accuracy)
    if not ok[cluster] or sizes[cluster] == 0:
        return 1.0
    right = np.rint(accuracy * sizes)
    rest = ok.copy()
    rest[cluster] = False
    n_rest, r_rest = sizes[rest].sum(), right[rest].sum()
    if n_rest == 0:
        return 1.0
    table = [[right[cluster], sizes[cluster] - right[cluster]], [r_rest, n_rest - r_rest]]
    return float(stats.fisher_exact(table, alternative="less").pvalue)


def oversample_weights(ratio: np.ndarray, flagged: list[int]) -> dict[int, float]:
    """Sampling weight for the training images of each flagged cluster: 1 / ratio, so that the look is drawn as
    often, relative to the class, as it appears in evaluation; capped at ``OVERSAMPLE_CAP`` (a look with no
    training image gets the cap, and has nothing to draw)."""
    out = {}
    for c in flagged:
        r = float(ratio[c])
        out[c] = OVERSAMPLE_CAP if not r > 1.0 / OVERSAMPLE_CAP else round(1.0 / r, 3)
    return out


def _most_in_need(values: np.ndarray, clusters: np.ndarray) -> list[int]:
    clusters = clusters[~np.isnan(values[clusters])]
    return [int(c) for c in clusters[np.lexsort((clusters, -values[clusters]))]]


def _check_signal(signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"signal {signal!r}: use one of {', '.join(SIGNALS)}")


def class_evidence(*, significant_pairs: int, scores: np.ndarray, accuracy: np.ndarray, eval_sizes: np.ndarray,
                   flagged: list[int], spearman: float | None) -> dict:
    """What one audit of a class shows, in the numbers compared with the null model's (:func:`null_comparison`).

    ``look``: the class's weakest look, the cluster of lowest accuracy (a flagged look may be rare yet learnt; the
    question here is whether the model is weak anywhere beyond what a network that knows nothing shows);
    ``accuracy_deficit``: the class's accuracy over all its evaluation images minus that look's, with its standard
    error ``deficit_se`` (the look's binomial error, with one success and one failure added so that 0 % and 100 %
    have a spread); ``looks_flagged``: how many looks the signal flags; ``score_spread``: the range of the
    hierarchy scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    sizes = np.asarray(eval_sizes, dtype=np.float64)
    scored = scores[~np.isnan(scores)]
    out = {"significant_pairs": int(significant_pairs),
           "score_spread": float(np.ptp(scored)) if scored.size > 1 else None,
           "spearman_score_train_share": spearman, "looks_flagged": len(flagged), "look": None,
           "accuracy_deficit": None, "deficit_se": None}
    known = ~np.isnan(accuracy) & (sizes > 0)
    if not known.any():
        return out
    look = int(np.flatnonzero(known)[np.argmin(accuracy[known])])
    overall = float((accuracy[known] * sizes[known]).sum() / sizes[known].sum())
    n, right = sizes[look], accuracy[look] * sizes[look]
    p = (right + 1.0) / (n + 2.0)
    out.update(look=look, accuracy_deficit=overall - float(accuracy[look]), deficit_se=float(np.sqrt(p * (1 - p) / n)))
    return out


def null_comparison(model: dict, null: dict) -> dict:
    """Where a class's evidence stands against the null model's (both from :func:`class_evidence`).

    Returns the null's numbers, the model's under ``model``, and two verdicts:
    ``above_null`` — the model's weakest look falls short of the class by more than the null's does, by more than
    twice the combined standard error: (deficit_model − deficit_null) > 2·√(se_model² + se_null²). A network that
    knows nothing is as weak on every look, so a look it also finds weak says nothing about the trained model.
    ``pairs_above_null`` — the class stands above the null and has more significant pairs than it. A hierarchy's
    significance is what any network of this architecture may get (with a GAP → linear head the clusters' mean logits
    always differ), and one null draw is a poor yardstick for it: the public ResNet-56's random-weight twin found 9
    and 8 significant pairs of 10 where the null, another random draw, found 0 and 2 (``bench/null_check.py``). So a
    count above the null's is no evidence on its own.
    """
    dm, dn = model.get("accuracy_deficit"), null.get("accuracy_deficit")
    above = (dm is not None and dn is not None
             and dm - dn > 2.0 * float(np.hypot(model["deficit_se"], null["deficit_se"])))
    return {**null, "model": dict(model), "above_null": bool(above),
            "pairs_above_null": bool(above and model["significant_pairs"] > null["significant_pairs"])}
