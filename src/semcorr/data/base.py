"""The base of every pair dataset: records in the original frame -> samples in the network frame."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from semcorr.checks import number, one_of
from semcorr.registry import GroupConfig
from semcorr.errors import ConfigError, DataError
from semcorr.metrics.protocol import DIRECTIONS, Protocol, protocol
from semcorr.digest import image_digest
from semcorr.stores import MemoryCache
from semcorr.data.annotations import (box_problem, image_problem, keypoint_problem,
                                      shape_problem, threshold_problem)
from semcorr.data.resize import RESIZE_MODES, resize_image, resize_mask, to_network
from semcorr.data.schema import swap_sides
from semcorr.data.transforms import AugmentConfig

log = logging.getLogger(__name__)

FLIP_SUFFIX = "#hflip"  # an image id with this suffix is served mirrored (TSS, PF-PASCAL flips)
BAD_PAIRS = ("error", "skip")  # data.bad_pairs


SUBSETS = ("per_category", "first")


def subset_indices(categories: Sequence[str], n: int, seed: int) -> List[int]:
    """Indices of ``n`` of the items (given by their categories) that stand for the whole: each
    category gets pairs in proportion to its size (largest remainders; at least one each when
    ``n`` covers every category, taken from the category most above its share), drawn at random
    with ``seed`` (NumPy PCG64), kept in the dataset's order.

    Example: 900 PF-WILLOW pairs in 10 subsets of 90, ``n=60`` -> 6 pairs of each subset.
    """
    by_cat: Dict[str, List[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(c, []).append(i)
    total = len(categories)
    if n >= total:
        return list(range(total))
    names = list(by_cat)
    quota = {c: n * len(by_cat[c]) / total for c in names}
    take = {c: int(quota[c]) for c in names}
    for c in sorted(names, key=lambda c: (-(quota[c] - take[c]), names.index(c)))[: n - sum(take.values())]:
        take[c] += 1
    if n >= len(names):  # every category present: a pair moves from the most over-served one
        for c in [c for c in names if take[c] == 0]:
            donor = max((d for d in names if take[d] > 1),
                        key=lambda d: (take[d] - quota[d], -names.index(d)))
            take[donor] -= 1
            take[c] = 1
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen = [i for c in names for i in rng.choice(by_cat[c], size=take[c], replace=False).tolist()]
    return sorted(chosen)


@dataclass
class DataConfig(GroupConfig):
    """Fields every dataset config has."""

    root: Optional[str] = None
    split: str = "test"
    image_size: int = 224
    resize: str = "longer_side_pad"  # square | longer_side_pad | longer_side | centre_canvas
    batch_size: int = 8
    num_workers: int = 0
    max_pairs: Optional[int] = None
    # how max_pairs picks its pairs: per_category (a seeded sample, every category in proportion
    # to its pairs) | first (the first max_pairs in the dataset's order)
    subset: str = "per_category"
    subset_seed: int = 0
    categories: List[str] = field(default_factory=list)  # empty: all
    image_cache_mb: int = 512  # decoded images kept in memory (per worker)
    # a pair whose annotation is degenerate (semcorr.data.annotations): error (naming the file) or
    # skip (left out, counted in a warning)
    bad_pairs: str = "error"
    # how far a valid keypoint may lie outside its image, as a fraction of the longer side
    keypoint_margin: float = 0.1
    # training-time paired augmentation (semcorr.data.transforms); not a dataset argument
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        number(self, "image_size", ge=1, integer=True)
        one_of(self, "resize", RESIZE_MODES)
        number(self, "batch_size", ge=1, integer=True)
        number(self, "num_workers", ge=0, integer=True)
        number(self, "max_pairs", ge=1, integer=True, none_ok=True)
        one_of(self, "subset", SUBSETS)
        number(self, "subset_seed", ge=0, integer=True)
        number(self, "image_cache_mb", ge=0)
        one_of(self, "bad_pairs", BAD_PAIRS)
        number(self, "keypoint_margin", ge=0)


@dataclass
class PairRecord:
    """One annotated pair in the original image frames (before any resizing).

    Keypoints are (K, 2) float (x, y), 0-based pixel-index convention; ``valid`` (K,) bool marks
    keypoints annotated in both images; boxes are (x1, y1, x2, y2) or None.
    """

    src: str
    trg: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    valid: np.ndarray
    category: str
    kps_ids: Optional[np.ndarray] = None
    src_bbox: Optional[Sequence[float]] = None
    trg_bbox: Optional[Sequence[float]] = None
    sym_pairs: Optional[np.ndarray] = None  # (S, 2) indices into the K keypoints
    pair_id: Optional[str] = None
    # left/right diagnostics (semcorr.data.left_right.left_right_fields); None: not known
    left_right: Optional[Dict[str, np.ndarray]] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    annotation: Optional[str] = None  # the file (and row) the annotation was read from


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as (3, h, w) float RGB in [0, 1], honouring EXIF orientation.

    Grey-scale, palette and RGBA files are converted to RGB (alpha is dropped).
    """
    return load_image_uint8(path).float().div_(255.0)


def _decode(path: str | Path, what: str, read) -> Any:
    """``read(im)`` of an image file opened with PIL and turned upright (EXIF orientation); a
    missing file raises ``FileNotFoundError`` and an unreadable one :class:`DataError`, both
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            return read(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None


def read_image_size(path: str | Path) -> Tuple[int, int]:
    """(h, w) of an image file as displayed (EXIF orientation applied), from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _rgb_uint8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey-scale
        grey = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or grey.max() > 255:
            grey = grey / 257.0
        im = Image.fromarray(grey.clip(0, 255).astype(np.uint8))
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_image_uint8(path: str | Path) -> torch.Tensor:
    """:func:`load_image` as (3, h, w) uint8; an image smaller than
    :data:`~semcorr.data.annotations.MIN_IMAGE_SIDE` px a side is a :class:`DataError`."""
    array = _decode(path, "image", _rgb_uint8)
    problem = image_problem(array.shape[:2], str(path))
    if problem:
        raise DataError(problem)
    return torch.from_numpy(array).permute(2, 0, 1)


# EXIF orientation -> the transpose that turns the stored image upright (as ImageOps.exif_transpose)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def load_image_reduced(path: str | Path, keep: int) -> Tuple[torch.Tensor, int, Tuple[int, int]]:
    """An image decoded at an integer fraction of its size, for images far larger than the
    network frame (an 8000 x 6000 photo matched at 224 px).

    JPEG files are decoded directly at 1/2, 1/4 or 1/8 scale (``Image.draft``: DCT scaling, never
    the full-size bitmap), then any format is box-averaged by a further integer factor
    (``Image.reduce``) while every side stays >= ``min(side, keep)``; only then is the image
    converted to float.

    Returns:
        image (3, h', w') float RGB in [0, 1] (upright, EXIF applied), the factor k, and the
        original (h, w) as displayed. Pixel i of the result covers original pixels
        [k i, k i + k): original = (reduced + 0.5) * k - 0.5.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            target = (min(w, keep), min(h, keep))
            factor = 1
            if im.format == "JPEG" and w >= 2 * target[0] and h >= 2 * target[1]:
                im.draft(im.mode, target)
                factor = next((s for s in (1, 2, 4, 8) if im.size == (-(-w // s), -(-h // s))),
                              max(1, round(w / im.size[0])))
            more = min(im.size[0] // target[0], im.size[1] // target[1])
            if more > 1:
                if im.mode.startswith("I;16"):  # 16-bit grey: reduce as 32-bit integers
                    im = im.convert("I")
                elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):  # palette, 1-bit, CMYK...
                    im = im.convert("RGBA" if im.mode in ("P", "PA") and "transparency" in im.info
                                    else "RGB")
                im = im.reduce(more)
            factor *= max(more, 1)
            if orientation in _ORIENTATION:
                im = im.transpose(_ORIENTATION[orientation])
            array = _rgb_uint8(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    size = (w, h) if orientation not in (5, 6, 7, 8) else (h, w)
    problem = image_problem((size[1], size[0]), str(path))
    if problem:
        raise DataError(problem)
    image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
    return image, factor, (size[1], size[0])


def read_label_image(path: str | Path) -> np.ndarray:
    """(h, w) int64 label values of a mask file: palette indices of a palette PNG, grey values of
    a grey one, the luminance of a colour one."""
    def labels(im: Image.Image) -> np.ndarray:
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            im = im.convert("L")
        return np.asarray(im).astype(np.int64)

    return _decode(path, "segmentation", labels)


def read_mask(path: str | Path) -> np.ndarray:
    """A foreground mask file as (h, w) bool: grey values above half the file's maximum (so 0/1,
    0/255 and 16-bit masks all work; an all-zero mask is all background)."""
    grey = _decode(path, "mask", lambda im: np.asarray(
        im.convert("F") if im.mode.startswith("I") else im.convert("L"), dtype=np.float64))
    top = grey.max()
    return grey > top / 2 if top > 0 else np.zeros(grey.shape, dtype=bool)


class PairDataset(Dataset):
    """A list of :class:`PairRecord` served as samples of the schema in ``semcorr.data.schema``.

    Subclasses fill ``self.records`` and ``self.categories`` and may override :meth:`read_image`
    (images are addressed by the record's ``src`` / ``trg`` ids, relative to ``self.image_root``).

    Class attributes ``protocols`` (name -> :class:`~semcorr.metrics.protocol.Protocol`): the
    evaluation protocols of the dataset's literature, ``default_protocol`` the one used unless
    ``metric.protocol`` names another; ``protocol`` is the default one.

    ``direction`` (set by the run builder from the protocol): ``trg_to_src`` serves every pair
    with the roles of its images swapped (:func:`semcorr.data.schema.swap_sides`), so the whole
    pipeline predicts target keypoints in the source and PCK scores them against the source.

    ``image_digests`` (default True): samples carry ``src_digest`` / ``trg_digest``, the content
    digests of the network-frame images (:mod:`semcorr.digest`) that the feature caches key on,
    computed here, in the data workers, rather than on the device in the timed loop. The
    datamodule turns them off for the training split (training uses no feature cache).
    """

    protocols: Dict[str, Protocol] = {"default": protocol(threshold_by="bbox")}
    default_protocol: str = "default"
    # the dataset's folder in the shared data folder, read when data.root is null
    # (semcorr.paths.resolve_root); None: the dataset needs no files or an explicit data.root
    shared_subdir: Optional[str] = None
    # False for datasets that make their keypoints when a pair is loaded (synthetic warps, TSS
    # flow): their records hold none to check
    keypoints_in_records: bool = True

    def __init__(self, cfg: DataConfig, divisor: int = 1) -> None:
        """``cfg``: the dataset's config (:class:`DataConfig` or its subclass; the network frame
        ``image_size`` / ``resize``, ``max_pairs``, ``categories``, ``image_cache_mb``);
        ``divisor``: the backbone's stride (network-frame sizes are its multiples)."""
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.resize = cfg.resize
        self.divisor = divisor
        self.max_pairs = cfg.max_pairs
        self.category_filter = list(cfg.categories)
        self.records: List[PairRecord] = []
        self.categories: List[str] = []
        self.image_root = Path(".")
        self.image_cache = MemoryCache(cfg.image_cache_mb)
        self.transform = None  # optional paired augmentation (training), see semcorr.data.transforms
        self.direction = "src_to_trg"
        self.image_digests = True
        self.annotation_source = ""  # where a record without its own ``annotation`` comes from
        self._sizes: Dict[str, Tuple[int, int]] = {}
        # foreground masks in the samples (src_mask, trg_mask): None (none), "auto" (the dataset's
        # segmentation where it has one, else the box) or "box"; set for Pose-Align's mask score
        self.serve_masks: Optional[str] = None
        # set by finalize when data.max_pairs left pairs out: {"pairs", "of", "how", "seed"}
        self.subset: Optional[Dict[str, Any]] = None

    def subset_note(self) -> str:
        """``60 of 900 pairs (a per-category sample, seed 0)``, or ``900 pairs``."""
        n = len(self.records)
        if self.subset is None:
            return f"{n} pair{'s' if n != 1 else ''}"
        how = (f"a per-category sample, seed {self.subset['seed']}" if self.subset["how"] == "per_category"
               else "the first ones")
        return f"{n} of {self.subset['of']} pairs ({how})"

    @property
    def protocol(self) -> Protocol:
        """The default protocol."""
        return self.protocols[self.default_protocol]

    def set_direction(self, direction: str) -> None:
        """``src_to_trg`` (as annotated) or ``trg_to_src`` (every pair served swapped)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
        self.direction = direction

    # ---- subclasses call this after loading their records
    def finalize(self, records: List[PairRecord], categories: Optional[List[str]] = None) -> None:
        """Keep the records of ``data.categories`` whose annotations pass the checks of
        :mod:`semcorr.data.annotations` (a bad one is a :class:`DataError` naming its file, or
        with ``data.bad_pairs=skip`` left out and counted in a warning), up to ``max_pairs``:
        a seeded per-category sample (:func:`subset_indices`, ``data.subset=per_category``) or
        the first ones (``data.subset=first``); ``self.subset`` records which. Pairs without a valid keypoint are reported (count and ids); a split where no pair has
        one is an error."""
        if self.category_filter:
            known = sorted({r.category for r in records})
            unknown = [c for c in self.category_filter if c not in known]
            if unknown:
                raise ConfigError(f"data.categories: unknown categories {unknown}; valid: "
                                  f"{', '.join(known)}")
            records = [r for r in records if r.category in self.category_filter]
        self.subset = None
        limit = None  # "first": the first max_pairs pairs with good annotations
        if self.max_pairs is not None and self.max_pairs < len(records):
            how, seed = self.cfg.subset, self.cfg.subset_seed
            self.subset = {"pairs": self.max_pairs, "of": len(records), "how": how,
                           "seed": seed if how == "per_category" else None}
            if how == "first":
                limit = self.max_pairs
            else:  # a sampled pair with a bad annotation is left out (data.bad_pairs=skip), not replaced
                keep = subset_indices([r.category for r in records], self.max_pairs, seed)
                records = [records[i] for i in keep]
        kept: List[PairRecord] = []
        skipped: List[str] = []
        for rec in records:
            if limit is not None and len(kept) >= limit:
                break
            problem = self.annotation_problem(rec)
            if problem is None:
                kept.append(rec)
            else:
                skipped.append(self._bad_pair(rec, problem))
        if self.subset is not None:
            self.subset["pairs"] = len(kept)
        self._report(kept, skipped)
        self._set_records(kept, categories)

    def _set_records(self, records: List[PairRecord], categories: Optional[List[str]] = None) -> None:
        self.records = records
        present = {r.category for r in records}
        self.categories = [c for c in (categories or self.categories or sorted(present)) if c in present]
        self._category_idx = {c: i for i, c in enumerate(self.categories)}

    @property
    def dataset_name(self) -> str:
        return getattr(self.cfg, "name", "") or type(self).__name__

    def annotation_of(self, rec: PairRecord) -> str:
        """Where a record's annotation comes from (its file, for messages)."""
        return rec.annotation or self.annotation_source or f"the annotations under {self.image_root}"

    def original_size(self, image_id: str) -> Tuple[int, int]:
        """(h, w) of an image as served, from its file's header (cached)."""
        key = str(image_id)
        key = key[: -len(FLIP_SUFFIX)] if key.endswith(FLIP_SUFFIX) else key
        if key not in self._sizes:
            self._sizes[key] = read_image_size(self.image_root / key)
        return self._sizes[key]

    def annotation_problem(self, rec: PairRecord) -> Optional[str]:
        """The first problem of a record's annotations (:mod:`semcorr.data.annotations`), or None."""
        if not self.keypoints_in_records:
            return None
        src_kps = np.asarray(rec.src_kps, dtype=np.float64)
        trg_kps = np.asarray(rec.trg_kps, dtype=np.float64)
        valid = np.asarray(rec.valid, dtype=bool).reshape(-1)
        problem = shape_problem(src_kps, trg_kps, valid)
        for box, which in ((rec.src_bbox, "source"), (rec.trg_bbox, "target")):
            problem = problem or box_problem(box, which)
        for image, kps, which in ((rec.src, src_kps, "source"), (rec.trg, trg_kps, "target")):
            if problem is None:
                size = self.original_size(image)
                problem = (image_problem(size, image)
                           or keypoint_problem(kps, valid, size, which, image, self.cfg.keypoint_margin))
        return problem

    def _bad_pair(self, rec: PairRecord, problem: str) -> str:
        """The message of a bad pair: raised (``data.bad_pairs=error``) or returned to be counted."""
        text = (f"{self.dataset_name}: bad annotation of pair {rec.pair_id or rec.src + '->' + rec.trg!r} "
                f"in {self.annotation_of(rec)}: {problem}")
        if self.cfg.bad_pairs == "error":
            raise DataError(f"{text}; fix the file, or set data.bad_pairs=skip to leave such pairs out")
        return text

    def _report(self, kept: List[PairRecord], skipped: List[str]) -> None:
        name = self.dataset_name
        self.bad_pairs_left_out = getattr(self, "bad_pairs_left_out", 0) + len(skipped)
        if skipped and not kept:
            raise DataError(f"{name}: every pair was left out for a bad annotation "
                            f"(data.bad_pairs=skip), e.g. {skipped[0]}")
        if skipped:
            log.warning("%s: left out %d pair(s) with bad annotations (data.bad_pairs=skip), e.g. %s",
                        name, len(skipped), " | ".join(skipped[:3]))
        if not self.keypoints_in_records or not kept:
            return
        empty = [r.pair_id or f"{r.src}->{r.trg}" for r in kept if not np.asarray(r.valid).any()]
        if empty and len(empty) == len(kept):
            raise DataError(f"{name}: none of the {len(kept)} pairs has a keypoint annotated in both "
                            f"images (valid); there is nothing to score ({self.annotation_of(kept[0])})")
        if empty:
            log.warning("%s: %d of %d pairs have no keypoint annotated in both images and are not "
                        "scored: %s%s", name, len(empty), len(kept), ", ".join(map(str, empty[:10])),
                        " ..." if len(empty) > 10 else "")

    def check_protocol(self, protocol: Protocol) -> None:
        """Every scored pair has a threshold L > 0 under ``protocol`` (as this dataset serves its
        pairs, :meth:`set_direction`): a target box for ``bbox``, target keypoints spanning more
        than a point for ``bbox_kp``. A pair that has not is a :class:`DataError`, or left out
        with ``data.bad_pairs=skip``."""
        if not self.keypoints_in_records or protocol.threshold_by == "image":
            return
        trg = "src" if self.direction == "trg_to_src" else "trg"
        kept, skipped = [], []
        for rec in self.records:
            problem = threshold_problem(np.asarray(getattr(rec, f"{trg}_kps"), dtype=np.float64),
                                        np.asarray(rec.valid, dtype=bool).reshape(-1),
                                        getattr(rec, f"{trg}_bbox"), protocol.threshold_by)
            if problem is None:
                kept.append(rec)
            else:
                skipped.append(self._bad_pair(rec, problem))
        if skipped:
            self._report(kept, skipped)
            self._set_records(kept)

    def __len__(self) -> int:
        return len(self.records)

    def pair_selection(self) -> Dict[str, Any]:
        """The ``data.*`` settings that narrowed the split's pairs (``{"data.max_pairs": 100,
        "data.subset": "per_category", "data.subset_seed": 0}``;
        ``bad_pairs_left_out``: how many pairs ``data.bad_pairs=skip`` left out; empty: every
        pair), reported next to the numbers."""
        out: Dict[str, Any] = {}
        if self.max_pairs is not None:
            out["data.max_pairs"] = int(self.max_pairs)
        if self.subset is not None:  # max_pairs left pairs out: how they were chosen
            out["data.subset"] = self.subset["how"]
            if self.subset["how"] == "per_category":
                out["data.subset_seed"] = int(self.subset["seed"])
        if self.category_filter:
            out["data.categories"] = [str(c) for c in self.category_filter]
        if getattr(self, "bad_pairs_left_out", 0):
            out["bad_pairs_left_out"] = int(self.bad_pairs_left_out)  # data.bad_pairs=skip
        return out

    def read_image(self, image_id: str) -> torch.Tensor:
        """(3, h, w) float image of an id relative to ``image_root``; ids ending in
        :data:`FLIP_SUFFIX` are served mirrored horizontally. Decoded files are kept (as uint8)
        in a bounded LRU cache, since pair benchmarks use each image many times."""
        key = str(image_id)
        mirrored = key.endswith(FLIP_SUFFIX)
        if mirrored:
            key = key[: -len(FLIP_SUFFIX)]
        cached = self.image_cache.get(key)
        if cached is None:
            cached = load_image_uint8(self.image_root / key)
            self.image_cache.put(key, cached)
        image = cached.float().div_(255.0)
        return image.flip(-1) if mirrored else image

    def foreground(self, image_id: str, box: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """(h, w) bool foreground of an image in its original frame: here the annotated box
        (:func:`box_mask`); datasets that ship segmentations override this (SPair-71k)."""
        if box is None or torch.isnan(box).any():
            raise DataError(f"no foreground for {image_id}: the dataset has no box or segmentation "
                            "for it (Pose-Align: use pose_align.score=mutual_nn)")
        return box_mask(box, hw)

    def image_ids(self) -> List[str]:
        """Distinct image ids, in first-use order."""
        return list(dict.fromkeys(i for r in self.records for i in (r.src, r.trg)))

    def distinct_images(self) -> int:
        """Distinct pictures behind :meth:`image_ids`, by content: files with the same bytes count
        once (PF-WILLOW's subsets share files: 100 ids, 70 pictures, as the feature cache finds),
        a mirrored id (:data:`FLIP_SUFFIX`) is a picture of its own, and an id that names no file
        under ``image_root`` (generated images) counts once."""
        seen = set()
        digests: Dict[str, str] = {}
        for image_id in self.image_ids():
            key = str(image_id)
            mirrored = key.endswith(FLIP_SUFFIX)
            name = key[: -len(FLIP_SUFFIX)] if mirrored else key
            if name not in digests:
                path = self.image_root / name
                digests[name] = (hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file()
                                 else "id:" + name)
            seen.add(digests[name] + (FLIP_SUFFIX if mirrored else ""))
        return len(seen)

    def load_pair(self, index: int) -> Dict[str, Any]:
        """The pair in its original frames: images (3, h, w), keypoints, validity, boxes, ids."""
        rec = self.records[index]
        return {
            "category": rec.category,
            "src_img": self.read_image(rec.src),
            "trg_img": self.read_image(rec.trg),
            "src_kps": torch.as_tensor(rec.src_kps, dtype=torch.float32).reshape(-1, 2),
            "trg_kps": torch.as_tensor(rec.trg_kps, dtype=torch.float32).reshape(-1, 2),
            "kps_valid": torch.as_tensor(rec.valid, dtype=torch.bool).reshape(-1),
            "kps_ids": None if rec.kps_ids is None else torch.as_tensor(
                np.asarray(rec.kps_ids), dtype=torch.long).reshape(-1),
            "src_bbox": _box(rec.src_bbox),
            "trg_bbox": _box(rec.trg_bbox),
            "sym_pairs": torch.as_tensor(
                np.zeros((0, 2)) if rec.sym_pairs is None else np.asarray(rec.sym_pairs),
                dtype=torch.long).reshape(-1, 2),
        }

    def __getitem__(self, index: int) -> Dict[str, Any]:
        pair = self.load_pair(index)
        if self.transform is not None:
            pair = self.transform(pair)
        sample = self.make_sample(self.records[index], pair)
        if self.image_digests:  # after any augmentation: the pixels the backbone will see
            sample["src_digest"] = image_digest(sample["src_img"])
            sample["trg_digest"] = image_digest(sample["trg_img"])
        if self.direction == "trg_to_src":
            sample = swap_sides(sample)
        sample["index"] = index
        sample["direction"] = self.direction
        return sample

    def make_sample(self, rec: PairRecord, pair: Dict[str, Any]) -> Dict[str, Any]:
        """Resize an original-frame pair (see :meth:`load_pair`) into a schema sample. The record's
        left/right keys (:mod:`semcorr.data.left_right`) are added when it has them and no training
        transform moved the keypoints."""
        src_img, trg_img = pair["src_img"], pair["trg_img"]
        size, mode, divisor = self.image_size, self.resize, self.divisor
        src_net, src_frame, src_hw, src_yx = resize_image(src_img, size, mode, divisor)
        trg_net, trg_frame, trg_hw, trg_yx = resize_image(trg_img, size, mode, divisor)
        k = pair["src_kps"].shape[0]
        ids = pair["kps_ids"] if pair["kps_ids"] is not None else torch.full((k,), -1, dtype=torch.long)
        sample = {
            "src_img": src_net,
            "trg_img": trg_net,
            "src_kps": to_network(pair["src_kps"], src_frame),
            "trg_kps": to_network(pair["trg_kps"], trg_frame),
            "src_kps_orig": pair["src_kps"],
            "trg_kps_orig": pair["trg_kps"],
            "kps_valid": pair["kps_valid"],
            "kps_ids": ids,
            "src_frame": src_frame,
            "trg_frame": trg_frame,
            "src_content_hw": src_hw,
            "trg_content_hw": trg_hw,
            "src_content_yx": src_yx,
            "trg_content_yx": trg_yx,
            "src_imsize": torch.tensor(src_img.shape[-2:], dtype=torch.long),
            "trg_imsize": torch.tensor(trg_img.shape[-2:], dtype=torch.long),
            "src_bbox": pair["src_bbox"],
            "trg_bbox": pair["trg_bbox"],
            "category": rec.category,
            "category_idx": self._category_idx.get(rec.category, 0),
            "src_id": rec.src,
            "trg_id": rec.trg,
            "pair_id": rec.pair_id or f"{rec.src}->{rec.trg}",
            "sym_pairs": pair["sym_pairs"],
            **self._masks(rec, pair),
        }
        left_right = self.left_right_of(rec) if self.transform is None else None
        if left_right is not None:
            sample.update({key: torch.as_tensor(value, dtype=torch.bool if value.ndim == 1 else torch.float32)
                           for key, value in left_right.items()})
        return sample

    def left_right_of(self, rec: PairRecord) -> Optional[Dict[str, np.ndarray]]:
        """The left/right keys of a record (:func:`semcorr.data.left_right.left_right_fields`), or
        None when the dataset does not know them: ``rec.left_right`` here; datasets with many pairs
        compute them when a sample is served."""
        return rec.left_right

    def _masks(self, rec: PairRecord, pair: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """``src_mask``, ``trg_mask`` (H, W) bool in the network frame when :attr:`serve_masks`."""
        if self.serve_masks is None:
            return {}
        out = {}
        for side, image_id in (("src", rec.src), ("trg", rec.trg)):
            hw = tuple(pair[f"{side}_img"].shape[-2:])
            mask = self.foreground(image_id, pair[f"{side}_bbox"], hw)
            out[f"{side}_mask"] = resize_mask(mask, self.image_size, self.resize, self.divisor)
        return out


def box_mask(box: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: the pixels (pixel-index convention) inside an (x1, y1, x2, y2) box, inclusive."""
    h, w = hw
    x1, y1, x2, y2 = (float(v) for v in box)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    return (ys >= y1) & (ys <= y2) & (xs >= x1) & (xs <= x2)


def _box(box: Optional[Sequence[float]]) -> torch.Tensor:
    if box is None:
        return torch.full((4,), float("nan"))
    return torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(4)
