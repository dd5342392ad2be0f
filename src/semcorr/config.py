"""Typed, layered configuration.

A run's configuration is built in three layers, later layers winning:

1. dataclass defaults (this module and the ``*Config`` dataclasses registered per group);
2. one YAML file per *group* (``<config folder>/<group>/<name>.yaml``) holding only what differs
   from the defaults. Its ``kind`` key picks the dataclass that types the group (e.g. a backbone
   group of kind ``dinov2`` or ``dsift``). The group files ship inside the package
   (``semcorr/configs``); a user's own folders (``--config-dir``, ``$SEMCORR_CONFIG_DIR``) are
   searched first (:func:`config_dirs`);
3. command-line tokens: ``group=name`` selects a group file, ``a.b=value`` overrides one key;
   ``experiment=NAME`` inserts the tokens of ``experiment/NAME.yaml`` (e.g. the paper's setting)
   before the command line's own.

Unknown keys and unknown group names raise :class:`ConfigError` with the valid choices.

Example::

    cfg = load_config(["data=pf_willow", "backbone=dsift", "data.max_pairs=100"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from semcorr.atomic import write_text
from semcorr.distributed import launch_out_dir
from semcorr.checks import number, numbers, one_of
from semcorr.errors import ConfigError
from semcorr.pose_align_config import PoseAlignConfig
from semcorr.registry import GROUPS, schemas

CONFIG_DIR_ENV = "SEMCORR_CONFIG_DIR"
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


# The group file chosen when the command line names none.
DEFAULT_GROUPS: Dict[str, str] = {
    "data": "synthetic",
    "backbone": "dsift",
    "matcher": "nn",
    "head": "none",
    "loss": "none",
}


# --------------------------------------------------------------------------------------------
# Top-level (group-independent) sections
# --------------------------------------------------------------------------------------------
@dataclass
class MetricConfig:
    alphas: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.15])
    # a named protocol of the dataset (docs/datasets.md), e.g. zero_shot | ncnet | cats for
    # PF-PASCAL; None: the dataset's default. The keys below, when set, override its settings.
    protocol: Optional[str] = None
    threshold_by: Optional[str] = None  # bbox | bbox_kp | image
    average: Optional[str] = None  # per_image | per_keypoint
    strict: Optional[bool] = None  # true: error < alpha * L; every packaged protocol: <=
    bootstrap: int = 1000  # resamples for pck_ci95 (semcorr.metrics.bootstrap); 0: none
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        from semcorr.metrics.protocol import AVERAGES, THRESHOLD_BY  # deferred (torch)

        numbers(self, "alphas", gt=0, le=1)
        number(self, "bootstrap", ge=0, integer=True)
        number(self, "bootstrap_seed", ge=0, integer=True)
        one_of(self, "threshold_by", THRESHOLD_BY, none_ok=True)
        one_of(self, "average", AVERAGES, none_ok=True)


@dataclass
class LoggerConfig:
    # null: W&B logs only when configured in the environment (a W&B login: WANDB_API_KEY or
    # ~/.netrc; or WANDB_MODE set, e.g. offline); true: always (offline without a login); false: never
    wandb: Optional[bool] = None
    project: str = "semcorr"
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # auto: online when an API key is configured and WANDB_MODE is not offline, else offline.
    mode: str = "auto"  # auto | online | offline | disabled
    csv: bool = True
    table_pairs: int = 32  # W&B table of the first pairs' predictions with thumbnails; 0: none

    def __post_init__(self) -> None:
        one_of(self, "mode", ("auto", "online", "offline", "disabled"))


@dataclass
class PlotsConfig:
    """Figures of an evaluation run (see ``semcorr.viz.write_eval_figures``)."""

    n_pairs: int = 4  # pairs drawn in keypoints.png and dense_warp.png
    max_points: int = 50  # matches drawn per pair (evenly spaced), so dense queries stay cheap
    alpha: float = 0.1  # correct / wrong colouring of keypoints.png
    curve_max_alpha: float = 0.2  # pck_curve.png and metrics.json "pck_curve": alpha in [0, this]
    category_curves: bool = True  # pck_curve_per_category.png: one panel per category
    dense_warp: bool = True  # dense_warp.png: target warped into the source frame
    warp_compare: List[str] = field(default_factory=list)  # more matcher files in dense_warp.png
    # pca.png: the kept pairs' features as RGB (first 3 principal components, fitted jointly on
    # both images' foreground; semcorr.pca)
    pca: bool = False

    def __post_init__(self) -> None:
        number(self, "n_pairs", ge=0, integer=True)
        number(self, "alpha", gt=0, le=1)
        number(self, "curve_max_alpha", gt=0, le=1)


@dataclass
class PredictionsConfig:
    """``predictions.jsonl`` of an evaluation run: one line per pair (docs/datasets.md)."""

    enabled: bool = True
    # a pair with more valid queries (dense TSS flow) writes this many, evenly spaced, and its
    # exact counts; None: every query
    max_points: Optional[int] = 256


@dataclass
class CheckpointingConfig:
    """Training checkpoints under ``<out_dir>/checkpoints`` (``train.py``)."""

    monitor: str = "val/pck@0.1"  # selects best-*.ckpt (mode max)
    save_top_k: int = 1
    every_n_steps: int = 50  # last.ckpt every n optimiser steps, for --resume; 0: at validation only

    def __post_init__(self) -> None:
        number(self, "save_top_k", ge=-1, integer=True)
        number(self, "every_n_steps", ge=0, integer=True)


@dataclass
class CacheConfig:
    """Backbone-feature cache for evaluation (features depend only on backbone, image, size)."""

    enabled: bool = True
    memory_mb: int = 2048  # bounded in-memory LRU cache
    disk_dir: Optional[str] = None  # optional on-disk cache, safe to delete

    def __post_init__(self) -> None:
        number(self, "memory_mb", ge=0)


# the values lightning.Trainer(precision=...) accepts (its _PRECISION_INPUT; a test keeps them equal)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
              "transformer-engine", "transformer-engine-float16", "32", "16", "bf16", "64", 32, 16, 64)


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer`` (``trainer.*`` on the command line)."""

    accelerator: str = "auto"
    devices: Any = 1  # per node; > 1 (or -1: all) runs one process per device
    strategy: Any = "auto"  # e.g. ddp; see docs/distributed.md
    num_nodes: int = 1
    sync_batchnorm: bool = False
    profiler: Optional[str] = None  # simple | advanced | pytorch
    precision: Any = "32-true"
    max_steps: int = -1
    max_epochs: Optional[int] = None
    fast_dev_run: Any = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 10
    deterministic: Any = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(dict.fromkeys(map(str, PRECISIONS)))}"
                             f" (or null), got {self.precision!r}")
        number(self, "max_steps", ge=-1, integer=True)
        number(self, "max_epochs", ge=-1, integer=True, none_ok=True)
        number(self, "check_val_every_n_epoch", ge=1, integer=True, none_ok=True)
        number(self, "accumulate_grad_batches", ge=1, integer=True)
        number(self, "gradient_clip_val", ge=0, none_ok=True)
        number(self, "log_every_n_steps", ge=1, integer=True)
        number(self, "num_sanity_val_steps", ge=-1, integer=True, none_ok=True)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    backbone_lr: Optional[float] = None  # None: lr * 0.1
    weight_decay: float = 0.05
    scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        number(self, "lr", gt=0)
        number(self, "backbone_lr", gt=0, none_ok=True)
        number(self, "weight_decay", ge=0)
        one_of(self, "scheduler", ("cosine", "constant"))
        number(self, "warmup_steps", ge=0, integer=True)


@dataclass
class RunConfig:
    """The root config. Group sections (data, backbone, matcher, head, loss) are typed by kind."""

    data: Any = None
    backbone: Any = None
    matcher: Any = None
    head: Any = None
    loss: Any = None
    metric: MetricConfig = field(default_factory=MetricConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    predictions: PredictionsConfig = field(default_factory=PredictionsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pose_align: PoseAlignConfig = field(default_factory=PoseAlignConfig)  # test time; uses GT labels
    out_dir: Optional[str] = None  # None: runs/<timestamp>-<random> (one folder per launch, all ranks)
    seed: int = 0
    ckpt: Optional[str] = None
    device: str = "auto"  # auto | cpu | cuda
    experiment: Optional[str] = None  # the experiment file the run started from (set by experiment=)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_components() -> None:
    """Fill the registry the group schemas come from (imports every component package, and with
    them torch and timm). Deferred to the first group file read, so that importing this module,
    listing the group files and ``--help`` stay light."""
    import semcorr.components  # noqa: F401


def config_dirs(extra: Sequence[str | Path] = ()) -> List[Path]:
    """Folders searched for group files, first match wins: ``extra`` (``--config-dir``), then
    ``$SEMCORR_CONFIG_DIR`` (``os.pathsep``-separated), then the configs shipped in the package.

    A user's folder holds ``<group>/<name>.yaml`` files like the packaged one; a file there with a
    packaged name replaces the packaged file. A folder that does not exist is a
    :class:`ConfigError`.
    """
    env = [p for p in os.environ.get(CONFIG_DIR_ENV, "").split(os.pathsep) if p]
    for given, source in ((extra, "--config-dir"), (env, f"${CONFIG_DIR_ENV}")):
        missing = [str(p) for p in given if not Path(p).expanduser().is_dir()]
        if missing:  # a typo would otherwise silently fall back to the packaged files
            raise ConfigError(f"{source} {missing[0]} is not a folder")
    return [Path(p).expanduser() for p in (*extra, *env)] + [PACKAGED_CONFIGS]


def available(group: str, extra: Sequence[str | Path] = ()) -> List[str]:
    """Names of the ``group`` files in every config folder."""
    return sorted({p.stem for folder in config_dirs(extra) for p in (folder / group).glob("*.yaml")})


def group_file(group: str, name: str, extra: Sequence[str | Path] = ()) -> Path:
    """The file of ``group=name``; :class:`ConfigError` listing the choices when there is none."""
    for folder in config_dirs(extra):
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(
        f"unknown {group} {name!r}; valid choices: {', '.join(available(group, extra)) or '(none)'}"
    )


def load_yaml(path: str | Path, holds: str = "key: value pairs") -> DictConfig:
    """A YAML file of key: value pairs; :class:`ConfigError` naming the file (and the line) when it
    is not readable text, not YAML, or not a mapping (``holds`` says what it should hold)."""
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (cannot be decoded as UTF-8)") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: cannot be read as a config ({type(err).__name__}: "
                          f"{' '.join(str(err).split()[:20])})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(raw, DictConfig):
        got = "a list" if raw is not None else "nothing"
        raise ConfigError(f"{path}: a config file holds {holds}, got {got}")
    return raw


def _bad_value(path: Path, section: str, err: OmegaConfBaseException) -> ConfigError:
    """The one-line error of a value in a file that does not fit its key's type or range."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    value = getattr(err, "value", None)
    shown = f": {value!r}" if value is not None else ""
    detail = (str(getattr(err, "msg", err)).strip().splitlines() or [type(err).__name__])[0]
    return ConfigError(f"{path}: bad value for {section}.{key}{shown} ({detail})")


def group_config(group: str, name: str, extra: Sequence[str | Path] = ()) -> DictConfig:
    """The typed section of ``group=name`` (its schema's defaults, then the file)."""
    path = group_file(group, name, extra)
    raw = load_yaml(path)
    kind = raw.get("kind", name)
    load_components()
    kinds = schemas(group)
    if kind not in kinds:
        raise ConfigError(
            f"{path}: unknown {group} kind {kind!r}; valid kinds: {', '.join(sorted(kinds))}"
        )
    node = OmegaConf.structured(kinds[kind])
    try:
        node = OmegaConf.merge(node, raw)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(
            f"{path}: {err.msg if hasattr(err, 'msg') else err}; valid keys of {group} kind "
            f"{kind!r}: {', '.join(f.name for f in dataclasses.fields(kinds[kind]))}"
        ) from None
    except OmegaConfBaseException as err:  # a value of the wrong type
        raise _bad_value(path, group, err) from None
    try:
        _validate_node(node, f"{group}.")  # its values' ranges, naming the file
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    node.name = name
    return node


EXPERIMENT = "experiment"  # configs/experiment/<name>.yaml: a bundle of tokens (see expand_experiment)
EXPERIMENT_KEYS = ("description", "tokens")


def expand_experiment(tokens: Sequence[str], extra: Sequence[str | Path] = ()) -> tuple[Optional[str], List[str]]:
    """Replace an ``experiment=NAME`` token by the tokens of ``experiment/NAME.yaml``, placed before
    the command line's own tokens (which therefore win). Returns (NAME or None, tokens).

    An experiment file holds ``description`` (one line) and ``tokens`` (a list of ``group=name`` /
    ``key.path=value`` strings); they go through the same parsing and validation as the command
    line's.
    """
    names = [t.split("=", 1)[1] for t in tokens if t.split("=", 1)[0] == EXPERIMENT]
    rest = [t for t in tokens if t.split("=", 1)[0] != EXPERIMENT]
    if not names:
        return None, rest
    if len(names) > 1:
        raise ConfigError(f"give one experiment=NAME, got {len(names)}: {', '.join(names)}")
    path = group_file(EXPERIMENT, names[0], extra)
    raw = OmegaConf.to_container(load_yaml(path, "description and tokens"), resolve=True)
    if not isinstance(raw, dict) or set(raw) - set(EXPERIMENT_KEYS) or not isinstance(raw.get("tokens"), list):
        raise ConfigError(f"{path}: an experiment file holds {' and '.join(EXPERIMENT_KEYS)} (a list of "
                          f"group=name / key.path=value strings); got keys {sorted(raw) if isinstance(raw, dict) else raw}")
    bad = [t for t in raw["tokens"] if not isinstance(t, str) or "=" not in t or t.startswith(EXPERIMENT + "=")]
    if bad:
        raise ConfigError(f"{path}: tokens must be group=name or key.path=value strings; bad: {bad}")
    return names[0], [*raw["tokens"], *rest]


def _split_tokens(tokens: Sequence[str]) -> tuple[Dict[str, str], List[str]]:
    groups: Dict[str, str] = {}
    overrides: List[str] = []
    for token in tokens:
        if "=" not in token:
            raise ConfigError(f"cannot parse {token!r}: expected group=name or key.path=value")
        key, value = token.split("=", 1)
        if key in GROUPS:
            groups[key] = value
        else:
            overrides.append(token)
    return groups, overrides


def _valid_keys(cfg: DictConfig, dotted: str) -> str:
    parts = dotted.split(".")[:-1]
    node: Any = cfg
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node = node[part]
    keys = list(node.keys()) if isinstance(node, DictConfig) else []
    where = ".".join(parts) or "the top level"
    return f"valid keys at {where}: {', '.join(map(str, keys))}"


def load_config(tokens: Sequence[str] = (), base: Optional[DictConfig] = None,
                default_groups: Optional[Dict[str, str]] = None,
                extra_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """Build a run config from command-line tokens (see the module docstring).

    Args:
        tokens: ``group=name`` selections and ``a.b=value`` overrides, in order.
        base: a resolved config to start from instead of the defaults (used to re-open a run's
            saved config); group selections in ``tokens`` replace its groups.
        default_groups: group files chosen when ``tokens`` name none, on top of
            :data:`DEFAULT_GROUPS` (``train.py`` defaults to ``loss=gaussian_ce``).
        extra_dirs: user config folders searched before the packaged ones (:func:`config_dirs`).
    Returns:
        A struct-mode ``DictConfig``: assigning an unknown key raises.
    """
    experiment, tokens = expand_experiment(tokens, extra_dirs)
    groups, overrides = _split_tokens(tokens)
    if base is None:
        cfg = OmegaConf.structured(RunConfig)
        for group, default in {**DEFAULT_GROUPS, **(default_groups or {})}.items():
            cfg[group] = group_config(group, groups.get(group, default), extra_dirs)
    else:
        cfg = base.copy()
        for group, name in groups.items():
            cfg[group] = group_config(group, name, extra_dirs)
    for token in overrides:
        key, value = token.split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([token])
            if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
                raise ConfigKeyError(f"unknown key {key!r}")
            cfg = OmegaConf.merge(cfg, parsed)
        except (ConfigKeyError, ConfigAttributeError):
            raise ConfigError(f"unknown key {key!r}; {_valid_keys(cfg, key)}") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad value for {key!r}: {value!r} ({type(err).__name__})") from None
    if experiment is not None:
        cfg.experiment = experiment
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    if cfg.out_dir is None:
        cfg.out_dir = default_out_dir()
    return cfg


def default_out_dir() -> str:
    """``runs/<timestamp>-<random>``, unique per run even within a second and across processes
    (:func:`semcorr.rundir.unique_run_name`); in a distributed launch the name every process
    agrees on (:func:`semcorr.distributed.launch_out_dir`)."""
    from semcorr.rundir import unique_run_name

    return launch_out_dir() or "runs/" + unique_run_name()


def validate(cfg: DictConfig) -> DictConfig:
    """Check every value's range: each section is instantiated as its dataclass, so the range
    checks in the dataclasses' ``__post_init__`` run (OmegaConf does not call them when it merges
    files and command-line values). Inner sections are checked first, so the error names the
    innermost key: :class:`ConfigError` ``matcher.n_steps must be an integer >= 0, got -3``.
    """
    _validate_node(cfg, "")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda, got {cfg.device!r}")
    return cfg


def _validate_node(node: DictConfig, prefix: str) -> None:
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            _validate_node(child, f"{prefix}{key}.")
    schema = OmegaConf.get_type(node)
    if prefix and dataclasses.is_dataclass(schema):
        try:
            OmegaConf.to_object(node)
        except ValueError as err:
            text = " ".join(str(err).split())
            raise ConfigError(f"{prefix}{text}") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"{prefix.rstrip('.')}: {type(err).__name__}: "
                              f"{' '.join(str(err).split()[:30])}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write the resolved config to ``<out_dir>/config.yaml`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / "config.yaml", to_yaml(cfg))
