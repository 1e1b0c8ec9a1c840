"""Section 9 of the study (``bench/rare_looks.py``, ``make rare-looks``): the rare-look benchmark — does a signal
of the audit find the look of a class a model under-learned because it saw too few of its images, measured against
ground truth and against peers? Data and cases, the models of each tier, the audit of a case with every signal, the
peers, and ``run`` over a plan; the tables are ``rare_looks_report``'s, the metrics ``rare_looks_metrics``'.

    make rare-looks        # = .venv/bin/python bench/rare_looks.py  (needs ../shared/data; see docs/science.md §9)
    .venv/bin/python bench/rare_looks.py --tiers cheap --seeds 0,1,2 --e2e-conditions 5
    .venv/bin/python bench/rare_looks.py --report-only   # tables and records again from the cached case records

Superclasses from CIFAR-10, each original class a *look* (A/B): automobile/truck, airplane/ship, cat/dog,
deer/horse, bird/frog; a 5-way superclass classifier. In training one look of every superclass is made rare
(2 %, 5 %, 10 % of ``--train-per-super`` images), either look A or look B (rarity separated from a look that is
merely hard), or neither (the balanced null, 50/50); evaluation sets hold 1,000 common + 250 rare-look test
images per superclass (the look well represented, as after a shift). Each case is a dataset folder of symlinks
into one extracted copy of the CIFAR JPEG tarballs (``<root>/train`` = exactly the imbalanced training set, so the
audit's training shares are those of what the model learnt from), with the truth (image → look) in its file names.

Tiers: ``cheap`` (the public ResNet-20 trunk frozen, a new Linear(64, 5) head fitted on the split's GAP features),
``e2e`` (``cifar:resnet20`` trained from scratch on the split with the project's recipe, so the trunk too saw
the look rarely), ``ft`` and ``ft-flat`` (the public ResNet-20 trunk with a new GAP → linear / Flatten head, every
layer fine-tuned on the split: the trunk is shifted by the imbalance too, though its pretraining saw every look).
Each case is audited by the package (``open_audit`` / ``audit_class``, P = 5, J = 25, seed = case seed; the
same-mosaics control on in the cheap and e2e tiers, which measured it), and on the same clusters every signal of
``xich.method.looks`` is read,
top-1 and by its flag rule. Peers on the same cases: cleanlab 2.9 Datalab ``underperforming_group`` (its own
clustering, and given XICH's clusters; run in the benchmark-only venv of the ``peers`` extra), and an error-aware
Gaussian mixture in the spirit of Domino's DominoSlicer (``domino`` 0.1.5 does not install here; see
``domino_like``). Models, extracted data and case records go to ``$XICH_RARE_LOOKS_CACHE`` (default
``~/.cache/xich-rare-looks``), never into the repository; the records and tables to ``docs/science/rare_looks.json``
and section 9 of ``docs/science.md``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.sections.rare_looks_metrics import attributable, auroc, best_cluster_f1, mean_ci, precision_recall_f1
from bench.shared import CIFAR_JPEG, RESNET20, ROOT
from xich.engine.audit import AuditConfig, audit_class, open_audit
from xich.engine.models import build_model, load_weights
from xich.engine.train import augment_batch, warmup_cosine
from xich.method import looks

CACHE = Path(os.environ.get("XICH_RARE_LOOKS_CACHE") or Path.home() / ".cache" / "xich-rare-looks")
PEERS_PYTHON = Path(os.environ.get("XICH_PEERS_PYTHON") or CACHE / "peers-venv" / "bin" / "python")
LOOKS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# superclass (folder name) → (look A, look B); sorted names = the classifier's output order
SUPERCLASSES = {"airplane_ship": ("airplane", "ship"), "automobile_truck": ("automobile", "truck"),
                "bird_frog": ("bird", "frog"), "cat_dog": ("cat", "dog"), "deer_horse": ("deer", "horse")}
SUPERS = tuple(sorted(SUPERCLASSES))
RARITIES = {"2": 0.02, "5": 0.05, "10": 0.10}
EVAL_COMMON, EVAL_RARE = 1000, 250
P, J = 5, 25
METHODS_TOP1 = tuple(f"{s}:top1" for s in looks.SIGNALS)
METHODS_RULE = tuple(f"{s}:rule" for s in looks.SIGNALS)
PEERS = ("cleanlab:own", "cleanlab:xich", "domino_like:top1")
# tier → model spec: cheap = frozen public trunk + new head; e2e = from scratch; ft / ft-flat = the public trunk
# fine-tuned end to end with a new GAP → linear / Flatten head (the Flatten head: Grad-CAM is not the CAM)
TIER_SPECS = {"cheap": "cifar:resnet20", "e2e": "cifar:resnet20", "ft": "cifar:resnet20",
              "ft-flat": "cifar:resnet20-flat"}
IMAGE_SCORES = ("image_logit", "image_margin", "cleanlab:own", "cleanlab:xich", "domino_like:top1")


# ---------------------------------------------------------------------------------------------- data and cases

def extract_cifar() -> Path:
    """The CIFAR-10 JPEG tarballs unpacked once into the cache (``<cache>/cifar/{train,test}/<look>/<file>``)."""
    root = CACHE / "cifar"
    if not (root / "train" / "truck").is_dir() or not (root / "test" / "truck").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        for split in ("test", "train"):
            with tarfile.open(CIFAR_JPEG / f"{split}.tar.gz") as tar:
                tar.extractall(root, filter="data")
    return root


def look_files(cifar: Path, split: str, look: str) -> list[str]:
    return sorted(p.name for p in (cifar / split / look).iterdir())


def train_draw(cifar: Path, look: str, seed: int, n: int) -> list[str]:
    """The first ``n`` of a seeded permutation of a look's training files: a rarer draw is a subset of a commoner
    one (the rare look's 12 images at 2 % are among its 30 at 5 %, and those among the null's 300)."""
    files = look_files(cifar, "train", look)
    order = np.random.default_rng([seed, LOOKS.index(look), 7]).permutation(len(files))
    return [files[k] for k in order[:n]]


def test_draw(cifar: Path, look: str, seed: int, n: int) -> list[str]:
    files = look_files(cifar, "test", look)
    if n >= len(files):
        return files
    order = np.random.default_rng([seed, LOOKS.index(look), 8]).permutation(len(files))
    return sorted(files[k] for k in order[:n])


def train_counts(condition: str, rare: str | None, n_super: int) -> dict[str, int]:
    """Training images per look slot ("A", "B") of one superclass."""
    if condition == "null":
        return {"A": n_super // 2, "B": n_super - n_super // 2}
    n_rare = int(round(RARITIES[condition] * n_super))
    return {rare: n_rare, ("B" if rare == "A" else "A"): n_super - n_rare}


def case_root(cifar: Path, condition: str, rare: str | None, target: str, seed: int, n_super: int) -> Path:
    """The dataset folder of one case: ``train`` = the imbalanced split (``rare`` look rare, or the null),
    ``test`` = 1,000 images of the common look + 250 of the ``target`` look per superclass; file names
    ``<look>_<file>`` carry the truth. Symlinks into the extracted copy; made once."""
    name = f"n{n_super}-{condition}{rare or ''}-t{target}-s{seed}"
    root = CACHE / "cases" / name
    if (root / ".done").exists():
        return root
    counts = train_counts(condition, rare, n_super)
    for sup, (a, b) in SUPERCLASSES.items():
        slot = {"A": a, "B": b}
        for split in ("train", "test"):
            (root / split / sup).mkdir(parents=True, exist_ok=True)
        for s, look in slot.items():
            for f in train_draw(cifar, look, seed, counts[s]):
                _link(cifar / "train" / look / f, root / "train" / sup / f"{look}_{f}")
            n_test = EVAL_RARE if s == target else EVAL_COMMON
            for f in test_draw(cifar, look, seed, n_test):
                _link(cifar / "test" / look / f, root / "test" / sup / f"{look}_{f}")
    (root / ".done").write_text("")
    return root


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except FileExistsError:  # made by an earlier, interrupted run or a run beside this one
        pass


def look_of(image_id: str) -> str:
    """``"cat_dog/dog_0007.jpg"`` → ``"dog"``."""
    return image_id.split("/")[-1].split("_")[0]


def plan_cases(conditions: list[str], seeds: list[int]) -> list[dict]:
    """Models (condition, rare, seed) and their audits (target look): a rare model is audited with its rare look
    as the target; the null model twice, with look A and with look B as the target (its matched null cases)."""
    models = []
    for seed in seeds:  # the null first: a rare case counts towards attributable F1 once its null is audited
        models.append({"condition": "null", "rare": None, "seed": seed, "targets": ["A", "B"]})
        for cond in conditions:
            for rare in ("A", "B"):
                models.append({"condition": cond, "rare": rare, "seed": seed, "targets": [rare]})
    return models


# ---------------------------------------------------------------------------------------------- models

def public_resnet20() -> torch.nn.Module:
    model = build_model("cifar:resnet20", 10)
    load_weights(model, RESNET20)
    return model.eval()


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def gap_and_logits(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """GAP features (of the last block's map, the audit's embedding for a Flatten head too) and logits of uint8
    images, the model's own forward pass (the CIFAR ResNet's layers)."""
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = imagenet_normalize(images[i:i + batch])
            out = F.relu(model.bn1(model.conv1(x)))
            fmap = model.layer3(model.layer2(model.layer1(out)))
            g = fmap.mean(dim=(2, 3))
            feats.append(g)
            logits.append(model.linear(g) if model.head == "gap" else model(x))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def load_images(root: Path, split: str, ids: list[str]) -> torch.Tensor:
    from xich.engine.datasets import open_dataset

    ds = open_dataset(str(root), "test", "train")
    return ds.splits[split].load(ids, 32)


def split_ids(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Image ids of a case's split, in superclass order, and their superclass indices."""
    ids, ys = [], []
    for k, sup in enumerate(SUPERS):
        files = sorted(p.name for p in (root / split / sup).iterdir())
        ids += [f"{sup}/{f}" for f in files]
        ys += [k] * len(files)
    return ids, np.array(ys)


def full_test(cifar: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The whole CIFAR-10 JPEG test split (10,000) as uint8, with superclass labels and look indices."""
    path = CACHE / "full_test.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["x"], d["y"].numpy(), d["look"].numpy()
    from xich.engine.datasets import open_dataset

    ds = open_dataset(str(cifar), "test", None)
    xs, ys, ls = [], [], []
    for look in LOOKS:
        ids = ds.splits["test"].images[look]
        xs.append(ds.splits["test"].load(ids, 32))
        sup = next(s for s, pair in SUPERCLASSES.items() if look in pair)
        ys += [SUPERS.index(sup)] * len(ids)
        ls += [LOOKS.index(look)] * len(ids)
    d = {"x": torch.cat(xs), "y": torch.tensor(ys), "look": torch.tensor(ls)}
    torch.save(d, path)
    return d["x"], d["y"].numpy(), d["look"].numpy()


def test_accuracies(logits: np.ndarray, y: np.ndarray, look: np.ndarray, rare_looks: list[str]) -> dict:
    pred = logits.argmax(1)
    rare_idx = [LOOKS.index(r) for r in rare_looks]
    rare = np.isin(look, rare_idx)
    return {"test_accuracy": float((pred == y).mean()),
            "rare_look_accuracy": float((pred[rare] == y[rare]).mean()) if rare.any() else None,
            "common_look_accuracy": float((pred[~rare] == y[~rare]).mean()) if rare.any() else None}


def rare_looks_of(rare: str | None) -> list[str]:
    return [] if rare is None else [pair[0 if rare == "A" else 1] for pair in SUPERCLASSES.values()]


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """``{"state_dict", "classes"}``: what ``xich audit --model cifar:resnet20 --weights FILE`` loads, its labels
    the superclass names in output order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "classes": list(SUPERS)}, tmp)
    tmp.replace(path)


def train_cheap(root: Path, seed: int, trunk: torch.nn.Module, feature_cache: dict, path: Path) -> dict:
    """The public trunk frozen, a new Linear(64, 5) fitted on the GAP features of ``root``'s training split
    (features and their horizontal flips; AdamW, lr 0.01, weight decay 1e-4, 400 full-batch steps, cross-entropy)."""
    t0 = time.perf_counter()
    ids, y = split_ids(root, "train")
    missing = [i for i in ids if i not in feature_cache]
    if missing:
        images = load_images(root, "train", missing)
        f0, _ = gap_and_logits(trunk, images)
        f1, _ = gap_and_logits(trunk, images.flip(-1))
        for i, a, b in zip(missing, f0, f1):
            feature_cache[i] = (a, b)
    X = torch.tensor(np.concatenate([np.stack([feature_cache[i][0] for i in ids]),
                                     np.stack([feature_cache[i][1] for i in ids])]))
    Y = torch.tensor(np.concatenate([y, y]))
    torch.manual_seed(seed)
    head = torch.nn.Linear(64, len(SUPERS))
    opt = torch.optim.AdamW(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(400):
        loss = F.cross_entropy(head(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = build_model("cifar:resnet20", len(SUPERS))
    sd = {k: v for k, v in trunk.state_dict().items() if not k.startswith("linear.")}
    sd.update({"linear.weight": head.weight.detach(), "linear.bias": head.bias.detach()})
    model.load_state_dict(sd)
    save_checkpoint(model.eval(), path)
    return {"seconds": time.perf_counter() - t0, "train_images": len(ids),
            "recipe": "public ResNet-20 trunk frozen; Linear(64, 5) on GAP features (+ horizontal flips), AdamW "
                      "lr 0.01, wd 1e-4, 400 full-batch steps"}


def train_e2e(root: Path, seed: int, spec: str, epochs: int, path: Path, trunk: torch.nn.Module | None = None,
              lr: float = 2e-3) -> dict:
    """``spec`` trained on ``root``'s training split with the project's recipe (``xich train``: AdamW, weight decay
    0.05, label smoothing 0.1, one warm-up epoch then cosine, horizontal flips, batch 64), ``epochs`` epochs, from
    scratch, or from ``trunk``'s convolutional layers (the public ResNet-20) with a new head, every layer trained
    (fine-tuning: the trunk too is shifted by the imbalanced split, though it saw every look in its pretraining);
    the loop is the bench's so that the images are decoded once and no epoch pays an evaluation."""
    t0 = time.perf_counter()
    ids, y = split_ids(root, "train")
    x = load_images(root, "train", ids)
    y = torch.tensor(y)
    torch.manual_seed(seed)
    model = build_model(spec, len(SUPERS))
    if trunk is not None:
        sd = {k: v for k, v in trunk.state_dict().items() if not k.startswith("linear.")}
        model.load_state_dict({**model.state_dict(), **sd})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps * epochs, steps))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        print(f"  {path.stem}: epoch {epoch + 1}/{epochs} at {time.perf_counter() - t0:.0f} s", flush=True)
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 64):
            idx = perm[s:s + 64]
            xb = augment_batch(x[idx].float() / 255, "hflip", gen)
            mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            loss = F.cross_entropy(model((xb - mean) / std), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    save_checkpoint(model.eval(), path)
    return {"seconds": time.perf_counter() - t0, "train_images": len(ids), "epochs": epochs,
            "recipe": f"{spec} {'fine-tuned from the public ResNet-20 trunk (new head, every layer trained)' if trunk is not None else 'from scratch'}, xich train's recipe (AdamW lr {lr:g}, wd 0.05, "
                      f"label smoothing 0.1, 1 warm-up epoch + cosine, hflip, batch 64), {epochs} epochs"}


# ---------------------------------------------------------------------------------------------- peers

def domino_like(emb: np.ndarray, p_true: np.ndarray, seed: int, n_slices: int = P,
                pred_weight: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The nearest maintained equivalent of Domino's DominoSlicer (``domino`` 0.1.5 does not install here): an
    error-aware Gaussian mixture (scikit-learn, diagonal covariances) over the class's embeddings (standardised,
    PCA to 16 dimensions) and the model's prediction (the class probability, standardised), the prediction's
    log-likelihood weighted ``pred_weight`` times (DominoSlicer's ``y_hat_log_likelihood_weight`` = 10) by
    repeating its column; the targets are one class here, so their term is constant and left out. The slice of
    highest mean error (1 − p) is flagged (Domino ranks slices; it has no threshold): returns (flagged mask,
    per-image membership probability of that slice)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    z = PCA(n_components=min(16, z.shape[1], len(z) - 1), random_state=seed).fit_transform(z)
    z /= z.std(0).mean() + 1e-8
    pz = (p_true - p_true.mean()) / (p_true.std() + 1e-8)
    X = np.concatenate([z, np.repeat(pz[:, None], pred_weight, axis=1)], axis=1)
    gmm = GaussianMixture(n_components=n_slices, covariance_type="diag", random_state=seed, reg_covar=1e-3).fit(X)
    post = gmm.predict_proba(X)
    hard = post.argmax(1)
    err = np.array([(1 - p_true[hard == c]).mean() if (hard == c).any() else -1 for c in range(n_slices)])
    worst = int(err.argmax())
    return hard == worst, post[:, worst]


def run_cleanlab(pending: dict[str, dict]) -> dict[str, dict]:
    """cleanlab's Datalab on each case (the whole 5-superclass evaluation set of one audit), in the peers venv."""
    if not pending:
        return {}
    if not PEERS_PYTHON.exists():
        raise SystemExit(f"error: no peers venv at {PEERS_PYTHON}; create it: {sys.executable} -m venv "
                         f"--system-site-packages {CACHE / 'peers-venv'} && {CACHE / 'peers-venv'}/bin/pip install "
                         f"'cleanlab[datalab]==2.9.*' (or set XICH_PEERS_PYTHON)")
    src, dst = CACHE / "cleanlab_in.npz", CACHE / "cleanlab_out.npz"
    arrays = {}
    for key, d in pending.items():
        for name in ("pred_probs", "features", "labels", "clusters"):
            arrays[f"{key}/{name}"] = d[name]
    np.savez(src, **arrays)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([str(PEERS_PYTHON), str(ROOT / "bench" / "rare_looks_cleanlab.py"), str(src), str(dst)],
                   check=True, env=env)
    out = np.load(dst)
    version = str(out["__version__"])
    return {key: {"version": version, **{f"{mode}/{k}": out[f"{key}/{mode}/{k}"] for mode in ("own", "xich")
                                         for k in ("flag", "score")}} for key in pending}


# ---------------------------------------------------------------------------------------------- one audit

def audit_case(root: Path, ckpt: Path, seed: int, target: str, model: torch.nn.Module,
               spec: str = "cifar:resnet20", control: bool = True) -> tuple[list[dict], dict]:
    """The package's audit of one case (every superclass), the signals on its clusters, the image-level scores
    and the domino-like peer; returns per-superclass records and the arrays cleanlab needs. ``control``: the
    same-mosaics control too (the cheap and e2e tiers measured it; retired from the default audit since)."""
    opened = open_audit(AuditConfig(model=spec, data=str(root), weights=str(ckpt), seed=seed, clusters=P,
                                    mosaics_per_pair=J, control=control, null=False, device="cpu", batch_size=256))
    records, probs_all, feats_all, labels_all, clusters_all, supers_all = [], [], [], [], [], []
    for images in opened.iter_classes(opened.classes):
        t0 = time.perf_counter()
        cls = audit_class(opened, images)
        audit_s = time.perf_counter() - t0
        sup = images.name
        target_look = SUPERCLASSES[sup][0 if target == "A" else 1]
        emb, logits = gap_and_logits(model, images.eval_images)
        pos = {c.id: c for c in cls.clusters}
        member = {m: c.id for c in cls.clusters for m in c.members}
        labels = np.array([member[i] for i in images.eval_ids])
        truth = np.array([look_of(i) == target_look for i in images.eval_ids])
        k = images.index
        own = logits[:, k]
        margin = own - np.delete(logits, k, axis=1).max(1)
        prob = torch.softmax(torch.tensor(logits), 1).numpy()
        rec = {"superclass": sup, "target_look": target_look, "eval_n": int(len(truth)),
               "truth_n": int(truth.sum()), "audit_seconds": audit_s,
               "clusters": [{"id": c.id, "eval_size": c.eval_size, "train_count": c.train_count,
                             "score": c.score, "rank": c.rank, "baselines": c.baselines,
                             "look_members": int(truth[labels == c.id].sum())} for c in cls.clusters],
               "significant_pairs": len(cls.significant_pairs()),
               "control": cls.control and {"significant_pairs": len(cls.control["significant_pairs"]),
                                           "image_statistics": cls.control["image_statistics"],
                                           "tau": cls.control["tau"], "hierarchy": cls.control["hierarchy"]},
               "best_cluster_f1": best_cluster_f1(labels, truth), "methods": {}, "auroc": {}}
        scores = np.array([np.nan if pos[c].score is None else pos[c].score for c in range(P)])
        base = {b: np.array([np.nan if pos[c].baselines[b] is None else pos[c].baselines[b] for c in range(P)])
                for b in pos[0].baselines}
        sizes = np.array([pos[c].eval_size for c in range(P)])
        ratio = looks.representation_ratio(np.array([pos[c].train_count for c in range(P)]), sizes)
        D = np.array([[np.nan if v is None else v for v in row] for row in cls.dominance])
        kw = dict(scores=scores, baselines=base, ratio=ratio)
        for sig in looks.SIGNALS:
            nd = looks.need(sig, **kw)
            for mode, top1 in (("top1", True), ("rule", False)):
                flagged = looks.flag_looks(sig, **kw, eval_sizes=sizes, p_values_holm=np.array(cls.p_values_holm),
                                           dominance=D, top1=top1)
                rec["methods"][f"{sig}:{mode}"] = _scored(np.isin(labels, flagged), truth, flagged)
            img = nd[labels]
            rec["auroc"][f"{sig}:cluster"] = auroc(np.where(np.isnan(img), -np.inf, img), truth) \
                if not np.isnan(img).all() else None
        if cls.control:
            ctrl = cls.control["hierarchy"]
            rec["methods"]["control_least_dominant:top1"] = _scored(np.isin(labels, ctrl[-1:]), truth, ctrl[-1:])
        rec["auroc"]["image_logit"] = auroc(-own, truth)
        rec["auroc"]["image_margin"] = auroc(-margin, truth)
        flag, member_p = domino_like(emb, prob[:, k], seed)
        rec["methods"]["domino_like:top1"] = _scored(flag, truth, None)
        rec["auroc"]["domino_like:top1"] = auroc(member_p, truth)
        rec["_truth"] = truth
        records.append(rec)
        probs_all.append(prob)
        feats_all.append(emb)
        labels_all.append(np.full(len(truth), k))
        clusters_all.append(k * P + labels)
        supers_all.append(np.full(len(truth), k))
    arrays = {"pred_probs": np.concatenate(probs_all), "features": np.concatenate(feats_all),
              "labels": np.concatenate(labels_all), "clusters": np.concatenate(clusters_all)}
    return records, arrays


def _scored(flagged: np.ndarray, truth: np.ndarray, clusters) -> dict:
    p, r, f1 = precision_recall_f1(flagged, truth)
    return {"flagged_clusters": None if clusters is None else [int(c) for c in clusters],
            "flagged_images": int(np.sum(flagged)), "precision": p, "recall": r, "f1": f1}


def add_cleanlab(records: list[dict], result: dict) -> None:
    """Per superclass: the images cleanlab flags among the class's evaluation images, scored against the truth;
    its per-image score (low = worse group) negated for AUROC."""
    start = 0
    for rec in records:
        n = rec["eval_n"]
        truth = rec["_truth"]
        for mode in ("own", "xich"):
            flag = result[f"{mode}/flag"][start:start + n]
            score = result[f"{mode}/score"][start:start + n]
            rec["methods"][f"cleanlab:{mode}"] = _scored(flag, truth, None)
            rec["auroc"][f"cleanlab:{mode}"] = auroc(-score, truth)
        rec["cleanlab_version"] = result["version"]
        start += n


# ---------------------------------------------------------------------------------------------- the grid

def run(args) -> None:
    torch.set_num_threads(args.threads)
    cifar = extract_cifar()
    records_dir = CACHE / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    trunk = public_resnet20()
    feature_cache: dict = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    x_test, y_test, look_test = full_test(cifar)
    tiers = []
    if "cheap" in args.tiers:
        tiers.append(("cheap", "cifar:resnet20", args.conditions.split(","), seeds))
    for tier, spec in TIER_SPECS.items():
        if tier != "cheap" and tier in args.tiers.split(","):
            tiers.append((tier, spec, args.e2e_conditions.split(","), [int(s) for s in args.e2e_seeds.split(",")]))
    for tier, spec, conditions, tier_seeds in tiers:
        n_super = args.train_per_super
        for m in plan_cases(conditions, tier_seeds):
            cond, rare, seed = m["condition"], m["rare"], m["seed"]
            mkey = f"{tier}-n{n_super}-{cond}{rare or ''}-s{seed}"
            done = all((records_dir / f"{mkey}-t{t}.json").exists() for t in m["targets"])
            if done and not args.fresh:
                continue
            train_root = case_root(cifar, cond, rare, m["targets"][0], seed, n_super)
            ckpt = CACHE / "models" / f"{mkey}.pt"
            info_path = ckpt.with_suffix(".json")
            if not ckpt.exists() or args.fresh:
                if tier == "cheap":
                    info = train_cheap(train_root, seed, trunk, feature_cache, ckpt)
                elif tier == "e2e":
                    info = train_e2e(train_root, seed, spec, args.epochs, ckpt)
                else:  # ft, ft-flat: the public trunk fine-tuned with a new head
                    info = train_e2e(train_root, seed, spec, args.ft_epochs, ckpt, trunk=trunk, lr=args.ft_lr)
                model = build_model(spec, len(SUPERS))
                load_weights(model, ckpt)
                _, test_logits = gap_and_logits(model.eval(), x_test)
                info.update(test_accuracies(test_logits, y_test, look_test, rare_looks_of(rare)))
                info_path.write_text(json.dumps(info, indent=1))
                print(f"{mkey}: trained in {info['seconds']:.1f} s, test accuracy {info['test_accuracy']:.3f}, "
                      f"rare look {info['rare_look_accuracy']}", flush=True)
            info = json.loads(info_path.read_text())
            model = build_model(spec, len(SUPERS))
            load_weights(model, ckpt)
            model.eval()
            for target in m["targets"]:
                root = case_root(cifar, cond, rare, target, seed, n_super)
                t0 = time.perf_counter()
                recs, arrays = audit_case(root, ckpt, seed, target, model, spec, control=tier in ("cheap", "e2e"))
                cl = run_cleanlab({"case": arrays})["case"] if not args.no_cleanlab else None
                if cl is not None:
                    add_cleanlab(recs, cl)
                for r in recs:
                    r.pop("_truth")
                    r.update({"tier": tier, "model": spec, "condition": cond, "rare": rare, "seed": seed,
                              "target": target, "train_per_super": n_super, "model_info": info})
                out = {"key": f"{mkey}-t{target}", "seconds": time.perf_counter() - t0, "records": recs}
                (records_dir / f"{mkey}-t{target}.json").write_text(json.dumps(out, indent=1))
                print(f"{mkey}-t{target}: audited in {out['seconds']:.1f} s; least_dominant top-1 F1 "
                      f"{np.mean([r['methods']['least_dominant:top1']['f1'] for r in recs]):.2f}, lowest_mean_logit "
                      f"{np.mean([r['methods']['lowest_mean_logit:top1']['f1'] for r in recs]):.2f}, "
                      f"weak_under_represented rule "
                      f"{np.mean([r['methods']['weak_under_represented:rule']['f1'] for r in recs]):.2f}", flush=True)
