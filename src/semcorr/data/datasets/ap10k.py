"""AP-10K (Yu et al., 2021) as a semantic-correspondence benchmark, built as GeoAware-SC builds it.

``root`` holds the released COCO-style keypoint files ``annotations/ap10k-{split}-split<fold>.json``
(``data.annotation`` is the template; ``data.fold`` picks the split files, 1 by default) and the
images under ``data/`` (``data.image_dir``). Each category is a species (``name``) of a family
(``supercategory``); an annotation holds 17 keypoints ``[x, y, v, ...]`` and ``bbox`` [x, y, w, h].

The benchmark is not part of AP-10K: GeoAware-SC (Zhang et al., "Telling Left from Right",
CVPR 2024) builds it in ``Junyi42/GeoAware-SC`` ``prepare_ap10k.ipynb``. semcorr builds the same
pairs from the released files, deterministically, in these steps:

1. **Merge** the train, test and val files of the fold (in that order, as GeoAware-SC does):
   images, annotations and categories of all three.
2. **One annotation per image**: the first one of that image in merged order; later ones (other
   animals in the image) are dropped.
3. **Drop crowd images**: GeoAware-SC drops the 1,847 image ids listed in its
   ``data/ap-10k_is_crowd.txt``, a list whose origin it does not document. What the released
   annotations themselves say is COCO's ``iscrowd`` flag, so semcorr drops every image with an
   ``iscrowd`` = 1 annotation. ``data.single_instance=true`` also drops every image with more than
   one annotated animal (a guess at what the list holds; not verified).
4. **At least 3 visible keypoints** (``data.min_keypoints``): an image is kept when at least 3 of
   its keypoints have ``v > 0`` (GeoAware-SC reads COCO's ``num_keypoints``, the same count).
5. **Split per species**: the species' kept images sorted by image id; the last 30
   (``data.test_per_species``) are test, the 20 before them (``data.val_per_species``) val, the
   rest train. GeoAware-SC takes them in ``os.walk`` order, which depends on the file system, so
   its split is not reproducible; sorting by id is the deterministic order used here.
6. **Pairs** of the split, each with at least 3 keypoints visible in both images (``v > 0`` in
   both; GeoAware-SC's ``v/2 * v/2`` sum is the same count for AP-10K's flags 0 and 2); a
   keypoint is valid (scored) when visible in both:

   - ``intra_species`` (category = species): every unordered pair of the species' images, the
     one with the smaller image id as source (GeoAware-SC orients them by a seeded shuffle). The
     train split keeps at most 50 x (number of images) per species (``data.train_pairs_per_image``).
   - ``cross_species`` (category = family): in every family with more than one species, for every
     two species (sorted by name) every (first species, second species) image pair; at most 900
     per family on test, 400 on val and train (``data.cross_species_pairs``).
   - ``cross_family`` (category = ``all``): for every two families (sorted by name) every (first
     family, second family) image pair; at most 30 per family pair on test, 20 on val and train
     (``data.cross_family_pairs``).

   Where there are more candidates than the cap, the sampler keeps those with the smallest
   8-byte ``blake2b("<seed>|<group>|<src image id>|<trg image id>")`` (``data.seed``, 0; group:
   the species, the family or ``<family>|<family>``), in enumeration order: deterministic,
   independent of library versions and of the candidates' order (GeoAware-SC uses
   ``random.sample`` with seed 42 on its ``os.walk`` order).

``tests/test_datasets_ap10k.py`` builds a fixture in the released format and checks the pairs
every setting yields against hand counts (docs/datasets.md lists them).

Protocol ``geoaware`` (GeoAware-SC ``pck_train.py``, ``utils/utils_dataset.py``): threshold
alpha * max(w, h) of the target box in original pixels, source -> target, mean per image pooled
over all pairs. GeoAware-SC compares with ``<``: ``metric.strict=true`` for its exact rule.
Symmetric keypoints come from ``semcorr.data.symmetry``; every pair carries the left/right keys of
:mod:`semcorr.data.left_right` (from all 17 keypoints of each image).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from semcorr.checks import number, one_of
from semcorr.registry import configured, register
from semcorr.data.base import DataConfig, PairDataset, PairRecord
from semcorr.data.datasets._files import DataError, read_json
from semcorr.data.left_right import groups_of, left_right_fields, visible_points
from semcorr.data.symmetry import load_symmetry, sym_indices
from semcorr.metrics.protocol import protocol
from semcorr.paths import resolve_root

MODES = ("intra_species", "cross_species", "cross_family")
SPLITS = ("train", "val", "test")
MERGE_ORDER = ("train", "test", "val")  # GeoAware-SC's order of the released files
N_KEYPOINTS = 17
CROSS_SPECIES_CAP = {"test": 900, "val": 400, "train": 400}
CROSS_FAMILY_CAP = {"test": 30, "val": 20, "train": 20}


@dataclass
class AP10KConfig(DataConfig):
    annotation: str = "annotations/ap10k-{split}-split{fold}.json"  # {split}: train, test, val
    fold: int = 1
    image_dir: str = "data"
    mode: str = "intra_species"  # intra_species | cross_species | cross_family
    min_keypoints: int = 3  # visible keypoints per image, and visible in both images per pair
    single_instance: bool = False  # also drop images with more than one annotated animal
    test_per_species: int = 30  # the last images of each species (by image id)
    val_per_species: int = 20  # the images before those
    train_pairs_per_image: int = 50  # intra-species train pairs: at most this x images, per species
    cross_species_pairs: Optional[int] = None  # per family; None: 900 (test), 400 (val, train)
    cross_family_pairs: Optional[int] = None  # per family pair; None: 30 (test), 20 (val, train)
    seed: int = 0  # salts the hash that picks capped pairs

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "mode", MODES)
        number(self, "fold", ge=1, integer=True)
        number(self, "min_keypoints", ge=1, le=N_KEYPOINTS, integer=True)
        for key in ("test_per_species", "val_per_species"):
            number(self, key, ge=0, integer=True)
        number(self, "train_pairs_per_image", ge=1, integer=True)
        for key in ("cross_species_pairs", "cross_family_pairs"):
            number(self, key, ge=1, integer=True, none_ok=True)


@dataclass
class _Image:
    image_id: int
    file: str
    species: str
    family: str
    kps: np.ndarray  # (17, 2)
    vis: np.ndarray  # (17,) bool
    bbox: List[float]  # x1, y1, x2, y2


def merged_annotations(files: Sequence[Tuple[Path, Dict[str, Any]]], single_instance: bool = False,
                       min_keypoints: int = 3) -> List[_Image]:
    """Steps 1-4 of the module docstring: the kept images (one annotation each), by image id.

    Args:
        files: (path, parsed COCO dict) of each split file, in merge order.
    """
    images: Dict[Any, Dict[str, Any]] = {}
    cats: Dict[Any, Tuple[str, str]] = {}
    first: Dict[Any, Tuple[Path, Dict[str, Any]]] = {}  # image id -> (file, its first annotation)
    count: Dict[Any, int] = defaultdict(int)
    crowd = set()
    for path, coco in files:
        try:
            for c in coco["categories"]:
                cats.setdefault(c["id"], (str(c["name"]), str(c.get("supercategory", c["name"]))))
            for im in coco["images"]:
                images.setdefault(im["id"], im)
            for ann in coco["annotations"]:
                image_id = ann["image_id"]
                first.setdefault(image_id, (path, ann))
                count[image_id] += 1
                if ann.get("iscrowd", 0):
                    crowd.add(image_id)
        except (KeyError, TypeError) as err:
            raise DataError(f"ap10k: malformed annotation file {path}: {err!r}") from None
    out = []
    for image_id, (path, ann) in first.items():
        if image_id in crowd or (single_instance and count[image_id] > 1):
            continue
        try:
            raw = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            if len(raw) != N_KEYPOINTS:
                raise DataError(f"annotation {ann.get('id')}: {len(raw)} keypoints, expected 17")
            vis = (raw[:, 2] > 0) & (raw[:, :2] >= 0).all(1)
            if vis.sum() < min_keypoints:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            species, family = cats[ann["category_id"]]
            out.append(_Image(int(image_id), str(images[image_id]["file_name"]), species, family,
                              raw[:, :2], vis, [x, y, x + w, y + h]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"ap10k: malformed annotation of image {image_id} in {path} (or its "
                            f"image / category record missing): {err!r}") from None
    return sorted(out, key=lambda im: im.image_id)


def split_species(images: Sequence[_Image], test: int = 30,
                  val: int = 20) -> Dict[str, Dict[str, List[_Image]]]:
    """Step 5: ``{split: {species: [images]}}``, each species' images in id order; the last
    ``test`` are test, the ``val`` before them val, the rest train."""
    by_species: Dict[str, List[_Image]] = defaultdict(list)
    for im in sorted(images, key=lambda im: im.image_id):
        by_species[im.species].append(im)
    out: Dict[str, Dict[str, List[_Image]]] = {s: {} for s in SPLITS}
    for species, ims in by_species.items():
        n_test = min(test, len(ims))
        n_val = min(val, max(0, len(ims) - n_test))
        n_train = len(ims) - n_test - n_val
        out["train"][species] = ims[:n_train]
        out["val"][species] = ims[n_train:n_train + n_val]
        out["test"][species] = ims[n_train + n_val:]
    return out


def _hash(seed: int, category: str, src: _Image, trg: _Image) -> bytes:
    text = f"{seed}|{category}|{src.image_id}|{trg.image_id}"
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def pick(pairs: List[Tuple[_Image, _Image]], n: Optional[int], seed: int,
         category: str) -> List[Tuple[_Image, _Image]]:
    """At most ``n`` of ``pairs``: those with the smallest hash, kept in their given order."""
    if n is None or len(pairs) <= n:
        return list(pairs)
    ranked = sorted(range(len(pairs)), key=lambda i: _hash(seed, category, *pairs[i]))
    return [pairs[i] for i in sorted(ranked[:n])]


@register("data", "ap10k", AP10KConfig)
class AP10KDataset(PairDataset):
    shared_subdir = "ap-10k"  # the copy in the shared data folder when data.root is null
    protocols = {"geoaware": protocol(
        threshold_by="bbox", average="per_image",
        reference="Junyi42/GeoAware-SC pck_train.py, utils/utils_dataset.py, prepare_ap10k.ipynb")}
    default_protocol = "geoaware"

    def __init__(self, cfg: Optional[AP10KConfig] = None, split: Optional[str] = None,
                 divisor: int = 1, **overrides) -> None:
        cfg = configured(AP10KConfig, cfg, **overrides)
        split = split or cfg.split
        super().__init__(cfg, divisor)
        if split not in SPLITS:
            raise DataError(f"ap10k: unknown split {split!r}; valid: {', '.join(SPLITS)}")
        base = resolve_root(cfg.root, self.shared_subdir, "ap10k")
        self.image_root = base / cfg.image_dir
        files = []
        for name in MERGE_ORDER:
            path = Path(cfg.annotation.format(split=name, fold=cfg.fold))
            path = path if path.is_absolute() else base / path
            files.append((path, read_json(path, "ap10k")))
        self.annotation_source = ", ".join(str(p) for p, _ in files)
        images = merged_annotations(files, cfg.single_instance, cfg.min_keypoints)
        species_split = split_species(images, cfg.test_per_species, cfg.val_per_species)[split]
        self.min_keypoints = cfg.min_keypoints
        self.seed = cfg.seed
        self.sym = load_symmetry().pairs("ap10k")
        self.groups = groups_of("ap10k")
        self._images = {im.file: im for im in images}
        mode = cfg.mode
        if mode == "intra_species":
            records = self._intra(species_split, split, cfg.train_pairs_per_image)
        elif mode == "cross_species":
            cap = CROSS_SPECIES_CAP[split] if cfg.cross_species_pairs is None else cfg.cross_species_pairs
            records = self._cross_species(species_split, cap)
        else:
            cap = CROSS_FAMILY_CAP[split] if cfg.cross_family_pairs is None else cfg.cross_family_pairs
            records = self._cross_family(species_split, cap)
        if not records:
            raise DataError(f"ap10k: no {mode} pairs in the {split} split of {base} "
                            f"({len(images)} usable images)")
        self.finalize(records, categories=sorted({r.category for r in records}))

    def left_right_of(self, rec: PairRecord) -> Dict[str, np.ndarray]:
        """The left/right keys of a pair, from all 17 keypoints of its two images."""
        src, trg = self._images[rec.src], self._images[rec.trg]
        return left_right_fields(rec.kps_ids, visible_points(src.kps, src.vis),
                                 visible_points(trg.kps, trg.vis), self.sym, self.groups)

    # ------------------------------------------------------------------ pairs
    def _valid(self, pairs) -> List[Tuple[_Image, _Image]]:
        return [(s, t) for s, t in pairs if (s.vis & t.vis).sum() >= self.min_keypoints]

    def _intra(self, by_species: Dict[str, List[_Image]], split: str,
               per_image: int) -> List[PairRecord]:
        records = []
        for species in sorted(by_species):
            ims = by_species[species]
            pairs = self._valid(itertools.combinations(ims, 2))
            cap = per_image * len(ims) if split == "train" else None
            records += [self._record(s, t, species) for s, t in pick(pairs, cap, self.seed, species)]
        return records

    def _cross_species(self, by_species: Dict[str, List[_Image]], cap: int) -> List[PairRecord]:
        families: Dict[str, List[str]] = defaultdict(list)
        for species, ims in by_species.items():
            if ims:
                families[ims[0].family].append(species)
        records = []
        for family in sorted(families):
            pairs = []
            for a, b in itertools.combinations(sorted(families[family]), 2):
                pairs += self._valid(itertools.product(by_species[a], by_species[b]))
            records += [self._record(s, t, family) for s, t in pick(pairs, cap, self.seed, family)]
        return records

    def _cross_family(self, by_species: Dict[str, List[_Image]], cap: int) -> List[PairRecord]:
        families: Dict[str, List[_Image]] = defaultdict(list)
        for species in sorted(by_species):
            for im in by_species[species]:
                families[im.family].append(im)
        records = []
        for fa, fb in itertools.combinations(sorted(families), 2):
            pairs = self._valid(itertools.product(families[fa], families[fb]))
            chosen = pick(pairs, cap, self.seed, f"{fa}|{fb}")
            records += [self._record(s, t, "all") for s, t in chosen]
        return records

    def _record(self, src: _Image, trg: _Image, category: str) -> PairRecord:
        valid = src.vis & trg.vis
        ids = np.arange(N_KEYPOINTS)
        return PairRecord(
            src=src.file, trg=trg.file,
            src_kps=np.where(valid[:, None], src.kps, 0.0), trg_kps=np.where(valid[:, None], trg.kps, 0.0),
            valid=valid, category=category, kps_ids=ids, src_bbox=src.bbox, trg_bbox=trg.bbox,
            sym_pairs=sym_indices(ids, valid, self.sym),
            pair_id=f"{src.image_id}-{trg.image_id}:{category}",
            meta={"src_species": src.species, "src_family": src.family,
                  "trg_species": trg.species, "trg_family": trg.family},
        )
