"""Building models from a spec, loading checkpoints, and finding the Grad-CAM target layer.

Specs: ``cifar:resnet20|32|44|56`` (He et al. 2016 §4.2, option-A shortcuts), their trunks with a head that
is not GAP → linear (``cifar:resnet20-flat``: Flatten → Linear, ``cifar:resnet20-mlp``: Flatten → Linear → ReLU →
Linear), ``cifar:vit`` (a small patch-4 vision transformer for 32×32 inputs, torchvision's own class),
``torchvision:<arch>`` (random init, ``weights=None``; classes from the dataset) and ``python:<module>:<callable>``
(a callable defined in that module, not one it imported).

Where the target layer outputs tokens (B, N, D) rather than a map (B, C, H, W), :func:`map_transform` gives
the reshape that pytorch-grad-cam applies to its activations and gradients (its ``reshape_transform``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XichError

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
# trunk + head that is not GAP → linear: ResNet-20's layer3 map (64 × 8 × 8 at 32 px) flattened
CIFAR_HEADS = {"resnet20-flat": "flat", "resnet20-mlp": "mlp"}
# the patch-4 ViT of ``cifar:vit``: 8 × 8 tokens and a class token at 32 px
CIFAR_VIT = {"image_size": 32, "patch_size": 4, "num_layers": 4, "num_heads": 4, "hidden_dim": 96, "mlp_dim": 192}
LABEL_KEYS = ("classes", "labels")  # where a checkpoint dict may keep the model's class names, in output order
# terminal colour and style codes (CSI sequences): torch puts some in its error messages
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class _LambdaShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _LambdaShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; layer names match the public CIFAR checkpoints."""

    def __init__(self, n: int, num_classes: int = 10, head: str = "gap"):
        super().__init__()
        self.head = head
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        if head == "gap":
            self.linear = nn.Linear(64, num_classes)
        elif head == "flat":
            self.linear = nn.Linear(64 * 8 * 8, num_classes)
        else:  # "mlp"; the last Linear keeps the name ``linear`` (the head the labels are read from)
            self.hidden = nn.Linear(64 * 8 * 8, 128)
            self.linear = nn.Linear(128, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.head == "gap":
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        out = out.flatten(1)  # needs the 8 × 8 map of a 32 × 32 input
        if self.head == "mlp":
            out = F.relu(self.hidden(out))
        return self.linear(out)


def build_model(spec: str, num_classes: int) -> nn.Module:
    """A model in eval mode from its spec; raises XichError for an unknown spec."""
    kind, _, rest = spec.partition(":")
    if kind == "cifar":
        if rest in CIFAR_DEPTHS:
            model = CifarResNet(CIFAR_DEPTHS[rest], num_classes)
        elif rest in CIFAR_HEADS:
            model = CifarResNet(CIFAR_DEPTHS["resnet20"], num_classes, head=CIFAR_HEADS[rest])
        elif rest == "vit":
            from torchvision.models.vision_transformer import VisionTransformer

            model = _vit_head_drawn(VisionTransformer(num_classes=num_classes, **CIFAR_VIT))
        else:
            raise XichError(f"unknown CIFAR model {rest!r} in --model {spec!r}: use one of "
                            + ", ".join(f"cifar:{k}" for k in [*CIFAR_DEPTHS, *CIFAR_HEADS, "vit"]))
    elif kind == "torchvision":
        import torchvision.models as tvm

        try:
            builder = tvm.get_model_builder(rest)
        except ValueError:
            raise XichError(f"unknown torchvision architecture {rest!r} in --model {spec!r}: "
                            f"see torchvision.models.list_models() (e.g. torchvision:resnet18)") from None
        model = builder(weights=None, num_classes=num_classes)
        if rest.startswith("vit_"):
            model = _vit_head_drawn(model)
    elif kind == "python":
        model = _python_model(spec, rest, num_classes)
    else:
        raise XichError(f"unknown model spec {spec!r}: use cifar:resnet20, torchvision:<arch> "
                        f"or python:<module>:<callable>")
    return model.eval()


def _vit_head_drawn(model: nn.Module) -> nn.Module:
    """torchvision initialises a ViT's head to zero: every logit, gradient and CAM of a fresh one is zero, which
    leaves the target layer unfindable and the randomized control empty. Drawn instead (normal, std 0.02)."""
    nn.init.normal_(model.heads.head.weight, std=0.02)
    nn.init.zeros_(model.heads.head.bias)
    return model


def fixed_input_size(spec: str) -> bool:
    """Whether the spec's model takes one input size only (a flattened map, a ViT's position embedding), so
    that its mosaics are shrunk to the tile size by default rather than 2 × the tile size."""
    kind, _, rest = spec.partition(":")
    return (kind == "cifar" and (rest in CIFAR_HEADS or rest == "vit")) or (kind == "torchvision" and rest.startswith("vit_"))


def _python_model(spec: str, rest: str, num_classes: int) -> nn.Module:
    module_name, _, attr = rest.partition(":")
    if not module_name or not attr:
        raise XichError(f"--model {spec!r}: write python:<module>:<callable>, e.g. python:mypkg.nets:make_net")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise XichError(f"--model {spec!r}: cannot import {module_name}:{attr} ({exc})") from None
    except Exception as exc:  # the module itself fails while it is imported
        raise XichError(f"--model {spec!r}: importing {module_name} failed ({_describe(exc)}); "
                        f"fix the module") from None
    if not callable(fn):
        raise XichError(f"--model {spec!r}: {module_name}.{attr} is a {type(fn).__name__}, not a callable that "
                        f"returns a torch.nn.Module")
    if getattr(fn, "__module__", None) != module_name:  # an allowed module's imports are not its models
        raise XichError(f"--model {spec!r}: {attr} is not defined in {module_name} (it comes from "
                        f"{getattr(fn, '__module__', None) or 'elsewhere'}); name a callable defined in the module itself")
    model = _call_factory(fn, spec, attr, num_classes)
    if not isinstance(model, nn.Module):
        raise XichError(f"--model {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _call_factory(fn, spec: str, attr: str, num_classes: int) -> object:
    """``fn(num_classes=...)`` if it takes that parameter, else ``fn()``; its own errors name the spec."""
    try:
        takes_classes = "num_classes" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature
        takes_classes = False
    try:
        return fn(num_classes=num_classes) if takes_classes else fn()
    except Exception as exc:  # user code: any type
        raise XichError(f"--model {spec!r}: {attr}() raised {_describe(exc)}; fix the factory or its "
                        f"arguments") from None


def probe_logits(model: nn.Module, probe: torch.Tensor, spec: str, num_outputs: int | None = None) -> torch.Tensor:
    """The model's output on ``probe`` (B, 3, H, W), checked to be logits of shape (B, num_outputs).

    Grad-CAM and the dominance scores read one logit per class, so a forward that returns a tuple
    (auxiliary heads), a dict (HuggingFace-style outputs) or a map is refused with a message naming
    ``spec``, as is a forward that fails on the probe (e.g. an input size the model does not take).
    Out-of-memory errors pass through unchanged: the CLI reports them with their own advice.
    """
    try:
        with torch.inference_mode():
            out = model(probe)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # user code: any type
        raise XichError(f"--model {spec!r}: the forward pass failed on a {_shape(probe)} input batch "
                        f"({_describe(exc)}); check the input size it expects (--tile-size, --mosaic-size) "
                        f"and --layer") from None
    if not isinstance(out, torch.Tensor):  # a tuple of auxiliary heads, a dict or output dataclass, …
        raise XichError(f"--model {spec!r}: returns a {type(out).__name__}; XICH needs a model whose forward returns "
                        f"the logits tensor (batch, classes): wrap it")
    classes = "classes" if num_outputs is None else str(num_outputs)
    if out.ndim != 2 or out.shape[0] != probe.shape[0] or (num_outputs is not None and out.shape[1] != num_outputs):
        raise XichError(f"--model {spec!r}: outputs shape {_shape(out)} for a batch of {probe.shape[0]}, expected "
                        f"({probe.shape[0]}, {classes})"
                        + (f" for the model's {num_outputs} labels" if num_outputs is not None else ""))
    return out


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of an exception from user or library code, short enough for one error line."""
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def extract_state_dict(checkpoint: object, source: str) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict inside a checkpoint: itself, or under ``state_dict`` / ``model``; ``module.`` stripped."""
    sd = checkpoint
    if isinstance(sd, dict):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise XichError(f"--weights {source}: not a state_dict (nor a dict holding one under 'state_dict' or 'model')")
    return OrderedDict((k.removeprefix("module."), v) for k, v in sd.items())


def read_checkpoint(path: str | Path) -> "tuple[OrderedDict[str, torch.Tensor], list[str] | None]":
    """The state_dict of a checkpoint file (``module.`` stripped) and its label list, if it carries one.

    Accepted: a state_dict, or a dict holding one under ``state_dict`` or ``model`` and optionally the
    class names under ``classes`` (or ``labels``): ``{"state_dict": ..., "classes": ["cat", "dog"]}``.
    Loaded with ``weights_only=True``: a file that needs arbitrary unpickling is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise XichError(f"--weights {path}: no such file")
    checkpoint = _torch_load(path)
    return extract_state_dict(checkpoint, str(path)), _labels(checkpoint, path)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise _load_error(path, exc) from None


def _load_error(path: Path, exc: Exception) -> XichError:
    """One line for a failed ``torch.load``, without torch's terminal colour codes."""
    text = _ANSI.sub("", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # weights_only refuses classes and functions: torch.save(model), an optimizer, a numpy array…
        return XichError(f"--weights {path}: holds a pickled Python object (a whole model?), which XICH does not "
                         f"unpickle for safety; save model.state_dict() instead (the file refers to {found.group(1)})")
    # torch's first line advises weights_only=False, which XICH refuses to do: show the reason instead
    _, sep, reason = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if sep else text).splitlines() if line.strip()]
    return XichError(f"--weights {path}: not a loadable PyTorch checkpoint ({type(exc).__name__}: "
                     f"{(lines[0] if lines else '')[:200]})")


def _labels(checkpoint: object, path: Path) -> list[str] | None:
    """The class names under the first of :data:`LABEL_KEYS` the checkpoint dict has; None if it has none."""
    if not isinstance(checkpoint, dict) or all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return None  # a bare state_dict: a key named 'classes' there is a tensor of the model, not its labels
    key = next((k for k in LABEL_KEYS if k in checkpoint), None)
    if key is None:
        return None
    labels = checkpoint[key]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
        raise XichError(f"--weights {path}: {key!r} must be a non-empty list of class names (str), got "
                        f"{_label_kind(labels)}; save the names in the model's output order, e.g. "
                        f"{{'state_dict': ..., {key!r}: ['cat', 'dog']}}")
    duplicate = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if duplicate is not None:
        raise XichError(f"--weights {path}: {key!r} names class {duplicate!r} twice; each output needs its own name")
    return list(labels)


def _label_kind(labels: object) -> str:
    if isinstance(labels, (list, tuple)):
        if not labels:
            return f"an empty {type(labels).__name__}"
        odd = next(x for x in labels if not isinstance(x, str))
        return f"a {type(labels).__name__} holding {type(odd).__name__} {odd!r}"[:120]
    return type(labels).__name__


def head_name(model: nn.Module) -> str | None:
    """Name of the model's last ``nn.Linear`` (the classifier head), or None."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def load_weights(model: nn.Module, path: str | Path, sd: "OrderedDict[str, torch.Tensor] | None" = None) -> None:
    """Load a checkpoint strictly (``weights_only=True``); a mismatch names the first bad key.

    ``sd``: the state_dict already read by :func:`read_checkpoint` (``path`` then only names it).
    """
    path = Path(path)
    if sd is None:
        sd, _ = read_checkpoint(path)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked"):
            continue  # absent from older checkpoints; BatchNorm fills it in
        if key not in sd:
            raise XichError(f"--weights {path} does not fit the model: missing key {key!r}")
        if sd[key].shape != tensor.shape:
            raise XichError(f"--weights {path} does not fit the model: {key!r} has shape "
                            f"{tuple(sd[key].shape)}, the model expects {tuple(tensor.shape)}")
    extra = [k for k in sd if k not in expected]
    if extra:
        raise XichError(f"--weights {path} does not fit the model: unexpected key {extra[0]!r}")
    model.load_state_dict(sd, strict=False)


def find_target_layer(model: nn.Module, probe: torch.Tensor, name: str = "auto") -> str:
    """Name of the Grad-CAM target layer.

    ``auto``: the last module to finish whose output is a spatial map — a 4-D (B, C, H, W) output with
    more than one cell, or tokens (B, N, D) whose last N − s form a square grid (s ≤ 2 class or
    distillation tokens, see :func:`token_grid`) — and whose map the logits depend on (a non-zero gradient
    on the probe). For CNNs that is the last convolutional block (``layer4`` in torchvision ResNets,
    ``layer3`` in CIFAR ResNets; parents finish after their children, so blocks win over their last ReLU),
    for a ViT the first LayerNorm of its last encoder block: after it only the class token reaches the
    head. Otherwise ``name`` must be such a module of the model.
    """
    finished = _map_outputs(model, probe)
    if name != "auto":
        if name not in finished:
            raise XichError(f"--layer {name!r} is not a module of the model with a spatial (B, C, H, W) or token "
                            f"(B, N, D) output; candidates: {', '.join(finished[-8:])}")
        return name
    if not finished:
        raise XichError("the model has no layer with a spatial (B, C, H, W) or token (B, N, D) output: "
                        "pass --layer NAME")
    return _last_with_gradient(model, probe, finished)


def token_grid(out: torch.Tensor) -> int | None:
    """For tokens (B, N, D): how many leading tokens to skip so that the rest is a square grid g × g, g ≥ 2
    (1 for a ViT's class token); None for another shape."""
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        return None
    for skip in (0, 1, 2):
        g = math.isqrt(max(out.shape[1] - skip, 0))
        if g >= 2 and g * g == out.shape[1] - skip:
            return skip
    return None


def tokens_to_map(tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` for a ViT: (B, skip + g², D) → (B, D, g, g), leading tokens dropped."""
    grid = tokens[:, skip:, :]
    g = math.isqrt(grid.shape[1])
    return grid.reshape(grid.shape[0], g, g, grid.shape[2]).permute(0, 3, 1, 2)


def map_transform(layer: nn.Module, model: nn.Module, probe: torch.Tensor) -> Callable | None:
    """None when ``layer`` outputs a (B, C, H, W) map; for tokens, the reshape to one (:func:`tokens_to_map`)."""
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, o: seen.__setitem__("out", o))
    try:
        with torch.inference_mode():
            model(probe)
    finally:
        handle.remove()
    out = seen.get("out")
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return None
    skip = token_grid(out)
    if skip is None:
        raise XichError(f"the target layer's output has shape {tuple(getattr(out, 'shape', ()))}, neither a map "
                        f"(B, C, H, W) nor tokens (B, N, D) on a square grid: pass another --layer")
    return functools.partial(tokens_to_map, skip=skip)


def _spatial(out: object) -> bool:
    return isinstance(out, torch.Tensor) and ((out.ndim == 4 and out.shape[2] * out.shape[3] > 1)
                                              or token_grid(out) is not None)


def _map_outputs(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """Names of modules with a map or token-grid output (see :func:`_spatial`), in the order of their last
    completion."""
    order: dict[str, int] = {}
    counter = [0]
    handles = []

    def make_hook(n: str):
        def hook(_m, _i, out):
            counter[0] += 1
            if _spatial(out):
                order[n] = counter[0]
        return hook

    for n, m in model.named_modules():
        if n:
            handles.append(m.register_forward_hook(make_hook(n)))
    try:
        with torch.inference_mode():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return sorted(order, key=order.__getitem__)


def _last_with_gradient(model: nn.Module, probe: torch.Tensor, names: list[str]) -> str:
    """The last of ``names`` whose grid part of the output has a non-zero gradient of the summed logits.

    A ViT's last modules act on every token but only the class token reaches the head; their maps are
    all-zero for every gradient-based CAM. The last of ``names`` when no gradient can be taken (frozen
    parameters, or in-place operations autograd refuses).
    """
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in names]
    try:
        with torch.enable_grad():
            logits = model(probe.detach().clone().requires_grad_(True))
            kept = [n for n in names if isinstance(outs.get(n), torch.Tensor) and outs[n].requires_grad]
            grads = torch.autograd.grad(logits.sum(), [outs[n] for n in kept], allow_unused=True)
    except RuntimeError:
        return names[-1]
    finally:
        for h in handles:
            h.remove()
    for n, g in reversed(list(zip(kept, grads))):
        if g is not None and g[:, (token_grid(g) or 0) if g.ndim == 3 else 0:].abs().sum() > 0:
            return n
    return names[-1]


def gap_linear_head(model: nn.Module, layer: nn.Module, probe: torch.Tensor) -> nn.Linear | None:
    """The linear head if the logits are exactly Linear(GAP(layer output)), else None.

    Checked on a probe batch rather than assumed from the architecture, so a model whose target
    layer does not feed the pooling directly falls back to the reference Grad-CAM.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    head = linears[-1]
    seen: dict[str, torch.Tensor] = {}
    h1 = layer.register_forward_hook(lambda _m, _i, o: seen.__setitem__("a", o))
    h2 = head.register_forward_hook(lambda _m, i, _o: seen.__setitem__("x", i[0]))
    try:
        with torch.inference_mode():
            logits = model(probe)
    finally:
        h1.remove()
        h2.remove()
    a, x = seen.get("a"), seen.get("x")
    if not isinstance(a, torch.Tensor) or a.ndim != 4 or x is None or x.ndim != 2 or x.shape[1] != a.shape[1]:
        return None
    pooled = a.mean(dim=(2, 3))
    with torch.inference_mode():
        if torch.allclose(pooled, x, rtol=1e-4, atol=1e-5) and torch.allclose(head(pooled), logits, rtol=1e-4, atol=1e-4):
            return head
    return None
