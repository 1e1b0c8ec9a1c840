"""The direction of dominance end to end, on a shift planted in real data: an answer known without the code.

A quarter of CIFAR-10's test horses are turned upside down. The pretrained ResNet-20 never saw an upside-down
horse, so on a mosaic it finds less "horse" in those quadrants: the cluster that holds them must come out
least dominant, by a margin, through the CLI and through the Prefect flow. A reversed mask in the dominance
(D[i, j] read as j over i) puts it at the top instead. Then each stored per-mosaic d is recomputed from the
manifest with pytorch-grad-cam's own ``GradCAM`` and the paper's quadrant formula (eq. 5–6) written out here.

Measured (P = 3, J = 10, 200 horses, seed 0, CPU): the upside-down cluster scores 0.27, the next 0.51
(margin 0.24); 35 of its 47 images are upside down; the CLI audit takes ~8 s.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shared_data
from xich.cli import main

pytestmark = [pytest.mark.shared_data, shared_data.skip_without]

CLASS, N_IMAGES, EVERY, P, J = "horse", 200, 4, 3, 10  # image k of the class is upside down when k % EVERY == 0
MARGIN = 0.1  # measured 0.24 (CLI and flow); the score gap to the next cluster must exceed this
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the checkpoints' ImageNet normalisation (data README)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, set[str]]:
    """``<root>/test/horse/*.png``: the first 200 test horses, every 4th turned 180°; and the turned images' ids.

    Every image is decoded and written as PNG, turned or not, so the two groups differ only in orientation.
    """
    root = tmp_path_factory.mktemp("planted")
    turned = set()
    with tarfile.open(shared_data.CIFAR10 / "test.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.name.startswith(f"test/{CLASS}/")), key=lambda m: m.name)
        assert len(members) == 1000
        for k, member in enumerate(members[:N_IMAGES]):
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            image_id = f"{CLASS}/{Path(member.name).stem}.png"
            if k % EVERY == 0:
                image = image.transpose(Image.Transpose.ROTATE_180)
                turned.add(image_id)
            (root / "test" / image_id).parent.mkdir(parents=True, exist_ok=True)
            image.save(root / "test" / image_id)
    return root, turned


@pytest.fixture(scope="module")
def cli_audit(planted, tmp_path_factory) -> dict:
    root, _ = planted
    out = tmp_path_factory.mktemp("cli") / "audit.json"
    assert main(["audit", "--model", "cifar:resnet20", "--weights", str(shared_data.RESNET20), "--data", str(root),
                 "--train-split", "", "--clusters", str(P), "--mosaics-per-pair", str(J), "--device", "cpu",
                 "--json", str(out), "--no-db"]) == 0
    return json.loads(out.read_text())


def assert_turned_cluster_least_dominant(cls: dict, turned: set[str]) -> None:
    """The cluster holding most upside-down images is last in the hierarchy, its score below every other by MARGIN."""
    clusters = cls["clusters"]
    held = [len(turned & set(c["members"])) for c in clusters]
    planted_cluster = int(np.argmax(held))
    assert held[planted_cluster] >= 0.6 * len(turned), held  # the clustering did find the shift (measured 35 of 50)
    scores = np.array([c["score"] for c in clusters])
    assert cls["hierarchy"][-1] == planted_cluster, (held, scores)
    others = np.delete(scores, planted_cluster)
    assert scores[planted_cluster] < others.min() - MARGIN, (held, scores)


def test_cli_puts_the_upside_down_cluster_last(cli_audit, planted):
    [cls] = cli_audit["classes"]
    assert cls["name"] == CLASS and len(cls["mosaics"]) == P * (P - 1) // 2 * J
    assert_turned_cluster_least_dominant(cls, planted[1])


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    from xich.engine.models import build_model, read_checkpoint

    model = build_model("cifar:resnet20", 10)
    model.load_state_dict(read_checkpoint(shared_data.RESNET20)[0], strict=False)
    return model.eval()


def test_stored_d_matches_pytorch_grad_cam_and_eq6(cli_audit, planted, resnet20):
    """Every mosaic of the manifest rebuilt here (TL, TR, BL, BR, 32-pixel tiles), explained by the library's
    GradCAM for the horse logit, reduced to d by eq. 5–6 written out: the stored d, to 1e-3."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    root = planted[0]
    [cls] = cli_audit["classes"]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def tile(image_id: str) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(Image.open(root / "test" / image_id).convert("RGB"))).permute(2, 0, 1)
        return (pixels.float() / 255.0 - mean) / std

    def mosaic(ids: list[str]) -> torch.Tensor:
        tl, tr, bl, br = (tile(i) for i in ids)
        return torch.cat([torch.cat([tl, tr], dim=2), torch.cat([bl, br], dim=2)], dim=1)

    batch = torch.stack([mosaic(m["images"]) for m in cls["mosaics"]])
    horse = cli_audit["labels"]["names"].index(CLASS)
    with GradCAM(model=resnet20, target_layers=[resnet20.layer3]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(horse) for _ in range(len(batch))])
    assert maps.shape == (len(batch), 64, 64)
    for m, heat in zip(cls["mosaics"], maps.astype(np.float64)):
        relevance = [heat[:32, :32].sum(), heat[:32, 32:].sum(), heat[32:, :32].sum(), heat[32:, 32:].sum()]  # eq. 5
        cluster_i = m["pair"][0]
        d = sum(r for r, c in zip(relevance, m["clusters"]) if c == cluster_i) / sum(relevance)  # eq. 6
        assert m["d"] == pytest.approx(d, abs=1e-3), m


def test_flow_puts_the_upside_down_cluster_last(ephemeral_prefect, planted, tmp_path, monkeypatch):
    from flows.audit import audit_model_version
    from xich.records.db import session_for
    from xich.records.persist import load_audit

    url = f"sqlite:///{tmp_path / 'flow.db'}"
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    monkeypatch.setenv("XICH_STORE_URL", str(tmp_path / "store"))
    root, turned = planted
    done = audit_model_version(model="planted", version="v1", model_spec="cifar:resnet20",
                               weights_uri=str(shared_data.RESNET20), dataset_uri=str(root),
                               settings={"clusters": P, "mosaics_per_pair": J, "train_split": "", "device": "cpu"})
    with session_for(url) as session:
        [cls] = load_audit(session=session, run_id=done["run_id"]).to_dict()["classes"]
    assert_turned_cluster_least_dominant(cls, turned)
