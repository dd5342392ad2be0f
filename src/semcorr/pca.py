"""PCA maps of a pair's features: what the features see, in colour (the view of the sd-dino paper
and the DINOv2 demo).

The first three principal components of the pair's features are fitted *jointly* on the
foreground cells of both images, so one colour means the same feature direction in both: a part
that looks alike to the backbone has the same colour in source and target.

For features ``f_i`` (D,) of the fit cells of both images (N of them), with mean ``m`` and the
top three right singular vectors ``v_1..v_3`` of the centred (N, D) matrix (float64),
component k of any cell is ``p_k = (f - m) . v_k``; each ``v_k`` is signed so that its entry of
largest magnitude is positive (a deterministic colour). Colours are
``(p_k - min_k) / (max_k - min_k)`` clipped to [0, 1], with min / max over the fit cells of both
images (red = component 1, green = 2, blue = 3); cells outside the fit are black.

Foreground: the border-contrast rule of :mod:`semcorr.foreground` on each image's content, read
at the cell centres, within the content (not padding). When it finds fewer than three foreground
cells in the pair, every content cell is used (the panel says so).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from semcorr.backbones.base import cell_centers
from semcorr.foreground import border_contrast_mask

N_COMPONENTS = 3


def foreground_cells(image: torch.Tensor, content_hw: torch.Tensor, grid: Tuple[int, int],
                     stride: float) -> torch.Tensor:
    """(h, w) bool: cells whose centre lies in the image content and on foreground by the
    border-contrast rule (:func:`semcorr.foreground.border_contrast_mask` of the content).

    Args:
        image: (3, H, W) network-frame image in [0, 1]; content_hw: (2,) its content size.
    """
    ch, cw = (int(v) for v in content_hw)
    mask = torch.from_numpy(border_contrast_mask(image[:, :ch, :cw].float().cpu(),
                                                 cell=max(1, int(round(stride)))))
    centres = cell_centers(grid, stride)  # (h*w, 2) x, y
    x, y = centres[:, 0].round().long(), centres[:, 1].round().long()
    inside = (centres[:, 0] < cw) & (centres[:, 1] < ch)
    fg = torch.zeros(len(centres), dtype=torch.bool)
    fg[inside] = mask[y[inside], x[inside]]
    return fg.view(grid)


def joint_pca_rgb(src: torch.Tensor, trg: torch.Tensor, src_fit: torch.Tensor,
                  trg_fit: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """RGB maps of the first three principal components fitted on both maps' fit cells (module
    docstring).

    Args:
        src, trg: (D, h, w) and (D, h', w') features.
        src_fit, trg_fit: (h, w), (h', w') bool cells to fit on (at least two in all).
    Returns:
        (h, w, 3) and (h', w', 3) float32 colours in [0, 1]; black outside the fit cells (fewer
        than three components, when D or the cells allow fewer, leave the last channels 0).
    """
    flat = [f.detach().flatten(1).t().double().cpu() for f in (src, trg)]  # (n, D)
    fits = [m.flatten().cpu() for m in (src_fit, trg_fit)]
    x = torch.cat([f[m] for f, m in zip(flat, fits)])
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least two cells to fit on, got {x.shape[0]}")
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    k = min(N_COMPONENTS, vh.shape[0])
    comps = vh[:k]  # (k, D)
    top = comps.abs().argmax(1)
    comps = comps * torch.sign(comps[torch.arange(k), top])[:, None]
    fitted = (x - mean) @ comps.t()
    low, high = fitted.min(0).values, fitted.max(0).values
    span = (high - low).clamp_min(1e-12)
    out = []
    for f, m, fm in zip(flat, fits, (src, trg)):
        rgb = torch.zeros(f.shape[0], N_COMPONENTS, dtype=torch.float64)
        rgb[:, :k] = (((f - mean) @ comps.t() - low) / span).clamp(0, 1)
        rgb[~m] = 0
        out.append(rgb.float().view(fm.shape[1], fm.shape[2], N_COMPONENTS))
    return out[0], out[1]


def pca_panel(batch: Mapping[str, Any], match: Any, b: int = 0) -> Dict[str, Any]:
    """The PCA figure's row for pair ``b`` of a pipeline batch and its
    :class:`~semcorr.net.MatchOutput` (the features the matcher saw: after the head and any
    upsampling): ``src``, ``trg`` (3, h, w) content crops, ``src_pca``, ``trg_pca`` (h_c, w_c, 3)
    colours of the content cells, ``stride``, ``fit`` (``foreground`` or ``all content cells``)
    and ``title``. All on the CPU."""
    maps, fits, crops, cells = [], [], [], []
    for side in ("src", "trg"):
        fmap = getattr(match, side)
        content = batch[f"{side}_content_hw"][b].cpu()
        image = batch[f"{side}_img"][b].cpu()
        valid = fmap.valid[b].cpu() if fmap.valid is not None else torch.ones(fmap.grid, dtype=torch.bool)
        maps.append(fmap.features[b])
        fits.append((foreground_cells(image, content, fmap.grid, fmap.stride) & valid, valid))
        crops.append(image[:, : int(content[0]), : int(content[1])])
        cells.append((round(int(content[0]) / fmap.stride), round(int(content[1]) / fmap.stride)))
    fit = "foreground"
    masks = [fg for fg, _ in fits]
    if sum(int(m.sum()) for m in masks) < N_COMPONENTS:
        fit, masks = "all content cells", [valid for _, valid in fits]
    src_rgb, trg_rgb = joint_pca_rgb(maps[0], maps[1], masks[0], masks[1])
    pair = batch["pair_id"][b] if "pair_id" in batch else f"{batch['src_id'][b]}->{batch['trg_id'][b]}"
    category = f"{batch['category'][b]}: " if "category" in batch else ""
    return {"src": crops[0], "trg": crops[1],
            "src_pca": src_rgb[: cells[0][0], : cells[0][1]], "trg_pca": trg_rgb[: cells[1][0], : cells[1][1]],
            "stride": match.src.stride, "fit": fit, "title": f"{category}{pair}"}
