from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from xich.demo import locate_rare
from xich.result import AuditResult, ClassResult, ClusterResult


def _cluster(cid, rank, members, share):
    return ClusterResult(id=cid, eval_size=len(members), train_count=None, train_share=share, score=0.5, rank=rank,
                         members=members)


def test_locate_rare_hand_built():
    cls = ClassResult(index=0, name="circle", clusters=[
        _cluster(0, 0, ["circle/0.png", "circle/1.png"], 0.6),
        _cluster(1, 2, ["circle/2.png", "circle/3.png", "circle/4.png"], 0.1),
        _cluster(2, 1, ["circle/5.png"], 0.3)],
        dominance=[[None, 0.8, 0.6], [0.2, None, 0.4], [0.4, 0.6, None]], dominance_ci=[], p_values=[],
        p_values_holm=[[1.0, 0.01, 0.2], [0.01, 1.0, 0.03], [0.2, 0.03, 1.0]], distinct_sets=[], hierarchy=[0, 2, 1],
        spearman_score_train_share=None,
        excluded_mosaics=0, mosaics=[])
    result = AuditResult(run_id="r", model={}, labels={}, dataset={"eval_split": "test"}, config={}, classes=[cls],
                         summary={})
    truth = {"rare": {"circle": 1},
             "subgroup": {"test/circle/0.png": 0, "test/circle/1.png": 1, "test/circle/2.png": 1,
                          "test/circle/3.png": 1, "test/circle/4.png": 2, "test/circle/5.png": 2}}
    [f] = locate_rare(result, truth)
    assert (f.cluster, f.rare_in_cluster, f.rare_total, f.rank, f.train_share) == (1, 2, 3, 2, 0.1)
    assert f.losses == 2  # clusters 0 (D 0.8, p 0.01) and 2 (D 0.6, p 0.03) beat it; none else significant
    assert f.found  # rank 2 of 3: second-least dominant


def test_demo_end_to_end_records_v1_and_v2_on_one_clustering(tmp_path):
    """The whole demo, small and short (2 shapes x 2 looks, 1 epoch), in its own process (it starts
    Prefect's ephemeral server): two versions through the audit flow, v2 on v1's frozen clustering."""
    script = (
        "import sys; from xich.demo import run_demo; from xich.engine.synth import SynthSpec; "
        "run_demo(sys.argv[1], epochs=1, say=print, "
        "spec=SynthSpec(classes=2, subgroups=2, rare_fraction=0.1, train_per_class=20, test_per_subgroup=6))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "XICH_"))}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=600, env={**env, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "6/6 history of the rare looks' clusters" in done.stdout
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert sorted(summary["findings"]) == ["v1", "v2"] and summary["classes"] == 2
    with sqlite3.connect(tmp_path / "demo" / "xich.db") as db:
        runs = db.execute("SELECT mv.version, r.status, r.clustering_id FROM audit_run r "
                          "JOIN model_version mv ON mv.id = r.model_version_id ORDER BY mv.version").fetchall()
        frozen = db.execute("SELECT id FROM clustering WHERE frozen").fetchall()
    assert [(v, s) for v, s, _ in runs] == [("v1", "complete"), ("v2", "complete")]
    assert runs[0][2] == runs[1][2] == frozen[0][0]  # v2 audited on v1's frozen clusters
    page = (tmp_path / "demo" / "report" / "index.html").read_text()
    assert "../history/index.html" in page and (tmp_path / "demo" / "history" / "index.html").is_file()
    for link in re.findall(r"href='(file://[^']+)'", page):  # both versions' reports, in the demo's store
        assert Path(urlparse(link).path).is_file(), link
    assert len(re.findall(r"href='file://", page)) == 2
