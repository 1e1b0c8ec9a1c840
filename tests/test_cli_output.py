"""The console output outside a terminal (a CI log, `nohup`, a Prefect worker's log): tables at full width, every
number as the audit document has it, none cut to `…` (issue 26). The CLI runs in its own process, its standard
output a pipe, as in a log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def test_piped_audit_prints_every_number_of_the_document(synth_data, tmp_path):
    doc = tmp_path / "audit.json"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("XICH_", "COLUMNS"))},
           "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", "XICH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "xich.cli", "audit", "--model", "cifar:resnet20", "--data",
                           str(synth_data), "--clusters", "3", "--mosaics-per-pair", "3", "--device", "cpu", "--no-db",
                           "--json", str(doc)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "…" not in printed and "..." not in printed
    result = json.loads(doc.read_text())
    rows = {tuple(cell.strip() for cell in line.strip().strip("│┃").split("│")) for line in printed.splitlines()
            if line.lstrip().startswith("│")}
    for cls in result["classes"]:
        control = (cls.get("control") or {}).get("scores")
        for c in cls["clusters"]:
            b = c.get("baselines") or {}
            flagged = cls["looks"]["flagged"]
            want = (_f(c["rank"], "d"), str(c["id"]), str(flagged.index(c["id"]) + 1) if c["id"] in flagged else "",
                    _f(c["score"]), str(c["eval_size"]), _f(c["train_count"], "d"), _f(c["train_share"]),
                    _f(c["representation_ratio"], ".2f"),
                    *((_f(b["mean_logit"]), _f(b["mean_softmax"]), _f(b["accuracy"]), _f(b["mean_margin"])) if b else ()),
                    *((_f(control[c["id"]]),) if control else ()))
            assert want in rows, (want, printed)
    assert len(rows) == sum(len(cls["clusters"]) for cls in result["classes"])
