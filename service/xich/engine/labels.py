"""A model's label list: the class name of each output, in output order.

Grad-CAM must explain the logit of the image's own class, so a dataset class is matched to the
model's output **by name**, never by its position among the dataset's folders. Where the label
list comes from, first found wins:

1. ``--labels``: a built-in set (``cifar10``, ``cifar100``, ``imagenet``) or a file, one name a line;
2. the checkpoint: ``{"state_dict": ..., "classes": [...]}`` (or ``"labels"``);
3. a ``cifar:`` model whose checkpoint has 10 outputs: CIFAR-10's order;
4. the evaluation split's sorted class folders (ImageFolder's order), recorded as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import XichError
from ..label_sets import BUILTIN_LABEL_SETS, CIFAR10, CIFAR100


def _imagenet() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # shipped in the package: no download

    return tuple(_IMAGENET_CATEGORIES)


# by the names core knows (label_sets: the boundary tells them from files to check)
BUILTIN = dict(zip(BUILTIN_LABEL_SETS, (lambda: CIFAR10, lambda: CIFAR100, _imagenet), strict=True))


@dataclass(frozen=True)
class LabelList:
    """Class names in the model's output order, and where they came from (for the audit document)."""

    names: tuple[str, ...]
    source: str

    def index(self, name: str) -> int:
        return self.names.index(name)


def read_labels(spec: str) -> LabelList:
    """``--labels``: a built-in set's name, or a text file with one class name a line."""
    if spec in BUILTIN:
        return LabelList(BUILTIN[spec](), f"builtin:{spec}")
    path = Path(spec)
    if not path.is_file():
        raise XichError(f"--labels {spec}: neither a built-in label set ({', '.join(BUILTIN)}) nor a file; "
                        f"give a file with one class name a line")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise XichError(f"--labels {spec}: cannot read it ({exc}); give a UTF-8 text file, one name a line") from None
    return checked(names, f"file:{path}", f"--labels {spec}")


def checked(names: list[str], source: str, where: str) -> LabelList:
    """A label list with at least one name and no name twice."""
    if not names:
        raise XichError(f"{where}: the label list is empty; give one class name per model output")
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]
    if twice:  # a file's lines are not quoted: it may be any file a request named (docs/security.md)
        shown = f"{len(set(twice))} class name(s)" if source.startswith("file:") else \
            f"class name(s) {', '.join(sorted(set(twice)))}"
        raise XichError(f"{where}: {shown} appear twice in the label list")
    return LabelList(tuple(names), source)


def resolve_labels(*, labels_arg: str | None, checkpoint_labels: list[str] | None, model_spec: str,
                   head_outputs: int | None, dataset_classes: list[str]) -> LabelList:
    """The model's label list, by the precedence in this module's docstring.

    ``head_outputs`` is the checkpoint's number of outputs when known (None without weights).
    """
    if labels_arg:
        return read_labels(labels_arg)
    if checkpoint_labels is not None:
        return checked(list(checkpoint_labels), "checkpoint", "--weights")
    if model_spec.startswith("cifar:") and head_outputs == len(CIFAR10):
        return LabelList(CIFAR10, "builtin:cifar10 (default of cifar: models with 10 outputs)")
    return LabelList(tuple(dataset_classes), "dataset (the evaluation split's sorted class folders)")


def model_indices(labels: LabelList, dataset_classes: list[str], head_outputs: int | None,
                  head_name: str | None) -> dict[str, int]:
    """Each dataset class's output index; every dataset class must be a label, and the labels fit the head."""
    if head_outputs is not None and head_outputs != len(labels.names):
        raise XichError(f"the label list ({labels.source}) has {len(labels.names)} names but the checkpoint's "
                        f"{head_name or 'output layer'} has {head_outputs} outputs; pass --labels with "
                        f"{head_outputs} names in the model's output order")
    unknown = [c for c in dataset_classes if c not in labels.names]
    if unknown:
        # a labels file's lines are not quoted: it may be any file a request named (docs/security.md)
        names = (f"{len(labels.names)} names" if labels.source.startswith("file:") else
                 f"{', '.join(labels.names[:12])}{' …' if len(labels.names) > 12 else ''}")
        raise XichError(f"dataset class(es) {', '.join(unknown)} are not among the model's labels ({labels.source}: "
                        f"{names}); rename the folders to the model's class names or pass --labels")
    return {c: labels.index(c) for c in dataset_classes}
