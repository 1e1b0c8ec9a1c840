"""The one result type of an audit: plain dataclasses that every sink (JSON, report, database) reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


Explainer = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # image ids (TL, TR, BL, BR) -> (rgb, cam)


@dataclass
class ClusterResult:
    id: int
    eval_size: int
    train_count: int | None
    train_share: float | None
    score: float
    rank: int
    members: list[str]


@dataclass
class MosaicResult:
    """One mosaic's manifest; ``d`` is the dominance of ``pair[0]`` over ``pair[1]`` (None if excluded)."""

    pair: list[int]
    images: list[str]
    clusters: list[int]
    d: float | None


@dataclass
class ClassResult:
    index: int
    name: str
    clusters: list[ClusterResult]
    dominance: list[list[float]]
    p_values: list[list[float]]
    p_values_holm: list[list[float]]
    hierarchy: list[int]
    spearman_score_train_share: float | None
    excluded_mosaics: int
    mosaics: list[MosaicResult]
    notes: list[str] = field(default_factory=list)
    per_image: dict | None = None


@dataclass
class AuditResult:
    run_id: str
    model: dict
    dataset: dict
    config: dict
    classes: list[ClassResult]
    summary: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """The audit document; never contains NaN."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        """Write the JSON document atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
