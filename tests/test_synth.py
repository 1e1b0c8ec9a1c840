from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from xich.errors import XichError
from xich.engine.synth import SynthSpec, rare_subgroup, write_synth

SMALL = dict(classes=3, subgroups=3, rare_fraction=0.1, train_per_class=40, test_per_subgroup=4)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    write_synth(tmp_path / "a", SynthSpec(seed=5, **SMALL))
    write_synth(tmp_path / "b", SynthSpec(seed=5, **SMALL))
    write_synth(tmp_path / "c", SynthSpec(seed=6, **SMALL))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_ground_truth_matches_files(tmp_path):
    truth = write_synth(tmp_path, SynthSpec(seed=0, **SMALL))
    assert json.loads((tmp_path / "ground_truth.json").read_text()) == truth
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert files == set(truth["subgroup"])
    assert set(truth["rare"]) == {"circle", "square", "triangle"}
    for c, (name, rare) in enumerate(sorted(truth["rare"].items(), key=lambda kv: ["circle", "square", "triangle"].index(kv[0]))):
        assert rare == rare_subgroup(c, 3)
        train = [s for path, s in truth["subgroup"].items() if path.startswith(f"train/{name}/")]
        test = [s for path, s in truth["subgroup"].items() if path.startswith(f"test/{name}/")]
        assert len(train) == 40 and train.count(rare) == 4  # 10 % of 40
        assert sorted(set(train)) == [0, 1, 2]
        assert all(test.count(s) == 4 for s in range(3))


def test_rejects_bad_spec(tmp_path):
    with pytest.raises(XichError, match="--rare-fraction"):
        write_synth(tmp_path, SynthSpec(rare_fraction=0.5))
    with pytest.raises(XichError, match="--classes"):
        write_synth(tmp_path, SynthSpec(classes=40))
