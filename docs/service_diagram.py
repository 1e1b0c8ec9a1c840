"""Draw docs/service.png, the production shape of XICH (rerun after changing the service's parts)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, w, h, colour, text)
    "registry": (0.3, 6.0, 3.0, 1.3, "#f2e6ff", "model registry\n(MLflow)\nnew version → webhook"),
    "cli": (0.3, 3.9, 3.0, 1.3, "#f2e6ff", "xich register / audit\n(ML team, CI)"),
    "prefect": (4.6, 5.0, 3.6, 2.3, "#e6f0ff", "Prefect server\nschedules: nightly\naudit-new-versions\nUI: runs, artifacts"),
    "pool": (4.6, 2.2, 3.6, 2.0, "#e6f0ff", "work pool xich-gpu\n(docker; or xich-process)\nqueued flow runs"),
    "w1": (9.4, 4.3, 3.2, 1.3, "#e8f7e8", "GPU worker 1\naudit-model-version\nshard 0 (+ finish)"),
    "w2": (9.4, 2.5, 3.2, 1.3, "#e8f7e8", "GPU worker 2\naudit-model-version\nshard 1"),
    "store": (9.4, 0.2, 3.2, 1.6, "#fff3d6", "object store (MinIO / S3)\ndatasets, weights,\nreports, audit.json"),
    "db": (4.6, 0.0, 3.6, 1.6, "#ffe6e6", "results database\n(PostgreSQL; SQLite embedded)\nviews: dominance_history …"),
    "sql": (0.3, 0.2, 3.0, 1.3, "#f2e6ff", "SQL, dashboards,\nxich history"),
}
ARROWS = [("registry", "cli", "hook → register"), ("cli", "prefect", "run_deployment"),
          ("prefect", "pool", "flow runs"), ("pool", "w1", ""), ("pool", "w2", "shards"),
          ("w1", "prefect", "artifacts"), ("store", "w2", "data, weights (ETag cache); report"),
          ("w2", "db", "classes"), ("w1", "db", "classes, summary"), ("db", "sql", "SQL")]


def centre(name: str) -> tuple[float, float]:
    x, y, w, h, *_ = BOXES[name]
    return x + w / 2, y + h / 2


def draw(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 7.4))
    ax.set_xlim(0, 12.8)
    ax.set_ylim(-0.2, 7.5)
    ax.axis("off")
    patches = {}
    for name, (x, y, w, h, colour, text) in BOXES.items():
        patches[name] = ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#444"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10, zorder=3)
    for a, b, label in ARROWS:
        (x0, y0), (x1, y1) = centre(a), centre(b)
        # clipped to the boxes' outlines, so arrows run between boxes and never across their text
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14, color="#555",
                                     patchA=patches[a], patchB=patches[b], shrinkA=2, shrinkB=2))
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, ha="center", va="center", fontsize=8.5, color="#333",
                    bbox=dict(fc="white", ec="none", alpha=0.9), zorder=4)
    ax.set_title("XICH in production: registry → Prefect → GPU workers → PostgreSQL + object store", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    draw(Path(__file__).with_name("service.png"))
