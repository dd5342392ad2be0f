"""The layout of precomputed features: one file per image under a root folder, described by
``features.json``. Read by ``backbone=precomputed``, written by ``semcorr-features`` (and by your
own exporter: docs/backbones.md, docs/export_features.py).

::

    <root>/features.json                 {"stride": 14, "image_size": 840,
                                          "resize": "longer_side_pad", "dim": 768, ...}
    <root>/<image id>.pt                 one image's features (or .npy / .safetensors)
    <root>/<image id>#hflip.pt           its mirror image's (optional, see below)

**Naming rule.** The features of the image with id ``I`` (the dataset's image id: its path
relative to ``data.root``, e.g. ``PF-dataset-WILLOW/car(G)/car_001.png``; for ``semcorr-match``
the image path as given) are in ``<root>/I.pt``, ``<root>/I.npy`` or ``<root>/I.safetensors`` —
the id with an extension appended, so ``a.jpg`` and ``a.png`` never share a file. Exactly one of
the three may exist. A leading ``/`` of an absolute id is dropped; an id with a ``..`` part is
refused. The mirrored image of a dataset (id ``I#hflip``, TSS and PF-PASCAL flips, a flipped
source) has its own file ``I#hflip.pt``.

**The frame (features.json).** Features are tied to semcorr's network frame, so that keypoints map
to cells exactly: the image resized by ``data.resize`` to ``data.image_size`` (content at the
top-left, padding at the bottom and right, content sides rounded to multiples of ``stride``:
:func:`semcorr.data.resize.resize_image`), cut into ``stride`` x ``stride`` px cells; cell (r, c)
covers pixels [r s, (r+1) s) x [c s, (c+1) s). Required keys: ``stride``, ``image_size`` (a
multiple of ``stride``), ``resize`` (``square`` | ``longer_side_pad`` | ``longer_side``) and
``dim`` (D); anything else (``written_by``: the backbone and command) is kept as information.

**A file** holds one floating-point tensor (float16, bfloat16, float32 or float64) of shape
(D, h, w) or (h * w, D) (row-major cells), where (h, w) = (H / stride, W / stride) of the image's
network frame (H x W: ``image_size`` square for ``square`` / ``longer_side_pad``; the resized
image's own size for ``longer_side``), with finite values. ``.pt``: ``torch.save(tensor)``;
``.npy``: ``numpy.save``; ``.safetensors``: one tensor (any key, or the key ``features``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from semcorr.data.resize import RESIZE_MODES
from semcorr.errors import ConfigError, DataError, first_sentence

META_FILE = "features.json"
EXTENSIONS = (".pt", ".npy", ".safetensors")
FORMATS = tuple(ext[1:] for ext in EXTENSIONS)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REQUIRED = ("stride", "image_size", "resize", "dim")


@dataclass(frozen=True)
class FeatureLayout:
    """What ``features.json`` says: the frame the features were computed on and their size."""

    stride: int
    image_size: int
    resize: str
    dim: int
    written_by: Dict[str, Any] = field(default_factory=dict, compare=False)

    def frame(self) -> Tuple[int, int, str]:
        """(stride, image_size, resize): the network frame with its cells."""
        return self.stride, self.image_size, self.resize

    def describe(self) -> str:
        return (f"D={self.dim}, stride {self.stride} px on the {self.image_size}-px "
                f"{self.resize} frame")


def _check_meta(meta: Dict[str, Any], path: Path) -> FeatureLayout:
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (features.json needs "
                        f"{', '.join(REQUIRED)}; see docs/backbones.md)")
    for key in ("stride", "image_size", "dim"):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{path}: {key} must be an integer >= 1, got {value!r}")
    if meta["resize"] not in RESIZE_MODES:
        raise DataError(f"{path}: resize must be one of {', '.join(RESIZE_MODES)}, got {meta['resize']!r}")
    if meta["image_size"] % meta["stride"]:
        raise DataError(f"{path}: image_size {meta['image_size']} is not a multiple of stride "
                        f"{meta['stride']} (semcorr's frames are whole cells)")
    extra = meta.get("written_by", {})
    return FeatureLayout(stride=meta["stride"], image_size=meta["image_size"], resize=meta["resize"],
                         dim=meta["dim"], written_by=extra if isinstance(extra, dict) else {})


def read_layout(root: str | Path) -> FeatureLayout:
    """The :class:`FeatureLayout` of a features folder; one-line errors for a missing folder or
    description (:class:`ConfigError`) and a malformed one (:class:`DataError`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"backbone.root={root} is not a folder of precomputed features")
    path = root / META_FILE
    if not path.is_file():
        raise ConfigError(f"backbone.root={root} has no {META_FILE} (it states the stride, "
                          f"image_size, resize and dim the features were computed with; "
                          f"semcorr-features writes it, see docs/backbones.md)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {first_sentence(err)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return _check_meta(meta, path)


def layout_digest(root: str | Path) -> str:
    """A short hash of ``features.json`` (12 hex digits), for cache keys."""
    return hashlib.sha1((Path(root) / META_FILE).read_bytes()).hexdigest()[:12]


def write_layout(root: str | Path, layout: FeatureLayout) -> Path:
    """Write ``features.json`` (atomically)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / META_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(layout), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def feature_stem(root: str | Path, image_id: str) -> Path:
    """``<root>/<image id>`` (no extension yet): the naming rule of the module docstring."""
    parts = [p for p in PurePosixPath(str(image_id).replace("\\", "/")).parts if p != "/"]
    if not parts or ".." in parts:
        raise DataError(f"image id {image_id!r} cannot name a features file (empty, or a '..' part)")
    return Path(root).joinpath(*parts)


def find_feature_file(root: str | Path, image_id: str) -> Optional[Path]:
    """The features file of ``image_id`` under ``root``, or None when there is none; two files
    for one id (``a.png.pt`` and ``a.png.npy``) are a :class:`DataError`."""
    stem = str(feature_stem(root, image_id))
    found = [Path(stem + ext) for ext in EXTENSIONS if Path(stem + ext).is_file()]
    if len(found) > 1:
        raise DataError(f"image {image_id!r} has {len(found)} features files "
                        f"({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _read_tensor(path: Path) -> Any:
    """The object stored in a features file (a tensor, when it is a good one)."""
    ext = path.suffix
    if ext == ".pt":
        return torch.load(str(path), map_location="cpu", weights_only=True)
    if ext == ".npy":
        array = np.load(str(path), allow_pickle=False)
        if array.dtype.kind != "f":
            return array  # the dtype check names it
        return torch.from_numpy(np.ascontiguousarray(array))
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "features" in tensors:
        return tensors["features"]
    if len(tensors) != 1:
        return tensors
    return next(iter(tensors.values()))


def load_feature_file(path: str | Path, dim: int, grid: Tuple[int, int]) -> torch.Tensor:
    """The (D, h, w) float32 features of one file, checked: readable, one floating-point tensor
    of shape (``dim``, h, w) or (h * w, ``dim``) for ``grid`` = (h, w), every value finite. Each
    failure is a one-line :class:`DataError` naming the file."""
    path = Path(path)
    try:
        obj = _read_tensor(path)
    except Exception as err:  # noqa: BLE001  (UnpicklingError, SafetensorError, ValueError, EOFError, ...)
        raise DataError(f"cannot read features file {path} ({type(err).__name__}: "
                        f"{first_sentence(err)})") from None
    if isinstance(obj, np.ndarray):
        raise DataError(f"features file {path} has dtype {obj.dtype}; expected float16, bfloat16, "
                        f"float32 or float64")
    if not isinstance(obj, torch.Tensor):
        what = f"a dict of {len(obj)} tensors" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"features file {path} holds {what}, not one tensor")
    if obj.dtype not in FLOAT_DTYPES:
        raise DataError(f"features file {path} has dtype {str(obj.dtype).replace('torch.', '')}; "
                        f"expected float16, bfloat16, float32 or float64")
    h, w = grid
    if tuple(obj.shape) == (dim, h, w):
        feats = obj
    elif tuple(obj.shape) == (h * w, dim):
        feats = obj.t().reshape(dim, h, w)
    else:
        raise DataError(f"features file {path} has shape {tuple(obj.shape)}; expected (D, h, w) = "
                        f"({dim}, {h}, {w}) or (h*w, D) = ({h * w}, {dim}) for this image's frame")
    bad = int((~torch.isfinite(feats)).sum())
    if bad:
        raise DataError(f"features file {path} has {bad} non-finite values (NaN or Inf) of "
                        f"{feats.numel()}")
    return feats.float().contiguous()


def save_feature_file(root: str | Path, image_id: str, features: torch.Tensor, fmt: str = "pt") -> Path:
    """Write one image's (D, h, w) ``features`` under the naming rule, as ``fmt`` (``pt`` |
    ``npy`` | ``safetensors``), atomically (a reader never sees half a file). A file of another
    format for the same id is removed."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stem = str(feature_stem(root, image_id))
    path = Path(f"{stem}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = features.detach().to("cpu", torch.float32).contiguous().clone()  # no view of a batch
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "pt":
        torch.save(data, tmp)
    elif fmt == "npy":
        with open(tmp, "wb") as f:
            np.save(f, data.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"features": data}, str(tmp))
    os.replace(tmp, path)
    for ext in EXTENSIONS:
        other = Path(stem + ext)
        if other != path and other.is_file():
            other.unlink()
    return path
