"""The looks an audit flags, their oversample file, and the null model: computed once per (spec, dataset, settings,
null seed) and reused by every version; both through every sink (JSON, database, report, artifact)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from builders import context_for, numbers, recorded, resnet20_config
from toy_nets import brightness_config, write_grey_tiles
from xich.engine.audit import null_seed, run_audit
from xich.engine.models import build_model
from xich.engine.train import read_oversample, sampling_weights
from xich.records.db import make_engine
from xich.records.persist import load_audit
from xich.reports.report import class_table, write_report
from xich.reports.summary import summary_markdown
from xich.result import AuditResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one class "tile": three looks of 3 evaluation images each (grey 20, 120, 220); in training the bright look is rare
EVAL_LEVELS = [20] * 3 + [120] * 3 + [220] * 3
TRAIN_LEVELS = [20] * 8 + [120] * 8 + [220]


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    return write_grey_tiles(tmp_path_factory.mktemp("grey"), {"test": EVAL_LEVELS, "train": TRAIN_LEVELS})


def test_the_rare_look_is_flagged_with_its_training_images_and_weight(grey):
    result = run_audit(brightness_config(grey, looks="under_represented"))
    cls = result.classes[0]
    bright = next(c.id for c in cls.clusters if "tile/06.png" in c.members)
    # training share 1/17 against an evaluation share 3/9: ratio 3/17, weight 17/3
    assert [c.representation_ratio for c in cls.clusters if c.id == bright] == [pytest.approx(3 / 17)]
    assert cls.looks["flagged"] == [bright]
    look = cls.looks["looks"][0]
    assert look["train_images"] == ["tile/16.png"] and look["oversample_weight"] == pytest.approx(17 / 3, abs=1e-3)
    assert look["examples"] == ["tile/06.png", "tile/07.png", "tile/08.png"]
    assert result.oversample() == {"tile/16.png": look["oversample_weight"]}
    # the brightness net's constructor sets fixed weights: no null model, and the document says why
    assert cls.null is None and any("no null model" in n for n in result.notes)


def test_the_oversample_file_of_an_audit_is_what_xich_train_takes(grey, tmp_path):
    out = tmp_path / "oversample.json"
    cli = [sys.executable, "-m", "xich.cli"]
    done = subprocess.run([*cli, "audit", "--model", "python:toy_nets:brightness", "--data", str(grey),
                           "--clusters", "3", "--mosaics-per-pair", "4", "--normalize", "none", "--no-control",
                           "--looks", "under_represented", "--no-db", "--oversample-out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "looks under-learned (under_represented): cluster" in done.stdout
    weights = read_oversample(out)
    assert list(weights) == ["tile/16.png"]
    ids = [f"tile/{k:02d}.png" for k in range(len(TRAIN_LEVELS))]
    drawn = sampling_weights(ids, weights)
    assert drawn[16] == pytest.approx(17 / 3, abs=1e-3) and float(drawn[:16].sum()) == 16.0
    done = subprocess.run([*cli, "train", "--data", str(grey), "--model", "cifar:resnet20", "--out",
                           str(tmp_path / "v2.pt"), "--epochs", "1", "--oversample", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "v2.pt").is_file()


def _weights(tmp_path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    path = tmp_path / f"w{seed}.pt"
    torch.save(build_model("cifar:resnet20", 3).state_dict(), path)
    return str(path)


def _null_runs(url: str) -> list[tuple[str, str]]:
    with make_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT r.id, r.config_hash FROM audit_run r JOIN model_version mv ON mv.id = r.model_version_id "
            "JOIN model m ON m.id = mv.model_id WHERE m.name = 'null:cifar:resnet20' ORDER BY r.id"))]


def test_the_null_is_stored_once_and_reused_by_a_new_version_but_not_by_new_data_or_settings(
        synth_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    config = resnet20_config(synth_data, clusters=2, mosaics_per_pair=3, control=False, classes=("circle",))
    v1 = recorded(config.__class__(**{**config.__dict__, "weights": _weights(tmp_path, 1)}), url,
                  model_name="m", model_version="v1")
    assert any("null model: run" in n and "computed" in n for n in v1.notes)
    assert len(_null_runs(url)) == 1
    v2 = recorded(config.__class__(**{**config.__dict__, "weights": _weights(tmp_path, 2)}), url,
                  model_name="m", model_version="v2")
    assert any("stored, reused" in n for n in v2.notes) and v2.timings.get("null_s", 0) < v1.timings["null_s"]
    assert len(_null_runs(url)) == 1
    null_of = lambda r: {k: v for k, v in r.classes[0].null.items() if k not in ("model", "above_null",
                                                                                 "pairs_above_null")}
    assert null_of(v1) == null_of(v2) and v1.classes[0].null["model"] != v2.classes[0].null["model"]
    assert v1.config["null_seed"] == null_seed(0)
    # another setting: another null
    recorded(config.__class__(**{**config.__dict__, "weights": _weights(tmp_path, 2), "mosaics_per_pair": 4}), url,
             model_name="m", model_version="v2")
    assert len(_null_runs(url)) == 2
    # other data (one evaluation image less): another null
    other = tmp_path / "other"
    shutil.copytree(synth_data, other)
    next((other / "test" / "circle").iterdir()).unlink()
    recorded(config.__class__(**{**config.__dict__, "data": str(other), "weights": _weights(tmp_path, 2)}), url,
             model_name="m", model_version="v2")
    assert len(_null_runs(url)) == 3
    # the null seed is part of the key: another audit seed, another null
    recorded(config.__class__(**{**config.__dict__, "weights": _weights(tmp_path, 2), "seed": 1}), url,
             model_name="m", model_version="v2")
    assert len(_null_runs(url)) == 4


def test_looks_and_null_through_every_sink(synth_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    config = resnet20_config(synth_data, clusters=3, mosaics_per_pair=3, control=False, looks="lowest_accuracy",
                             weights=_weights(tmp_path, 3))
    result = recorded(config, url, model_name="m", model_version="v1")
    assert all(c.looks and c.null for c in result.classes)
    # JSON and database round trips
    assert AuditResult.from_dict(json.loads(result.to_json())).to_dict() == result.to_dict()
    ctx = context_for(url)
    with ctx.session() as session:
        stored = load_audit(session=session, run_id=result.run_id)
    assert [(c.looks, c.null) for c in stored.classes] == [(c.looks, c.null) for c in result.classes]
    assert [[k.representation_ratio for k in c.clusters] for c in stored.classes] == \
           [[k.representation_ratio for k in c.clusters] for c in result.classes]
    with make_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT class_name, looks_signal, above_null FROM dominance_history "
                                 "WHERE model_name = 'm' GROUP BY class_name, looks_signal, above_null")).all()
    assert sorted(rows) == sorted((c.name, "lowest_accuracy", c.null["above_null"]) for c in result.classes)
    # the report and the Prefect artifact lead with them
    page = write_report(result, tmp_path / "report").read_text()
    assert page.count("<p class='looks'><b>Looks under-learned</b>") == len(result.classes)
    assert page.count("<p class='null'>Against the null model") == len(result.classes)
    assert page.index("<p class='looks'>") < page.index("The paper's view: dominance")
    for row, cls in zip(class_table(result), result.classes):  # the Prefect table artifact
        assert row["looks under-learned"].startswith("lowest_accuracy: ")
        assert row["against the null model"].startswith("above" if cls.null["above_null"] else "no better")
    markdown = summary_markdown(result, model="m", version="v1", report_uri=None)
    assert "Looks under-learned (lowest_accuracy)" in markdown and "Above the null model" in markdown
    above = sum(c.null["above_null"] for c in result.classes)
    assert f"{above} of {len(result.classes)} class(es)" in markdown


def test_a_complete_run_read_back_keeps_its_looks_and_null(synth_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    config = resnet20_config(synth_data, clusters=2, mosaics_per_pair=3, control=False, classes=("square",))
    first = recorded(config, url, model_name="m", model_version="v1")
    again = recorded(config, url, model_name="m", model_version="v1")
    assert numbers(again) == numbers(first)
