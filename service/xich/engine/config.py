"""What an audit is asked to do: its settings, valid by construction (checked before anything is loaded). Imports
no torch, so the registry hooks, ``xich register`` and ``xich db`` stay light."""

from __future__ import annotations

from dataclasses import dataclass

from ..boundary import check_path_name
from ..errors import XichError
from ..method.cam_methods import CAM_METHODS, FAST_METHODS

# The per-cluster signals an audit can lead with (method.looks.SIGNALS; kept here so that this module loads no numpy)
# and the one it leads with by default: the one bench/rare_looks.py found best at finding the rare look against ground
# truth in every tier whose clustering separates the looks (docs/science.md, section 9; its false flags on balanced
# data: 3 % with a frozen trunk, 23-83 % fine-tuned end to end).
LOOK_SIGNALS = ("least_dominant", "lowest_mean_logit", "lowest_accuracy", "lowest_margin",
                "under_represented", "weak_under_represented")
DEFAULT_LOOKS = "under_represented"

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def parse_normalize(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``imagenet|cifar|none`` or ``m1,m2,m3/s1,s2,s3`` → (mean, std)."""
    if spec in NORMALIZATIONS:
        return NORMALIZATIONS[spec]
    try:
        mean_s, std_s = spec.split("/")
        mean, std = tuple(float(v) for v in mean_s.split(",")), tuple(float(v) for v in std_s.split(","))
    except ValueError:
        mean, std = (), ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise XichError(f"--normalize {spec!r}: use imagenet, cifar, none or m1,m2,m3/s1,s2,s3 (positive stds)")
    return mean, std


@dataclass(frozen=True)
class AuditConfig:
    """An audit's settings; its defaults are the CLI's and a request's. Valid by construction: ``classes`` given as
    ``"a, b"`` or a list become a tuple, ``train_split=""`` means none, and :func:`check_config` runs once, here.
    The sizes left to None are resolved from the model and the data when the audit opens (``engine.audit.open_audit``:
    the tile side, and the mosaic side: 2 × tile, or the tile for models of one input size)."""

    model: str
    data: str
    weights: str | None = None
    eval_split: str = "test"
    train_split: str | None = "train"
    clusters: int = 5
    mosaics_per_pair: int = 25
    seed: int = 0
    layer: str = "auto"
    cam: str = "auto"
    method: str = "gradcam"  # --method: the attribution map (a key of method.cam_methods.CAM_METHODS)
    # --control: also score the same mosaics under the architecture with re-initialised weights (off by default since
    # the rare-look benchmark: it carried no information about an under-learned look; the null model replaces it)
    control: bool = False
    looks: str = DEFAULT_LOOKS  # --looks: the signal that flags the looks the model under-learned (LOOK_SIGNALS)
    null: bool = True  # audit the null model too (the architecture with random weights, end to end) and compare
    tile_size: int | None = None
    mosaic_size: int | None = None
    normalize: str = "imagenet"
    classes: tuple[str, ...] | None = None
    batch_size: int = 128
    device: str | None = None
    per_image: int = 0
    train_per_class: int | None = None  # --train-per-class N: place a seeded sample of N training images per class
    precision: str = "fp32"  # --precision tf32: TF32 matmuls and convolutions on CUDA (moves d; see runtime.py)
    labels: str | None = None  # --labels: a built-in set or a file (see labels.py)
    data_uri: str | None = None  # where --data / --weights came from (s3://…) when read from a local copy
    weights_uri: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # "" (``--classes ''``): every class
            object.__setattr__(self, "classes", tuple(c.strip() for c in self.classes.split(",")) if self.classes
                               else None)
        elif isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.train_split == "":
            object.__setattr__(self, "train_split", None)  # ``--train-split ''``: no training-distribution table
        check_config(self)


# upper bounds: far above any useful audit, low enough that no request can ask a worker for unbounded work
MAXIMA = {"clusters": 50, "mosaics_per_pair": 1000, "batch_size": 4096, "seed": 2**32 - 1, "per_image": 10_000,
          "tile_size": 1024, "mosaic_size": 2048, "train_per_class": 10_000_000}
PRECISIONS = ("fp32", "tf32")
MAX_CLASSES, MAX_TEXT = 1000, 200  # class names per request; characters of a name, split, layer, device…
INTEGERS = ("clusters", "mosaics_per_pair", "batch_size", "seed", "per_image", "tile_size", "mosaic_size",
            "train_per_class")
TEXTS = ("eval_split", "train_split", "layer", "cam", "normalize", "labels", "device")


def check_config(config: AuditConfig) -> None:
    """Refuse settings that cannot work, with the flag to change: types, lower and upper bounds (MAXIMA).

    The one validator of audit settings, run when an :class:`AuditConfig` is made: by the audit, ``xich register``
    and the registry hooks (``registration.audit_config``) alike, so a request that would fail at night fails at
    registration.
    """
    for name in INTEGERS:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise XichError(f"--{name.replace('_', '-')} must be a whole number, got {type(value).__name__} "
                            f"{str(value)[:40]}")
        if value is not None and value > MAXIMA[name]:
            raise XichError(f"--{name.replace('_', '-')} must be at most {MAXIMA[name]}, got {value}")
    for name in TEXTS:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value):
            raise XichError(f"--{name.replace('_', '-')} must be text of at most {MAX_TEXT} characters without NUL, "
                            f"got {type(value).__name__}")
    if config.classes is not None:
        if not isinstance(config.classes, tuple) or len(config.classes) > MAX_CLASSES or not all(isinstance(c, str) and c and len(c) <= MAX_TEXT
                                                        and "\x00" not in c for c in config.classes):
            raise XichError(f"--classes must be at most {MAX_CLASSES} class names, each text of 1 to {MAX_TEXT} "
                            f"characters (e.g. [\"cat\", \"dog\"])")
    # a split or class name is joined to the dataset's root: never a path of its own (docs/security.md)
    for name in ("eval_split", "train_split"):
        if getattr(config, name) is not None:
            check_path_name(getattr(config, name), f"--{name.replace('_', '-')}")
    for cls in config.classes or ():
        check_path_name(cls, "--classes")
    for name in ("clusters", "mosaics_per_pair", "batch_size", "train_per_class"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise XichError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    for name in ("seed", "per_image"):
        if getattr(config, name) < 0:
            raise XichError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(config, name)}")
    if config.precision not in PRECISIONS:
        raise XichError(f"--precision {str(config.precision)[:40]!r}: use {' or '.join(PRECISIONS)}")
    if config.cam not in ("auto", "fast", "reference"):
        raise XichError(f"--cam {config.cam!r}: use auto, fast or reference")
    if not isinstance(config.method, str) or config.method not in CAM_METHODS:
        raise XichError(f"--method {str(config.method)[:40]!r}: use one of {', '.join(CAM_METHODS)}")
    if config.cam == "fast" and config.method not in FAST_METHODS:
        raise XichError(f"--cam fast: --method {config.method} has no fast path (only {', '.join(FAST_METHODS)}); "
                        f"use --cam auto or --cam reference")
    for name in ("control", "null"):
        if not isinstance(getattr(config, name), bool):
            raise XichError(f"{name} must be true or false, got {str(getattr(config, name))[:40]!r}")
    if not isinstance(config.looks, str) or config.looks not in LOOK_SIGNALS:
        raise XichError(f"--looks {str(config.looks)[:40]!r}: use one of {', '.join(LOOK_SIGNALS)}")
    for name in ("tile_size", "mosaic_size"):
        value = getattr(config, name)
        if value is not None and value < 8:
            raise XichError(f"--{name.replace('_', '-')} must be at least 8 pixels, got {value}")
    parse_normalize(config.normalize)
