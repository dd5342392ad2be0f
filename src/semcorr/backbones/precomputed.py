"""``backbone=precomputed``: features computed elsewhere, one file per image, read by image id.

Any model's features (written by ``semcorr-features`` from any semcorr backbone, or exported from
another codebase: docs/export_features.py) then run through every matcher, head, protocol and
figure. The layout -- naming rule, ``features.json``, file formats -- is
:mod:`semcorr.backbones.feature_files`.

The run's network frame must be the one the features were computed on: ``data.image_size`` and
``data.resize`` must equal ``features.json``'s ``image_size`` and ``resize`` (checked when the run
is built), and each image's grid is its network frame divided by ``stride``; keypoints then map to
cells exactly as for a backbone run on the pixels. Every image's file must exist before the run
starts (checked when it is built); each file is checked when it is read (shape, dtype, finite).

Mirrored images (id ``I#hflip``: TSS / PF-PASCAL flips, a flipped Pose-Align source),
``backbone.flipped``:

- ``files`` (default): read ``I#hflip``'s own file -- the features of the mirrored image, as a
  backbone run on it gives them (``semcorr-features`` writes them for the dataset's flipped ids,
  and for every image with ``--mirrored``). Exact.
- ``mirror``: the features of ``I`` with the map flipped left-right (cell c -> w - 1 - c). Only
  for frames without horizontal padding (``data.resize=square`` or ``longer_side``; with
  ``longer_side_pad`` the padding would move to the left). An approximation: backbones are not
  mirror-equivariant (a SIFT descriptor or a ViT token of a mirrored patch is not the mirrored
  descriptor), so this is *not* what the backbone gives on the mirrored image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from semcorr.backbones.base import Backbone, BackboneConfig, FeatureMap
from semcorr.backbones.feature_files import (EXTENSIONS, feature_stem, find_feature_file,
                                             layout_digest, load_feature_file, read_layout)
from semcorr.backbones.upsample import upsampled_stride
from semcorr.checks import one_of
from semcorr.data.base import FLIP_SUFFIX
from semcorr.errors import ConfigError, DataError
from semcorr.registry import configured, register

FLIPPED_MODES = ("files", "mirror")


@dataclass
class PrecomputedConfig(BackboneConfig):
    root: Optional[str] = None  # the features folder (features.json + one file per image id)
    # mirrored images (id + '#hflip'): files (their own files, exact) | mirror (the image's map
    # flipped left-right; frames without horizontal padding only; an approximation)
    flipped: str = "files"

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "flipped", FLIPPED_MODES)


def split_flip(image_id: str) -> Tuple[str, bool]:
    """(the id without :data:`~semcorr.data.base.FLIP_SUFFIX`, whether it had it)."""
    if image_id.endswith(FLIP_SUFFIX):
        return image_id[: -len(FLIP_SUFFIX)], True
    return image_id, False


@register("backbone", "precomputed", PrecomputedConfig)
class PrecomputedFeatures(Backbone):
    """Reads each image's (D, h, w) features from ``<root>/<image id>.{pt,npy,safetensors}``.

    ``forward(images, ids)``: ``images`` (B, 3, H, W) only give the frame (H, W multiples of
    ``stride``; (h, w) = (H, W) / stride); ``ids`` (B,) name the files. Returns float32 features
    on the images' device. No parameters; never trains.
    """

    needs_ids = True

    def __init__(self, cfg: Optional[PrecomputedConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = configured(PrecomputedConfig, cfg, **overrides)
        if not cfg.root:
            raise ConfigError("backbone=precomputed needs backbone.root=DIR: a folder of feature "
                              "files with its features.json (semcorr-features writes one)")
        self.root = Path(cfg.root).expanduser()
        self.layout = read_layout(self.root)
        self.stride, self.dim = self.layout.stride, self.layout.dim
        upsampled_stride(self.stride, cfg.upsample)  # a factor whose cells are exact
        self.upsample = int(cfg.upsample)
        self.flipped = cfg.flipped
        if self.flipped == "mirror" and self.layout.resize == "longer_side_pad":
            raise ConfigError(f"backbone.flipped=mirror cannot mirror maps of the longer_side_pad frame "
                              f"of backbone.root={self.root} (the padding would move to the left); "
                              f"write the mirrored images' files (semcorr-features --mirrored) and "
                              f"use backbone.flipped=files")
        self._key = f"precomputed-{self.root.resolve()}-{layout_digest(self.root)}-{self.flipped}"
        self._files: Dict[str, Path] = {}

    def cache_key(self) -> str:
        """The folder, its ``features.json`` and the mirroring rule."""
        return self._key

    def check_network_frame(self, image_size: int, resize: str) -> None:
        """``data.image_size`` / ``data.resize`` must be those of ``features.json``."""
        layout = self.layout
        if (int(image_size), str(resize)) != (layout.image_size, layout.resize):
            raise ConfigError(
                f"backbone.root={self.root} holds features of the {layout.image_size}-px {layout.resize} "
                f"frame (features.json) but the run uses data.image_size={image_size} "
                f"data.resize={resize}; set data.image_size={layout.image_size} "
                f"data.resize={layout.resize}")

    def _source(self, image_id: str) -> Tuple[str, bool]:
        """The id whose file holds ``image_id``'s features, and whether to mirror them."""
        base, mirrored = split_flip(image_id)
        if mirrored and self.flipped == "mirror":
            return base, True
        return image_id, False

    def _file(self, image_id: str) -> Optional[Path]:
        if image_id not in self._files:
            found = find_feature_file(self.root, image_id)
            if found is None:
                return None
            self._files[image_id] = found
        return self._files[image_id]

    def check_images(self, image_ids: Sequence[str]) -> None:
        """Every image must have its features file (one line naming how many are missing and
        the first one's expected path)."""
        missing = [i for i in dict.fromkeys(image_ids) if self._file(self._source(i)[0]) is None]
        if missing:
            raise DataError(self._missing_message(missing[0], len(missing),
                                                  len(set(image_ids))))

    def _missing_message(self, image_id: str, n_missing: int = 1, n_total: int = 1) -> str:
        source = self._source(image_id)[0]
        stem = feature_stem(self.root, source)
        count = f"{n_missing} of {n_total} images have" if n_total > 1 else "image has"
        hint = ""
        if split_flip(image_id)[1]:
            hint = (" (a mirrored image: semcorr-features writes these files for the dataset's "
                    "flipped ids and, with --mirrored, for every image; or backbone.flipped=mirror)")
        return (f"backbone=precomputed: {count} no features file under {self.root}, e.g. "
                f"{image_id!r}: looked for {stem}{', '.join(EXTENSIONS)}{hint}")

    def read(self, image_id: str, grid: Tuple[int, int]) -> torch.Tensor:
        """(D, h, w) float32 features of one image on a ``grid`` = (h, w) of cells."""
        source, mirror = self._source(image_id)
        path = self._file(source)
        if path is None:
            raise DataError(self._missing_message(image_id))
        feats = load_feature_file(path, self.dim, grid)
        return feats.flip(-1) if mirror else feats

    def forward(self, images: torch.Tensor, ids: Optional[Sequence[str]] = None) -> FeatureMap:
        self.check_input(images)
        if ids is None or len(ids) != images.shape[0]:
            raise ValueError(f"backbone=precomputed needs one image id per image, got "
                             f"{None if ids is None else len(ids)} for {images.shape[0]} images")
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        feats = torch.stack([self.read(str(i), (h, w)) for i in ids])
        return FeatureMap(features=feats.to(images.device), stride=self.stride)
