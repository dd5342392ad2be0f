"""Export another codebase's features into semcorr's precomputed layout -- an example to adapt,
not part of the package. The DIFT extractor below (Tang et al. 2023) needs the DIFT repository
(github.com/Tsingularity/dift) and its environment; semcorr does not depend on it.

    cd /path/to/dift && PYTHONPATH=. python /path/to/semcorr/docs/export_features.py \\
        data=spair data.root=/data/SPair-71k data.image_size=768 data.resize=square out_dir=feats/spair_dift
    python eval.py data=spair data.root=/data/SPair-71k data.image_size=768 data.resize=square \\
        backbone=precomputed backbone.root=feats/spair_dift matcher=nn

semcorr hands the extractor every image of the dataset split exactly as its evaluation sees it:
(3, H, W) RGB in [0, 1] in the network frame of ``data.image_size`` / ``data.resize`` (content at
the top-left, padding at the bottom and right, sides multiples of the stride). The extractor
returns a (D, H / stride, W / stride) map; semcorr writes it under the naming rule with
``features.json`` (:mod:`semcorr.backbones.feature_files`). Nothing else about the model matters.

DIFT here: Stable Diffusion 2.1, t = 261, the output of U-Net up-block 1 (1280 channels, a 16-px
grid: 48 x 48 cells at 768 x 768 px, the square frame DIFT's SPair evaluation uses), an ensemble
of 8 noise draws, the prompt "a photo of a <category>" (DIFT's SPair evaluation conditions on the
category). DIFT itself resizes with PIL and upsamples the maps to the image size before its
argmax; here the model sees semcorr's resized pixels (antialiased bilinear), and
``backbone.upsample=k`` does the upsampling, so its numbers are DIFT's features under semcorr's
protocol, not a rerun of DIFT's script.

An SD-DINO-style fusion fits the same hook: run each model on the image (each on the canvas it
wants, e.g. by resizing the given image), resample every map to one grid with
``F.interpolate(..., size=(H // stride, W // stride), mode="bilinear")``, L2-normalise each over
its channels and concatenate them.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, Sequence

import torch

from semcorr.backbones.feature_files import FeatureLayout
from semcorr.config import load_config
from semcorr.data.datamodule import dataset_from_config
from semcorr.feature_export import export_features

# one network-frame image (3, H, W) in [0, 1] and its id -> its (D, H / stride, W / stride) map
ExtractOne = Callable[[torch.Tensor, str], torch.Tensor]


def export(tokens: Sequence[str], extract_one: ExtractOne, stride: int, dim: int, fmt: str = "pt",
           mirrored: bool = False) -> int:
    """Write ``extract_one``'s features of every image of the dataset the config ``tokens`` name
    (``data=...``, ``data.split``, ``data.image_size``, ``data.resize``) into ``out_dir``; returns
    how many files were written."""
    cfg = load_config(list(tokens))
    dataset = dataset_from_config(cfg.data, cfg.data.split, stride)
    layout = FeatureLayout(stride=stride, image_size=int(cfg.data.image_size), resize=str(cfg.data.resize),
                           dim=dim, written_by={"command": " ".join(["docs/export_features.py", *tokens])})

    def extract(images: torch.Tensor, ids) -> torch.Tensor:
        return torch.stack([extract_one(image, i).float().cpu() for image, i in zip(images, ids)])

    return export_features(dataset, extract, cfg.out_dir, layout, fmt=fmt, mirrored=mirrored)


def image_categories(tokens: Sequence[str], stride: int) -> Dict[str, str]:
    """image id -> the category of the pairs it appears in (for DIFT's prompt)."""
    cfg = load_config(list(tokens))
    dataset = dataset_from_config(cfg.data, cfg.data.split, stride)
    return {i: r.category for r in dataset.records for i in (r.src, r.trg)}


def dift_extractor(categories: Dict[str, str]) -> ExtractOne:
    """DIFT's Stable Diffusion featurizer (``src/models/dift_sd.py`` of the DIFT repository)."""
    from src.models.dift_sd import SDFeaturizer  # the DIFT repository on PYTHONPATH

    dift = SDFeaturizer("stabilityai/stable-diffusion-2-1")

    def extract_one(image: torch.Tensor, image_id: str) -> torch.Tensor:
        ft = dift.forward(image * 2 - 1, prompt=f"a photo of a {categories[image_id]}", t=261,
                          up_ft_index=1, ensemble_size=8)  # (1, 1280, H / 16, W / 16)
        return ft[0]

    return extract_one


if __name__ == "__main__":
    argv = sys.argv[1:]
    n = export(argv, dift_extractor(image_categories(argv, 16)), stride=16, dim=1280)
    sys.stdout.write(f"wrote {n} feature files\n")
