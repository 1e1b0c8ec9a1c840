"""The torch device an audit or a training run works on, checked before any work starts."""

from __future__ import annotations

import torch

from ..errors import XichError


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a usable device (default: cuda when present, else cpu).

    A device string can parse yet be unusable (``cuda:7`` on a machine without that GPU), so a
    one-element tensor is allocated on it: a bad ``--device`` fails here, not mid-run.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:  # no driver, no such index, or a backend torch was built without
        raise XichError(f"--device {name}: not usable here ({str(exc).splitlines()[0]}); use cpu or cuda") from None
    return device
