from __future__ import annotations

import pytest
import torch

from xich.models import build_model, load_weights
from xich.synth import SynthSpec, write_synth
from xich.train import TrainConfig, train, warmup_cosine


def test_warmup_cosine_hand_computed():
    assert warmup_cosine(0, 10, 4) == pytest.approx(0.25)
    assert warmup_cosine(3, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(4, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(7, 10, 4) == pytest.approx(0.5)  # halfway through the cosine
    assert warmup_cosine(10, 10, 4) == pytest.approx(0.0)


def test_trainer_reduces_loss_and_saves_a_loadable_state_dict(tmp_path, one_torch_thread):
    write_synth(tmp_path / "data", SynthSpec(classes=2, subgroups=2, rare_fraction=0.1, train_per_class=48,
                                             test_per_subgroup=6, seed=0))
    history = train(TrainConfig(data=str(tmp_path / "data"), model="cifar:resnet20", out=str(tmp_path / "w.pt"),
                                epochs=4, batch_size=16, seed=0))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0 <= h["eval_accuracy"] <= 1 for h in history)
    model = build_model("cifar:resnet20", 2)
    load_weights(model, tmp_path / "w.pt")  # a plain state_dict that the audit can load strictly
    sd = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(sd) == set(model.state_dict())
