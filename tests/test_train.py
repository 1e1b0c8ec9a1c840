from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xich.engine.datasets import open_dataset
from xich.errors import XichError
from xich.engine.models import build_model, load_weights
from xich.engine.synth import (ORIENTATIONS, SIZE, SynthSpec, _hatching, balancing_factor, draw_image, oversampling_weights,
                        rare_counts, write_synth)
from xich.engine.train import (TrainConfig, augment_batch, epoch_indices, read_oversample, sampling_weights, train,
                        warmup_cosine)


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


# --- augmentations and the hatching orientation of synth's looks -------------------------------------------

def _frequencies() -> dict[str, tuple[int, int]]:
    """The spatial frequency (ky, kx) of each of synth's hatching orientations, read off its own renderer."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = {}
    for o in ORIENTATIONS:
        power = np.abs(np.fft.fft2(_hatching(o, xx, yy).astype(float))) ** 2
        power[0, 0] = 0
        out[o] = tuple(int(v) for v in np.unravel_index(power.argmax(), power.shape))
    assert len(set(out.values())) == len(out)
    return out


def _dominant_orientation(x: torch.Tensor) -> list[str]:
    """Per image of ``x`` (N, 3, H, W): the hatching orientation that paints most of it — the one whose
    frequency carries the most energy, in the image projected on its main colour axis (foreground vs
    background). A hatching's amplitude there is proportional to the number of pixels it paints."""
    freqs = _frequencies()
    flat = x.flatten(2).double()
    centred = flat - flat.mean(2, keepdim=True)
    axis = torch.linalg.svd(centred @ centred.transpose(1, 2)).U[:, :, 0]
    gray = torch.einsum("nc,nchw->nhw", axis, x.double())
    amp = torch.fft.fft2(gray).abs()
    energy = torch.stack([amp[:, ky, kx] for ky, kx in freqs.values()], 1)
    return [list(freqs)[i] for i in energy.argmax(1).tolist()]


@pytest.fixture(scope="module")
def synth_batch() -> tuple[torch.Tensor, list[str]]:
    """Real synth images: 10 per (class, look), 4 classes x 4 looks, and each image's look orientation."""
    spec = SynthSpec()
    rng = np.random.default_rng(0)
    images, looks = [], []
    for c in range(spec.classes):
        for s, orientation in enumerate(ORIENTATIONS):
            for _ in range(10):
                images.append(np.asarray(draw_image(c, s, spec, rng)))
                looks.append(orientation)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, looks


def test_orientation_measure_reads_synth_ground_truth(synth_batch):
    x, looks = synth_batch
    # the background (the look's perpendicular orientation) paints more of an image than the shape
    assert _dominant_orientation(x) == [ORIENTATIONS[o] for o in looks]


@pytest.mark.parametrize("augment", ["none", "rot180"])
def test_look_preserving_augmentations_keep_every_orientation(synth_batch, augment):
    x, _ = synth_batch
    before = _dominant_orientation(x)
    for seed in range(3):
        y = augment_batch(x.clone(), augment, torch.Generator().manual_seed(seed))
        changed = sum(not torch.equal(a, b) for a, b in zip(x, y))
        assert changed == 0 if augment == "none" else 0.3 * len(x) < changed < 0.7 * len(x)
        assert _dominant_orientation(y) == before


def test_hflip_swaps_the_diagonal_looks(synth_batch):
    """The counter-check: the measure sees hflip turn a diagonal look's hatching into the other diagonal's."""
    x, looks = synth_batch
    before = _dominant_orientation(x)
    y = augment_batch(x.clone(), "hflip", torch.Generator().manual_seed(0))
    after = _dominant_orientation(y)
    swap = {"diagonal": "antidiagonal", "antidiagonal": "diagonal", "horizontal": "horizontal",
            "vertical": "vertical"}
    flipped = [not torch.equal(a, b) for a, b in zip(x, y)]
    assert sum(f and o in ("diagonal", "antidiagonal") for f, o in zip(flipped, looks)) >= 20
    for b, a, f in zip(before, after, flipped):
        assert a == (swap[b] if f else b)


def test_unknown_augmentation_is_refused(tmp_path):
    with pytest.raises(XichError, match="--augment must be one of none, hflip, rot180"):
        train(TrainConfig(data=str(tmp_path), model="cifar:resnet20", out=str(tmp_path / "w.pt"), augment="vflip"))


# --- oversampling ------------------------------------------------------------------------------------------

def test_epoch_without_weights_is_a_permutation():
    perm = epoch_indices(50, None, torch.Generator().manual_seed(3))
    assert sorted(perm.tolist()) == list(range(50))


def test_weighted_epoch_draw_frequencies_match_the_weights():
    """4 images weighing 1, 2, 3 and 6: over 300 epochs of 4 draws (1200 draws) each is drawn in proportion to its
    weight — 1/12, 2/12, 3/12, 6/12 — within 4 binomial standard deviations (hand-computed bound)."""
    weights = sampling_weights(["a", "b", "c", "d"], {"b": 2, "c": 3.0, "d": 6})
    assert weights.tolist() == [1.0, 2.0, 3.0, 6.0]
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([epoch_indices(4, weights, gen) for _ in range(300)])
    assert all(len(e) == 4 for e in draws.split(4))
    counts = torch.bincount(draws, minlength=4).double()
    expected = torch.tensor([1, 2, 3, 6], dtype=torch.float64) / 12
    sd = (expected * (1 - expected) / len(draws)).sqrt()
    assert ((counts / len(draws) - expected).abs() < 4 * sd).all(), counts.tolist()
    # weights 0 < w: every image can be drawn, and an image weighing 6 is drawn far more than one weighing 1
    assert counts.min() > 0 and counts[3] > 3 * counts[0]


def test_weighted_epoch_is_drawn_with_replacement_and_keeps_its_length():
    weights = sampling_weights([f"c/{k}.png" for k in range(10)], {"c/0.png": 1000})
    epoch = epoch_indices(10, weights, torch.Generator().manual_seed(0))
    assert len(epoch) == 10 and (epoch == 0).sum() >= 8  # 0.99 a draw: the heavy image repeats


def test_weighted_epochs_are_deterministic_by_seed():
    weights = sampling_weights(list("abcdefgh"), {"a": 5, "h": 0.5})
    one = [epoch_indices(8, weights, torch.Generator().manual_seed(7)) for _ in range(2)]
    other = epoch_indices(8, weights, torch.Generator().manual_seed(8))
    assert torch.equal(one[0], one[1])
    assert not torch.equal(one[0], other)


@pytest.mark.parametrize("oversample, message", [
    ({"circle/9999.png": 2}, r"--oversample: 1 id\(s\) not among the training images of the trained classes "
                             r"\(e.g. 'circle/9999.png'\); name training images as the dataset does, class folder "
                             r"and file, e.g. 'circle/0000.png'"),
    ({"train/circle/0000.png": 2}, "not among the training images"),  # ground_truth.json's key, not the dataset id
    ({"circle/0000.png": 0}, r"--oversample: the weight of 'circle/0000.png' is 0; weights must be finite numbers "
                             r"above 0"),
    ({"circle/0000.png": -1.5}, "weights must be finite numbers above 0"),
    ({"circle/0000.png": float("nan")}, "weights must be finite numbers above 0"),
    ({"circle/0000.png": float("inf")}, "weights must be finite numbers above 0"),
    ({"circle/0000.png": "8"}, "the weight of 'circle/0000.png' is '8'"),
    ({"circle/0000.png": True}, "weights must be finite numbers above 0"),
])
def test_bad_oversampling_weights_are_refused_before_training(tmp_path, oversample, message):
    write_synth(tmp_path / "data", SynthSpec(classes=2, subgroups=2, rare_fraction=0.1, train_per_class=10,
                                             test_per_subgroup=2))
    with pytest.raises(XichError, match=message):
        train(TrainConfig(data=str(tmp_path / "data"), model="cifar:resnet20", out=str(tmp_path / "w.pt"),
                          oversample=oversample))
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("content, message", [
    (None, r"--oversample .*missing.json: cannot read it"),
    ("{not json", r"--oversample .*: not JSON"),
    ('["circle/0000.png"]', r"--oversample .*: a JSON list, not an object"),
])
def test_bad_oversample_file_is_refused(tmp_path, content, message):
    path = tmp_path / ("missing.json" if content is None else "w.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(XichError, match=message):
        read_oversample(path)


def test_oversample_file_reads_back(tmp_path):
    (tmp_path / "w.json").write_text('{"circle/0000.png": 8, "square/0003.png": 0.5}')
    assert read_oversample(tmp_path / "w.json") == {"circle/0000.png": 8, "square/0003.png": 0.5}


def test_oversampling_weights_name_exactly_the_rare_looks_training_images(tmp_path):
    spec = SynthSpec(classes=3, subgroups=3, rare_fraction=0.1, train_per_class=30, test_per_subgroup=2, seed=1)
    truth = write_synth(tmp_path / "data", spec)
    weights = oversampling_weights(truth, 8)
    rare = {rel.removeprefix("train/") for rel, s in truth["subgroup"].items()
            if rel.startswith("train/") and s == truth["rare"][rel.split("/")[1]]}
    assert set(weights) == rare and len(rare) == 3 * rare_counts(spec)[0] == 9
    assert set(weights.values()) == {8.0}
    assert all((tmp_path / "data" / "train" / k).is_file() for k in weights)  # ids as the dataset names them
    sampling_weights([i for ids in open_dataset(str(tmp_path / "data"), "test", "train").splits["train"].images.values()
                      for i in ids], weights)  # accepted by the trainer's check
    with pytest.raises(XichError, match="oversampling factor must be a finite number above 0, got 0"):
        oversampling_weights(truth, 0)


def test_balancing_factor_draws_the_rare_look_as_often_as_each_other_look():
    spec = SynthSpec()  # the demo's: 6 rare-look images and 194 of 3 other looks per class
    assert rare_counts(spec) == (6, pytest.approx(194 / 3))
    factor = balancing_factor(spec)
    assert factor == pytest.approx(194 / 3 / 6)
    assert factor * 6 / (factor * 6 + 194) == pytest.approx(1 / spec.subgroups)


def test_oversampled_training_is_deterministic_and_differs_from_plain(tmp_path, one_torch_thread):
    spec = SynthSpec(classes=2, subgroups=2, rare_fraction=0.1, train_per_class=24, test_per_subgroup=4)
    truth = write_synth(tmp_path / "data", spec)
    weights = oversampling_weights(truth, 6)

    def fit(name, oversample):
        history = train(TrainConfig(data=str(tmp_path / "data"), model="cifar:resnet20", out=str(tmp_path / name),
                                    epochs=1, batch_size=16, seed=0, augment="rot180", oversample=oversample))
        return history, torch.load(tmp_path / name, weights_only=True)

    h1, a = fit("a.pt", weights)
    h2, b = fit("b.pt", dict(weights))
    _, plain = fit("plain.pt", None)
    assert h1 == h2
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a if a[k].is_floating_point())


def test_cli_train_oversample_trains_as_the_config_does(tmp_path, capsys, one_torch_thread):
    from xich.cli import main

    spec = SynthSpec(classes=2, subgroups=2, rare_fraction=0.1, train_per_class=24, test_per_subgroup=4)
    truth = write_synth(tmp_path / "data", spec)
    weights = oversampling_weights(truth, 6)
    (tmp_path / "w.json").write_text(json.dumps(weights))
    common = ["--data", str(tmp_path / "data"), "--model", "cifar:resnet20", "--epochs", "1", "--batch-size", "16",
              "--augment", "rot180"]
    assert main(["train", *common, "--out", str(tmp_path / "cli.pt"), "--oversample", str(tmp_path / "w.json")]) == 0
    train(TrainConfig(data=str(tmp_path / "data"), model="cifar:resnet20", out=str(tmp_path / "api.pt"), epochs=1,
                      batch_size=16, augment="rot180", oversample=weights))
    cli, api = (torch.load(tmp_path / n, weights_only=True) for n in ("cli.pt", "api.pt"))
    assert all(torch.equal(cli[k], api[k]) for k in cli)

    (tmp_path / "bad.json").write_text(json.dumps({"circle/0000.png": -1}))
    capsys.readouterr()
    assert main(["train", *common, "--out", str(tmp_path / "bad.pt"), "--oversample", str(tmp_path / "bad.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: --oversample: the weight of 'circle/0000.png' is -1" in err
    assert not (tmp_path / "bad.pt").exists()
