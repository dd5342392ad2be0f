"""The whole correspondence pipeline as one pure-torch module: images -> matches.

::

    batch ──► FeatureExtractor (backbone, feature caches) ──► src, trg FeatureMaps (B, D, h, w)
          ──► Head (feature head: new maps; score refiner: a refined similarity volume)
          ──► Matcher (nn | ot | gwot) ──► scores (B, Ns, Nt)
          ──► keypoint transfer (argmax | soft_argmax | window_soft_argmax) ──► predictions

:class:`CorrespondenceNet` imports no Lightning: ``semcorr-match``, :mod:`semcorr.inference`, the
figures and the notebooks call it directly, and
:class:`~semcorr.models.CorrespondenceModule` wraps it for training and evaluation. A batch is a
dict of the sample schema (:mod:`semcorr.data.schema`); :func:`semcorr.inference.pair_batch`
makes one from two images.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from semcorr.backbones.base import Backbone, FeatureMap, valid_cells
from semcorr.backbones.upsample import upsample_features
from semcorr.data.resize import to_original
from semcorr.features import FeatureExtractor
from semcorr.heads.base import Head, NoHead
from semcorr.matchers.base import (Matcher, MatchResult, check_finite_inputs, check_finite_scores,
                                   cosine_similarity)
from semcorr.matchers.transfer import TransferConfig, cell_index, transfer_keypoints
from semcorr.stores import FeatureStore


@dataclass
class MatchOutput:
    """What :meth:`CorrespondenceNet.forward` returns for a batch of B pairs with K query
    keypoints (``src_kps``, padded to the batch's largest K).

    Attributes:
        src: the source :class:`FeatureMap` after the head: features (B, D, h, w), ``stride`` (pixels
            per cell), ``valid`` (B, h, w) cells inside the image content (not padding).
        trg: the same for the target: (B, D, h', w'), ``valid`` (B, h', w').
        result: the matcher's :class:`MatchResult`: ``scores`` (B, Ns, Nt) with Ns = h*w and
            Nt = h'*w' (cosine similarity for ``nn``, log transport plan for the OT family; -inf at
            padded target cells) and matcher ``extras`` (e.g. GW-OT's ``step_size`` (B,)).
        pred: (B, K, 2) predicted target keypoints (x, y), network-frame pixels.
        pred_orig: (B, K, 2) the same in original target-image pixels.
        score: (B, K) the score of each prediction (the row maximum of ``result.scores``).
    """

    src: FeatureMap
    trg: FeatureMap
    result: MatchResult
    pred: torch.Tensor
    pred_orig: torch.Tensor
    score: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        """(B, Ns, Nt) the matcher's scores (``result.scores``)."""
        return self.result.scores


def symmetric_cells(batch: Dict[str, Any], grid: Tuple[int, int], stride: int) -> Optional[torch.Tensor]:
    """(B, S, 2) source-cell indices of the batch's left/right keypoint pairs (``sym_pairs``, indices
    into the K keypoints), -1 where padding or where either keypoint is not valid; None when the
    batch has no pairs."""
    pairs = batch.get("sym_pairs")
    if pairs is None or pairs.numel() == 0:
        return None
    cells = cell_index(batch["src_kps"], grid, stride)  # (B, K)
    ok = (pairs >= 0).all(-1)
    safe = pairs.clamp_min(0)
    out = torch.gather(cells, 1, safe.flatten(1)).view_as(pairs)
    valid = batch["kps_valid"]
    both = torch.gather(valid, 1, safe.flatten(1)).view_as(pairs).all(-1)
    return torch.where((ok & both)[..., None], out, torch.full_like(out, -1))


class StageClock:
    """Wall-clock time of the pipeline's stages (``backbone``, ``match``), for evaluation reports.

    Installed on a net (``net.clock = StageClock()``) only while timing is wanted (the evaluation
    report does so for ``trainer.test``); a net without a clock times nothing. On CUDA each
    stage records a pair of CUDA events (no synchronisation in the loop; :meth:`totals`
    synchronises once); on the CPU, where work is synchronous, it reads ``time.perf_counter``.
    """

    def __init__(self) -> None:
        self._cpu: Dict[str, float] = {}
        self._events: List[Tuple[str, Any, Any]] = []

    @contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        t0 = time.perf_counter()
        yield
        self._cpu[name] = self._cpu.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def totals(self) -> Dict[str, float]:
        """Milliseconds per stage, summed over every call since the clock was made."""
        out = dict(self._cpu)
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                out[name] = out.get(name, 0.0) + start.elapsed_time(end)
        return out


class CorrespondenceNet(nn.Module):
    """Backbone (through a feature extractor with caches), head, matcher and keypoint transfer.

    Args:
        backbone: a :class:`~semcorr.backbones.Backbone` (images -> (B, D, h, w) patch features).
        matcher: a :class:`~semcorr.matchers.Matcher` (feature maps -> (B, Ns, Nt) scores).
        head: optional :class:`~semcorr.heads.Head` between them (default: none).
        transfer: how keypoints are read off the scores (``matcher.transfer``; default argmax).
        stores: feature caches used when ``use_cache`` (:mod:`semcorr.stores`).

    Attributes:
        clock: an optional :class:`StageClock` timing the stages (None: no timing).
    """

    def __init__(self, backbone: Backbone, matcher: Matcher, head: Optional[Head] = None,
                 transfer: Optional[TransferConfig] = None,
                 stores: Sequence[FeatureStore] = ()) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, stores)
        self.head = head if head is not None else NoHead()
        self.matcher = matcher
        self.transfer = transfer if transfer is not None else TransferConfig()
        self.clock: Optional[StageClock] = None

    @property
    def backbone(self) -> Backbone:
        return self.extractor.backbone

    @property
    def device(self) -> torch.device:
        """Where the net's weights live (the CPU for a net without any)."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def _stage(self, name: str, batch: Dict[str, Any]):
        if self.clock is None:
            return nullcontext()
        return self.clock.stage(name, batch["src_img"].device)

    def features(self, batch: Dict[str, Any], use_cache: bool = False) -> Tuple[FeatureMap, FeatureMap]:
        """Backbone features of the batch's source and target images (upsampled by the backbone's
        ``upsample`` factor after the caches), with ``valid`` cell masks.

        Args:
            batch: ``src_img``, ``trg_img`` (B, 3, H, W) network-frame images, ``src_content_hw``,
                ``trg_content_hw`` (B, 2), optional ``src_content_yx`` / ``trg_content_yx``
                (B, 2) (content not at the top-left); optional ``src_id`` / ``trg_id`` (feature
                caches and in-batch deduplication key on the pixels, ids only name them; a backbone
                that ``needs_ids``, e.g. ``precomputed``, reads its features by them) and
                ``src_digest`` / ``trg_digest`` (the pixels' digests from the data workers; hashed
                here otherwise, only when a cache is used).
            use_cache: read and fill the feature caches.
        """
        return self.image_features(batch, "src", use_cache), self.image_features(batch, "trg", use_cache)

    def image_features(self, batch: Dict[str, Any], side: str, use_cache: bool = False) -> FeatureMap:
        """The features of one side (``"src"`` or ``"trg"``) of the batch, as :meth:`features`."""
        fmap = upsample_features(self.extractor(batch[f"{side}_img"], batch.get(f"{side}_id"), use_cache,
                                                batch.get(f"{side}_digest")), self.backbone.upsample)
        fmap.valid = valid_cells(batch[f"{side}_content_hw"], fmap.grid, fmap.stride,
                                 batch.get(f"{side}_content_yx"))
        return fmap

    def match(self, batch: Dict[str, Any], src: FeatureMap, trg: FeatureMap) -> MatchOutput:
        """Head, matcher and keypoint transfer on backbone features.

        Reads ``src_kps`` (B, K, 2) network-frame queries, ``trg_frame`` (B, 4) (to map predictions
        back to original pixels), ``sym_pairs`` / ``kps_valid`` (the symmetry term), ids for
        messages. Non-finite features entering the matcher, or non-finite scores leaving it, raise
        :class:`~semcorr.errors.NumericalError` naming the image or pair (never a silently NaN
        plan: :func:`semcorr.matchers.base.check_finite_inputs`).
        """
        src, trg = self.head(src, trg)
        check_finite_inputs(src, trg, batch.get("src_id"), batch.get("trg_id"))
        similarity = None
        if self.head.refines_similarity:  # e.g. neighbourhood consensus, see semcorr.heads.base
            similarity = self.head.refine(cosine_similarity(src, trg), src, trg)
            check_finite_inputs(src, trg, batch.get("src_id"), batch.get("trg_id"), similarity)
        sym = symmetric_cells(batch, src.grid, src.stride)
        result = self.matcher(src, trg, sym_pairs=sym, similarity=similarity)
        check_finite_scores(result, type(self.matcher).__name__, batch.get("pair_id"))
        pred, score = transfer_keypoints(result.scores, batch["src_kps"], src.grid, src.stride,
                                         trg.grid, trg.stride, self.transfer)
        return MatchOutput(src=src, trg=trg, result=result, pred=pred,
                           pred_orig=to_original(pred, batch["trg_frame"]), score=score)

    def forward(self, batch: Dict[str, Any], use_cache: Optional[bool] = None) -> MatchOutput:
        """Match a batch of pairs.

        Args:
            batch: a collated batch of the sample schema (:mod:`semcorr.data.schema`): at least
                ``src_img``, ``trg_img`` (B, 3, H, W), ``src_kps`` (B, K, 2) (network frame),
                ``kps_valid`` (B, K), ``src_content_hw``, ``trg_content_hw`` (B, 2),
                ``trg_frame`` (B, 4); optionally ``sym_pairs`` (B, S, 2), ids.
            use_cache: use the feature caches (default: when not training).
        Returns:
            :class:`MatchOutput`.
        """
        use_cache = (not self.training) if use_cache is None else use_cache
        with self._stage("backbone", batch):
            src, trg = self.features(batch, use_cache)
        with self._stage("match", batch):
            return self.match(batch, src, trg)
