"""The precision policy (a leaf: torch only; docs/backbones.md, "Precision").

Two rules:

- **Learned layers compute in a reduced precision on a GPU.** The backbone's precision is
  ``backbone.precision`` (:data:`BACKBONE_PRECISIONS`), resolved per call by
  :func:`resolve_backbone_precision`: ``fp32`` (IEEE float32, autocast off), ``tf32`` (float32
  tensors, matrix products and convolutions on TF32 tensor cores: CUDA only, exact float32
  elsewhere), ``bf16`` (autocast to bfloat16) and ``auto``: an active autocast is followed (the
  trainer's ``bf16-mixed``), else TF32 on CUDA and exact float32 on any other device. Heads
  (learned layers too) follow whatever autocast is active.
- **Everything that feeds an argmax or a softmax computes in float32** under any autocast: the
  cosine similarity, the matchers and their solvers, keypoint transfer and the losses' logits
  run inside :func:`autocast_off` on float32 (or float64) values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

BACKBONE_PRECISIONS = ("auto", "fp32", "tf32", "bf16")
_AUTOCAST_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_available(device: torch.device | str) -> bool:
    """Whether autocast exists for the device's type (not on ``meta``, for instance)."""
    available = getattr(torch.amp, "is_autocast_available", None)
    return available is None or available(torch.device(device).type)


def autocast_off(device: torch.device | str):
    """Autocast disabled inside the block (float32 stays float32); a no-op where autocast does
    not exist (e.g. ``meta``)."""
    if not autocast_available(device):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, enabled=False)


def active_autocast(device: torch.device | str) -> str | None:
    """``"bf16"`` / ``"fp16"`` when an autocast is enabled for the device's type, else None."""
    kind = torch.device(device).type
    if not autocast_available(device) or not torch.is_autocast_enabled(kind):
        return None
    dtype = torch.get_autocast_dtype(kind)
    return _AUTOCAST_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def resolve_backbone_precision(precision: str, device: torch.device | str) -> str:
    """What ``backbone.precision`` means for a call on ``device`` under the current autocast:
    ``fp32``, ``tf32``, ``bf16`` or ``fp16``.

    ``auto``: the active autocast's dtype when there is one (``bf16``, or ``fp16`` under
    ``16-mixed``), else ``tf32`` on CUDA and ``fp32`` on any other device. ``tf32`` off CUDA is
    ``fp32`` (no other device has the format). ``fp32`` and ``bf16`` are kept on every device.
    """
    if precision not in BACKBONE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(BACKBONE_PRECISIONS)}, got {precision!r}")
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        return active_autocast(device) or ("tf32" if cuda else "fp32")
    if precision == "tf32" and not cuda:
        return "fp32"
    return precision


@contextlib.contextmanager
def cuda_fp32_precision(mode: str) -> Iterator[None]:
    """CUDA float32 matrix products and cuDNN convolutions in ``mode`` (``"ieee"`` or ``"tf32"``)
    inside the block, restored on exit (torch >= 2.9: ``fp32_precision``; older: ``allow_tf32``).
    Process-wide flags read when a kernel is launched: the block should not overlap other
    threads' CUDA work."""
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"mode must be ieee or tf32, got {mode!r}")
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = mode
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def backbone_precision(resolved: str, device: torch.device | str) -> Iterator[None]:
    """Run a backbone's layers in a resolved precision (:func:`resolve_backbone_precision`).

    ``fp32``: autocast off, and on CUDA IEEE float32 products and convolutions; ``tf32``: autocast
    off, TF32 products and convolutions (CUDA); ``bf16``: autocast to bfloat16; ``fp16``: the
    active float16 autocast, left as it is.
    """
    device = torch.device(device)
    if resolved in ("fp32", "tf32"):
        flags = (cuda_fp32_precision("ieee" if resolved == "fp32" else "tf32")
                 if device.type == "cuda" else contextlib.nullcontext())
        with autocast_off(device), flags:
            yield
    elif resolved == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif resolved == "fp16":
        if active_autocast(device) != "fp16":
            raise ValueError("fp16 is only reached through backbone.precision=auto under a float16 autocast")
        yield
    else:
        raise ValueError(f"unknown resolved precision {resolved!r}")
