"""One place builds a run from its config: the model (and a checkpoint's weights, when given)
and the datamodule. ``eval.py``, ``train.py``, ``semcorr-match``, the sweeps and the notebooks all
go through :func:`build_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf

from semcorr.backbones import build_backbone
from semcorr.checkpoint import load_weights
from semcorr.data.base import PairDataset
from semcorr.data.datamodule import CorrespondenceDataModule, dataset_from_config
from semcorr.data.transforms import build_train_transform
from semcorr.errors import ConfigError, DataError, SemcorrError
from semcorr.heads import build_head
from semcorr.losses import build_loss
from semcorr.matchers import build_matcher
from semcorr.matchers.transfer import TransferConfig
from semcorr.metrics import PCK
from semcorr.metrics.protocol import Protocol, resolve_protocol
from semcorr.models import CorrespondenceModule
from semcorr.net import CorrespondenceNet
from semcorr.stores import DiskCache, FeatureStore, MemoryCache


def config_dict(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain containers (saved in checkpoints and logged)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def run_protocol(cfg: DictConfig, dataset: Optional[PairDataset] = None) -> Protocol:
    """The evaluation protocol of a run (:mod:`semcorr.metrics.protocol`): the dataset's protocol
    named by ``metric.protocol`` (None: its default), with ``metric.threshold_by``,
    ``metric.average`` and ``metric.strict`` on top when set."""
    source = dataset if dataset is not None else PairDataset
    m = cfg.metric
    try:
        return resolve_protocol(source.protocols, source.default_protocol, m.protocol,
                                {"threshold_by": m.threshold_by, "average": m.average,
                                 "strict": m.strict})
    except ValueError as err:
        raise ConfigError(f"metric: {err}") from None


def feature_stores(cfg: DictConfig, trainable_backbone: bool, training: bool) -> List[FeatureStore]:
    """Backbone-feature caches, checked in order: memory, then ``cache.disk_dir`` when set.

    None for a backbone with trainable weights (its features go stale at every step). Training
    and checkpoint evaluation use the memory cache only: the disk cache's keys name pretrained
    weights, which a checkpoint's fine-tuned weights are not.
    """
    if not cfg.cache.enabled or trainable_backbone:
        return []
    stores: List[FeatureStore] = [MemoryCache(cfg.cache.memory_mb)]
    if cfg.cache.disk_dir and not training and not cfg.ckpt:
        stores.append(DiskCache(cfg.cache.disk_dir))
    return stores


STAGES = ("test", "fit", "predict")
T = TypeVar("T")


def _built(what: str, make: Callable[[], T]) -> T:
    """``make()``, with a ``ValueError`` of a component's constructor (a setting it cannot use)
    raised as a one-line :class:`ConfigError` that names the component."""
    try:
        return make()
    except ValueError as err:
        if isinstance(err, SemcorrError):
            raise
        raise ConfigError(f"{what}: {' '.join(str(err).split())}") from None


def check_image_size(cfg: DictConfig, stride: int) -> None:
    """``data.image_size`` must be a multiple of the backbone's stride (its patch size): the
    resizing would otherwise round it, and the run would record a size it did not use."""
    size = int(cfg.data.image_size)
    if size % stride:
        low, high = max(stride, size - size % stride), size - size % stride + stride
        raise ConfigError(f"data.image_size={size} is not a multiple of the {stride}-px patch of "
                          f"backbone={cfg.backbone.name}; use {low} or {high}")


@dataclass
class Run:
    """What :func:`build_run` returns: the model, and for ``test`` / ``fit`` the datamodule and the
    split the model is scored on (``data.split`` for ``test``, the validation split for ``fit``)."""

    module: CorrespondenceModule
    datamodule: Optional[CorrespondenceDataModule] = None
    dataset: Optional[PairDataset] = None
    protocol: Optional[Protocol] = None  # run_protocol(cfg, dataset)

    @property
    def net(self) -> CorrespondenceNet:
        return self.module.net


def build_net(cfg: DictConfig, training: bool = False) -> CorrespondenceNet:
    """The pipeline of a run config: backbone (with the feature caches :func:`feature_stores`
    allows), head, matcher and ``matcher.transfer``. With ``cfg.ckpt`` set (and not ``training``:
    ``--resume`` restores its own state), the checkpoint's weights are loaded; they must fit
    exactly."""
    backbone = _built(f"backbone={cfg.backbone.name}", lambda: build_backbone(cfg.backbone))
    check_image_size(cfg, backbone.stride)
    backbone.check_network_frame(int(cfg.data.image_size), str(cfg.data.resize))
    head = _built(f"head={cfg.head.name}", lambda: build_head(cfg.head, dim=backbone.dim))
    matcher = _built(f"matcher={cfg.matcher.name}", lambda: build_matcher(cfg.matcher))
    trainable = any(p.requires_grad for p in backbone.parameters())
    transfer = OmegaConf.to_object(cfg.matcher.transfer)
    assert isinstance(transfer, TransferConfig)
    parts = dict(head=head, transfer=transfer, stores=feature_stores(cfg, trainable, training))
    if cfg.pose_align.enabled:
        net = pose_aligned_net(cfg, backbone, matcher, parts)
    else:
        net = CorrespondenceNet(backbone, matcher, **parts)
    if cfg.ckpt and not training:
        load_weights(net, cfg.ckpt)
    return net


def pose_aligned_net(cfg: DictConfig, backbone, matcher, parts: Dict[str, Any]) -> CorrespondenceNet:
    """The net with Pose-Align (``pose_align.enabled``, :mod:`semcorr.pose_align`): the dataset's
    left/right table (the packaged symmetry table under ``data.kind``), keypoints mirrored about the
    canvas for a centred canvas (GeoAware-SC), about the content box otherwise."""
    from semcorr.data.resize import CENTRED
    from semcorr.data.symmetry import load_symmetry
    from semcorr.pose_align import PoseAlignedNet

    symmetry, kind = load_symmetry(), cfg.data.kind
    if symmetry.table.get(kind) is None:
        raise ConfigError(f"pose_align needs left/right keypoint labels; data={cfg.data.name} "
                          f"(kind {kind}) has none (SPair-71k and AP-10K have)")
    options = OmegaConf.to_object(cfg.pose_align)
    return PoseAlignedNet(backbone, matcher, options=options,
                          partner=lambda category: symmetry.partner(kind, category),
                          mirror="canvas" if cfg.data.resize in CENTRED else "content", **parts)


def build_run(cfg: DictConfig, stage: str = "test") -> Run:
    """Build a run from its config.

    Args:
        cfg: a run config (:func:`semcorr.config.load_config`).
        stage: ``test`` (evaluate ``data.split``), ``fit`` (train: also the loss, optimiser
            settings and training augmentation; scored on the validation split) or ``predict``
            (match images without ground truth: no data).
    When ``cfg.ckpt`` is set and the stage is not ``fit`` (``--resume`` restores its own state),
    the checkpoint's weights are loaded into the net (:func:`build_net`).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    training = stage == "fit"
    if cfg.pose_align.enabled and stage != "test":
        raise ConfigError("pose_align is a test-time rule that uses ground-truth left/right labels: "
                          "evaluate with eval.py (it cannot train or match unlabelled images)")
    net = build_net(cfg, training)
    loss = _built(f"loss={cfg.loss.name}", lambda: build_loss(cfg.loss)) if training else None
    if training and loss is None:
        raise ConfigError("training needs a loss: loss=none only evaluates; pick loss=gaussian_ce, "
                          "loss=ot_nll or loss=combined")
    if training and net.backbone.needs_ids and cfg.data.augment.enabled:
        raise ConfigError(f"backbone={cfg.backbone.name} reads features by image id and cannot "
                          "follow data.augment's crops and flips; set data.augment.enabled=false")
    datamodule = dataset = None
    if stage != "predict":
        datamodule = build_datamodule(cfg, net.backbone.stride, training)
        try:
            if training:
                datamodule.dataset("train")
            dataset = datamodule.dataset(datamodule.val_split if training else cfg.data.split)
        except ValueError as err:
            if isinstance(err, SemcorrError):
                raise
            what = "cannot be trained on" if training else "cannot be loaded"
            raise ConfigError(f"data={cfg.data.name} {what}: {' '.join(str(err).split())}") from None
        splits = (["train"] if training else []) + [datamodule.val_split if training else cfg.data.split]
        for split in splits:
            if len(datamodule.dataset(split)) == 0:
                raise DataError(f"data={cfg.data.name} has no pairs in split {split!r} (after "
                                "data.categories / data.max_pairs)")
            net.backbone.check_images(datamodule.dataset(split).image_ids())
    protocol = run_protocol(cfg, dataset)
    if cfg.metric.protocol is None and dataset is not None:  # the saved config names it
        cfg.metric.protocol = protocol.name
    if dataset is not None:  # target -> source protocols serve every pair swapped
        dataset.set_direction(protocol.direction)
        dataset.check_protocol(protocol)  # a threshold L > 0 for every scored pair
        if cfg.pose_align.enabled and cfg.pose_align.score == "mask":
            dataset.serve_masks = cfg.pose_align.masks
    metric = PCK(list(cfg.metric.alphas), protocol,
                 categories=dataset.categories if dataset is not None else ("all",))
    optim = OmegaConf.to_object(cfg.optim) if training else None
    module = CorrespondenceModule(net, loss=loss, metric=metric, optim=optim,
                                  run_config=config_dict(cfg))
    return Run(module, datamodule, dataset, protocol)


def build_datamodule(cfg: DictConfig, divisor: int, training: bool = False) -> CorrespondenceDataModule:
    """The run's datamodule (its test split is ``data.split``); ``training`` adds the training
    augmentation (``data.augment``) to the train split. ``divisor``: the backbone's stride."""
    return CorrespondenceDataModule(
        make_dataset=lambda split: dataset_from_config(cfg.data, split, divisor),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        train_transform=build_train_transform(cfg.data) if training else None,
        test_split=cfg.data.split,
        seed=cfg.seed,
    )
