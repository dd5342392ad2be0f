"""DINOv2 ViTs through timm: every size and the register (``_reg4_``) variants.

Weights (``backbone.weights``):
- ``timm``: timm's pretrained download (needs internet, or a filled Hugging Face cache);
- a path to an official facebookresearch checkpoint (``dinov2_vitb14_pretrain.pth``, ...) or to a
  timm ``.safetensors`` / ``.pth`` state dict;
- ``none``: random initialisation (tests).

Input sides must be multiples of 14; the data pipeline rounds its sizes to multiples of the
patch size, and anything else raises a ``ValueError`` saying so (no silent cropping).

Position embeddings (``backbone.pos_embed``): the 37x37 table (trained at 518 px) is resized to
the input's patch grid. ``official`` (default) does it as the facebookresearch code
(``DinoVisionTransformer.interpolate_pos_encoding``) that the correspondence literature extracts
its features with: bicubic, for the plain models with ``scale_factor=(n + 0.1) / 37`` and no
antialiasing, for the register models to the exact size with antialiasing. ``timm`` keeps timm's
own resampling (exact size, antialiased), the previous default: equal to ``official`` for the
register models only; for the plain ones the patch tokens differ from the official ones by several
percent, more at small inputs (docs/backbones.md, ``benchmarks/dinov2_equivalence.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
from torch import nn
from torch.nn import functional as F

from semcorr.backbones.base import Backbone, BackboneConfig, FeatureMap
from semcorr.backbones.upsample import upsampled_stride
from semcorr.checks import number, one_of
from semcorr.registry import configured, register
from semcorr.errors import ConfigError, DataError, SemcorrError, first_sentence
from semcorr.precision import BACKBONE_PRECISIONS, backbone_precision, resolve_backbone_precision

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
POS_EMBED_MODES = ("official", "timm")
FUSE_MODES = ("concat", "mean")
# facebookresearch/dinov2 hub builders: plain models interpolate with a scale factor of
# (n + 0.1) / M and no antialiasing, register models to the exact size with antialiasing
OFFICIAL_INTERPOLATION = {False: (0.1, False), True: (0.0, True)}  # registers -> (offset, antialias)


@dataclass
class DinoV2Config(BackboneConfig):
    model: str = "vit_base_patch14_dinov2"  # a timm name (see MODELS)
    weights: str = "timm"  # timm | none | /path/to/checkpoint.{pth,safetensors}
    layer: int = -1  # block whose tokens are returned (negative: from the end)
    # several blocks (replaces layer when non-empty): their tokens fused by `fuse`, each as the
    # official get_intermediate_layers gives it (through the final norm when `norm`)
    layers: List[int] = field(default_factory=list)
    fuse: str = "concat"  # concat (channels in the order of `layers`: D * len(layers)) | mean (D)
    norm: bool = True  # apply the final LayerNorm to the returned tokens
    # the last k blocks (and the final norm) train; the rest, and the patch / position embeddings
    # and class / register tokens, stay frozen and in eval mode. -1: the whole ViT trains (every
    # block, patch embedding, position embedding, class / register tokens, final norm), e.g. a
    # randomly initialised model learned from scratch (configs/backbone/vit_tiny_random.yaml)
    trainable_blocks: int = 0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 2} for tests
    # how the position embedding is resized to the input's patch grid: official (as the
    # facebookresearch code: plain models bicubic with scale factor (n + 0.1) / 37, no antialias;
    # register models exact size, antialiased) | timm (timm's resampling: exact size, antialiased)
    pos_embed: str = "official"
    # the ViT's compute precision (docs/backbones.md, "Precision"): auto (an active autocast is
    # followed, else tf32 on CUDA and exact fp32 elsewhere) | fp32 | tf32 | bf16; features are
    # returned in float32 whatever it is
    precision: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        number(self, "trainable_blocks", ge=-1, integer=True)
        number(self, "layer", integer=True)
        for layer in self.layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ValueError(f"layers must be a list of block indices (integers), got {list(self.layers)!r}")
        one_of(self, "fuse", FUSE_MODES)
        one_of(self, "pos_embed", POS_EMBED_MODES)
        one_of(self, "precision", BACKBONE_PRECISIONS)


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


def official_file_name(model: str) -> str:
    """The facebookresearch checkpoint file of a model: ``vit_small_patch14_reg4_dinov2`` (or
    ``vits14_reg``) -> ``dinov2_vits14_reg4_pretrain.pth``."""
    short = next((k for k, v in MODELS.items() if model in (k, v)), "vitb14")
    return f"dinov2_{short.replace('_reg', '_reg4')}_pretrain.pth"


def _offline_message(model: str, reason: str) -> str:
    return (
        f"cannot get pretrained weights for {model} through timm ({reason}). Download them "
        f"elsewhere and pass a local checkpoint: backbone.weights=/path/to/{official_file_name(model)} "
        f"(official facebookresearch file) or a timm .safetensors; backbone.weights=none gives "
        f"random weights"
    )


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official DINOv2 ``.pth`` or a timm state dict (``.pth`` / ``.safetensors``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DINOv2 checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("not a state dict of tensors")
    except Exception as err:  # noqa: BLE001  (UnpicklingError, SafetensorError, EOFError, ...)
        raise DataError(f"backbone.weights={path} is not a readable DINOv2 checkpoint "
                        f"({type(err).__name__}: {first_sentence(err)})") from None
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise ConfigError(
            f"backbone.weights={path} does not fit {type(model).__name__}: missing {missing[:5]}, "
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


def official_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       num_prefix: int, offset: float, antialias: bool,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """``pos_embed`` (1, num_prefix + Mh*Mw, D) resized to ``new_grid`` (h, w) patches with the
    arithmetic of the official ``DinoVisionTransformer.interpolate_pos_encoding``.

    Same size and a square input: returned as it is. Else, in float32: bicubic
    ``F.interpolate`` with ``scale_factor=((h + offset) / Mh, (w + offset) / Mw)`` when ``offset``
    is non-zero (so the sampling positions follow the offset scale, not the exact ratio), else with
    ``size=(h, w)``; ``antialias`` as given; the result cast to ``dtype`` (the tokens' dtype).
    The ``num_prefix`` leading entries (the class token's position, if the table has one) are
    kept as they are.
    """
    (mh, mw), (h, w) = old_grid, new_grid
    dtype = pos_embed.dtype if dtype is None else dtype
    if h * w == mh * mw and h == w:
        return pos_embed.to(dtype)
    pos = pos_embed.float()
    dim = pos.shape[-1]
    prefix, patch = pos[:, :num_prefix], pos[:, num_prefix:]
    if patch.shape[1] != mh * mw:
        raise ValueError(f"position embedding of {patch.shape[1]} patches does not fit a {mh}x{mw} grid")
    if offset:
        resize: Dict[str, Any] = {"scale_factor": (float(h + offset) / mh, float(w + offset) / mw)}
    else:
        resize = {"size": (h, w)}
    patch = F.interpolate(patch.reshape(1, mh, mw, dim).permute(0, 3, 1, 2), mode="bicubic",
                          antialias=antialias, **resize)
    if tuple(patch.shape[-2:]) != (h, w):  # the official code asserts this too
        raise ValueError(f"position embedding resized to {tuple(patch.shape[-2:])}, not {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((prefix, patch), dim=1).to(dtype)


@register("backbone", "dinov2", DinoV2Config)
class DinoV2(Backbone):
    """Patch tokens of one block (or several) of a DINOv2 ViT as a (B, D, H/14, W/14) map.

    ``forward`` normalises [0, 1] RGB with the ImageNet mean/std, runs the ViT at the input's own
    size and returns the tokens of block ``layer`` (optionally through the final norm), without
    class and register tokens; blocks after ``layer`` are not run. With ``layers=[l1, l2, ...]``
    the tokens of each listed block (each through the final norm when ``norm``: the official
    ``get_intermediate_layers(x, n=layers, norm=norm)``) are fused: ``concat`` stacks their
    channels in the listed order (D * len(layers) channels), ``mean`` averages them (D); blocks
    after the deepest listed one are not run. The position embedding is
    resized to the input's patch grid as the official DINOv2 code does (``pos_embed="official"``,
    :func:`official_pos_embed`; cached per grid size while it is not being trained) or as timm
    does (``pos_embed="timm"``, timm's ``_pos_embed``).

    ``trainable_blocks=k`` (``0 <= k <= depth``) trains the last ``k`` blocks and the final norm;
    the patch embedding, position embedding and class / register tokens stay frozen.
    ``trainable_blocks=-1`` trains everything: all blocks, the patch embedding, the position
    embedding, the class / register tokens and the final norm (for training a random ViT from
    scratch). Blocks after ``layer`` never train (their output is unused). Frozen modules
    (:meth:`frozen_modules`) are in eval mode from construction on, and :meth:`train` keeps them so.

    ``precision`` (:data:`semcorr.precision.BACKBONE_PRECISIONS`) is the ViT's compute precision
    (:func:`semcorr.precision.backbone_precision`): ``auto`` follows an active autocast (the
    trainer's ``bf16-mixed``), else TF32 on CUDA and exact float32 elsewhere; ``fp32`` is exact
    float32 even under an autocast. The features are returned in float32 whatever it is.
    """

    def __init__(self, cfg: Optional[DinoV2Config] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(DinoV2Config, cfg, **overrides)
        self.pos_embed_mode = cfg.pos_embed
        self.precision = cfg.precision
        self._pos_cache: Dict[tuple, torch.Tensor] = {}
        self.model_name = MODELS.get(cfg.model, cfg.model)
        self.weights = cfg.weights
        self.model_kwargs = dict(cfg.model_kwargs or {})
        self._instance = uuid.uuid4().hex[:12]
        self.vit = create_vit(self.model_name, cfg.weights, self.model_kwargs)
        self.stride = int(self.vit.patch_embed.patch_size[0])
        self.dim = int(self.vit.embed_dim)
        depth = len(self.vit.blocks)
        self.layers = tuple(layer % depth for layer in (cfg.layers or [cfg.layer]))
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {list(cfg.layers)} name a block twice (depth {depth})")
        self.layer = max(self.layers)  # the deepest block run
        self.fuse = cfg.fuse
        if self.fuse == "concat":
            self.dim *= len(self.layers)
        upsampled_stride(self.stride, cfg.upsample)  # a factor whose cells are exact
        self.upsample = int(cfg.upsample)
        self.norm = cfg.norm
        if cfg.trainable_blocks > depth:  # the schema checks >= -1; the depth is known only here
            raise ValueError(f"trainable_blocks={cfg.trainable_blocks} must be in [0, {depth}], or -1 "
                             f"(the whole ViT, embeddings included, trains)")
        self.trainable_blocks = cfg.trainable_blocks
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.train(self.training)  # frozen modules in eval mode from the start

    @property
    def train_all(self) -> bool:
        """``trainable_blocks == -1``: the whole ViT trains, embeddings included."""
        return self.trainable_blocks == -1

    def cache_key(self) -> str:
        """Model, weights, block(s) and their fusion, norm, position-embedding resizing,
        architecture overrides and the compute precision as a call now resolves it
        (:meth:`resolved_precision`; float32 features keep the key they had before the option
        existed). Randomly initialised models get a per-instance id, so no cache ever mixes two
        random draws."""
        weights = Path(str(self.weights)).name if self.weights not in ("none", "", None) else \
            f"random-{self._instance}"
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.model_kwargs.items()))
        blocks = f"l{self.layer}" if len(self.layers) == 1 else \
            f"l{'+'.join(map(str, self.layers))}-{self.fuse}"
        resolved = self.resolved_precision()
        precision = "" if resolved == "fp32" else f"-{resolved}"
        weights_dtype = self.vit.patch_embed.proj.weight.dtype  # e.g. trainer.precision=bf16-true
        if weights_dtype != torch.float32:
            precision += "-w" + str(weights_dtype).replace("torch.", "")
        return (f"dinov2-{self.model_name}-{weights}-{blocks}-n{int(self.norm)}"
                f"-pe{self.pos_embed_mode}-{extra}{precision}")

    def resolved_precision(self) -> str:
        """``backbone.precision`` for a call now: on the weights' device, under the current
        autocast (:func:`semcorr.precision.resolve_backbone_precision`)."""
        return resolve_backbone_precision(self.precision, self.mean.device)

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

    def _resized_pos_embed(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The official resize of the position embedding to ``grid``; cached per grid while the
        table takes no gradient (the key follows the parameter's storage and in-place version, so
        loading weights or an optimiser step invalidates it)."""
        vit = self.vit
        pos = vit.pos_embed
        offset, antialias = OFFICIAL_INTERPOLATION[vit.reg_token is not None]
        num_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        old_grid = tuple(vit.patch_embed.grid_size)

        def compute() -> torch.Tensor:
            return official_pos_embed(pos, old_grid, grid, num_prefix, offset, antialias, dtype)

        if pos.requires_grad and torch.is_grad_enabled():
            return compute()
        key = (grid, dtype, pos.device, id(pos), pos.data_ptr(), pos._version,
               torch.is_inference_mode_enabled())
        cached = self._pos_cache.get(key)
        if cached is None:
            if len(self._pos_cache) >= 8:
                self._pos_cache.clear()
            cached = self._pos_cache[key] = compute().detach()
        return cached

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus position embedding, with the class (and register) tokens in front:
        timm's ``_pos_embed`` with the official resize of the table."""
        vit = self.vit
        x = vit.patch_embed(x)  # (B, h, w, D): dynamic_img_size gives NHWC
        if self.pos_embed_mode == "timm":
            return vit._pos_embed(x)
        b, h, w, d = x.shape
        pos = self._resized_pos_embed((h, w), x.dtype)
        x = x.reshape(b, h * w, d)
        prefix = [vit.cls_token.expand(b, -1, -1)] if vit.cls_token is not None else []
        if vit.reg_token is not None:
            prefix.append(vit.reg_token.expand(b, -1, -1))
        if vit.no_embed_class:  # register models: the table covers the patches only
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return vit.pos_drop(x)

    def forward(self, images: torch.Tensor) -> FeatureMap:
        self.check_input(images)
        x = (images - self.mean) / self.std
        grad = torch.is_grad_enabled() and self.trainable_blocks != 0
        vit = self.vit
        b, _, height, width = images.shape
        with torch.set_grad_enabled(grad), backbone_precision(self.resolved_precision(), images.device):
            # timm's forward_intermediates, stopped at block ``layer``
            x = vit.norm_pre(vit.patch_drop(self._embed(x)))
            taken = {}
            for i, blk in enumerate(vit.blocks[: self.layer + 1]):
                x = blk(x)
                if i in self.layers:
                    taken[i] = vit.norm(x) if self.norm else x
            tokens = [taken[i][:, vit.num_prefix_tokens:] for i in self.layers]
            x = tokens[0] if len(tokens) == 1 else (
                torch.cat(tokens, dim=-1) if self.fuse == "concat" else torch.stack(tokens).mean(0))
            h, w = height // self.stride, width // self.stride
            feats = x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return FeatureMap(features=feats.float().contiguous(), stride=self.stride)
