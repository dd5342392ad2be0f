"""DINOv2 ViTs through timm: every size and the register (``_reg4_``) variants.

Weights (``backbone.weights``):
- ``timm``: timm's pretrained download (needs internet, or a filled Hugging Face cache);
- a path to an official facebookresearch checkpoint (``dinov2_vitb14_pretrain.pth``, ...) or to a
  timm ``.safetensors`` / ``.pth`` state dict;
- ``none``: random initialisation (tests).

Input sides must be multiples of 14; the data pipeline rounds its sizes to multiples of the
patch size, and anything else raises a ``ValueError`` saying so (no silent cropping).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import timm
import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap
from semcorr.registry import GroupConfig, register
from semcorr.errors import SemcorrError

log = logging.getLogger(__name__)

MODELS = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
    "vits14_reg": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_HOST = "huggingface.co"


@dataclass
class DinoV2Config(GroupConfig):
    model: str = "vit_base_patch14_dinov2"  # a timm name (see MODELS)
    weights: str = "timm"  # timm | none | /path/to/checkpoint.{pth,safetensors}
    layer: int = -1  # block whose tokens are returned (negative: from the end)
    norm: bool = True  # apply the final LayerNorm to the returned tokens
    # the last k blocks (and the final norm) train; the rest, and the patch / position embeddings
    # and class / register tokens, stay frozen and in eval mode. -1: the whole ViT trains (every
    # block, patch embedding, position embedding, class / register tokens, final norm), e.g. a
    # randomly initialised model learned from scratch (configs/backbone/vit_tiny_random.yaml)
    trainable_blocks: int = 0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2} for tests


class WeightsUnavailable(SemcorrError, RuntimeError):
    """timm's pretrained weights cannot be fetched (offline); use a local checkpoint."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    result: Dict[str, bool] = {}

    def probe() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            result["ok"] = False

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result.get("ok", False)


def _offline_message(model: str, reason: str) -> str:
    return (
        f"cannot get pretrained weights for {model} through timm ({reason}). Download them "
        f"elsewhere and pass a local checkpoint: backbone.weights=/path/to/dinov2_vitb14_pretrain.pth "
        f"(official facebookresearch file) or a timm .safetensors; backbone.weights=none gives "
        f"random weights"
    )


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official DINOv2 ``.pth`` or a timm state dict (``.pth`` / ``.safetensors``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DINOv2 checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (is backbone.model the right size?)"
        )


def create_vit(model: str, weights: str, model_kwargs: Dict[str, Any]) -> nn.Module:
    name = MODELS.get(model, model)
    if "dinov2" not in name:
        raise ValueError(f"unknown DINOv2 model {model!r}; valid: {', '.join(MODELS.values())}")
    kwargs = dict(dynamic_img_size=True, num_classes=0, **model_kwargs)
    if weights == "timm":
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            try:
                return timm.create_model(name, pretrained=True, **kwargs)
            except Exception as err:  # offline and not cached
                raise WeightsUnavailable(_offline_message(name, f"HF_HUB_OFFLINE is set: {type(err).__name__}")) from None
        if not _hub_reachable():
            raise WeightsUnavailable(_offline_message(name, f"{HUB_HOST} is not reachable"))
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:
            raise WeightsUnavailable(_offline_message(name, f"{type(err).__name__}: {err}")) from None
    vit = timm.create_model(name, pretrained=False, **kwargs)
    if weights not in ("none", "", None):
        load_checkpoint(vit, weights)
    return vit


@register("backbone", "dinov2", DinoV2Config)
class DinoV2(Backbone):
    """Patch tokens of one block of a DINOv2 ViT as a (B, D, H/14, W/14) map.

    ``forward`` normalises [0, 1] RGB with the ImageNet mean/std, runs the ViT at the input's own
    size (``dynamic_img_size``: position embeddings are interpolated) and returns the tokens of
    block ``layer`` (optionally through the final norm), without class and register tokens.

    ``trainable_blocks=k`` (``0 <= k <= depth``) trains the last ``k`` blocks and the final norm;
    the patch embedding, position embedding and class / register tokens stay frozen.
    ``trainable_blocks=-1`` trains everything: all blocks, the patch embedding, the position
    embedding, the class / register tokens and the final norm (for training a random ViT from
    scratch). Blocks after ``layer`` never train (their output is unused). Frozen modules
    (:meth:`frozen_modules`) are in eval mode from construction on, and :meth:`train` keeps them so.
    """

    def __init__(self, model: str = "vit_base_patch14_dinov2", weights: str = "timm",
                 layer: int = -1, norm: bool = True, trainable_blocks: int = 0,
                 model_kwargs: Dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model_name = MODELS.get(model, model)
        self.weights = weights
        self.model_kwargs = dict(model_kwargs or {})
        self._instance = uuid.uuid4().hex[:12]
        self.vit = create_vit(self.model_name, weights, self.model_kwargs)
        self.stride = int(self.vit.patch_embed.patch_size[0])
        self.dim = int(self.vit.embed_dim)
        depth = len(self.vit.blocks)
        self.layer = layer % depth
        self.norm = norm
        if not -1 <= trainable_blocks <= depth:
            raise ValueError(f"trainable_blocks={trainable_blocks} must be in [0, {depth}], or -1 "
                             f"(the whole ViT, embeddings included, trains)")
        self.trainable_blocks = trainable_blocks
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.train(self.training)  # frozen modules in eval mode from the start

    @property
    def train_all(self) -> bool:
        """``trainable_blocks == -1``: the whole ViT trains, embeddings included."""
        return self.trainable_blocks == -1

    def cache_key(self) -> str:
        """Model, weights, block, norm and architecture overrides. Randomly initialised models get
        a per-instance id, so no cache ever mixes two random draws."""
        weights = Path(str(self.weights)).name if self.weights not in ("none", "", None) else \
            f"random-{self._instance}"
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.model_kwargs.items()))
        return f"dinov2-{self.model_name}-{weights}-l{self.layer}-n{int(self.norm)}-{extra}"

    def _first_trainable_block(self) -> int:
        depth = len(self.vit.blocks)
        return 0 if self.train_all else depth - self.trainable_blocks

    def _freeze(self) -> None:
        depth = len(self.vit.blocks)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        for i in range(self._first_trainable_block(), min(depth, self.layer + 1)):
            for p in self.vit.blocks[i].parameters():
                p.requires_grad_(True)
        if self.trainable_blocks and self.norm:
            for p in self.vit.norm.parameters():
                p.requires_grad_(True)
        if self.train_all:
            for p in self.vit.patch_embed.parameters():
                p.requires_grad_(True)
            for name in ("pos_embed", "cls_token", "reg_token"):
                param = getattr(self.vit, name, None)
                if isinstance(param, nn.Parameter):
                    param.requires_grad_(True)

    def frozen_modules(self):
        """Modules that never train (kept in eval mode by :meth:`train`): the patch embedding and
        the blocks before the last ``trainable_blocks``; none with ``trainable_blocks=-1``."""
        if self.train_all:
            return []
        return [self.vit.patch_embed] + list(self.vit.blocks[: self._first_trainable_block()])

    def train(self, mode: bool = True) -> "DinoV2":
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> FeatureMap:
        self.check_input(images)
        x = (images - self.mean) / self.std
        grad = torch.is_grad_enabled() and self.trainable_blocks != 0
        with torch.set_grad_enabled(grad):
            feats = self.vit.forward_intermediates(
                x, indices=[self.layer], norm=self.norm, output_fmt="NCHW", intermediates_only=True
            )[0]
        return FeatureMap(features=feats, stride=self.stride)
