from __future__ import annotations

import numpy as np
import pytest
import torch

from xich.errors import XichError
from xich.models import build_model, load_weights
from xich.synth import ORIENTATIONS, SIZE, SynthSpec, _hatching, draw_image, write_synth
from xich.train import TrainConfig, augment_batch, train, warmup_cosine


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
