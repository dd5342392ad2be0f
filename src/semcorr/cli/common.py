"""What eval, train and match share: argument parsing and building a run from its config."""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from semcorr import atomic
from semcorr.checkpoint import PLACEMENT_KEYS, checkpoint_config, ckpt_token
from semcorr.cli.console import quiet_console
from semcorr.config import load_config, to_yaml
from semcorr.distributed import DEFAULT_OUT_DIR_ENV, launch_rank_is_zero
from semcorr.errors import ConfigError, SemcorrError
from semcorr.interrupt import (RunInterrupted, exit_code, interrupting_signal, signal_name,
                               sigterm_raises)

# torch, Lightning and the components are imported once the arguments are parsed (``--help`` and
# bad arguments answer in well under 2 s): by the functions that need them.

log = logging.getLogger("semcorr")


@dataclass
class Args:
    tokens: List[str]
    print_config: bool = False
    resume: Optional[str] = None
    config_dirs: List[str] = field(default_factory=list)
    config: Optional[str] = None  # --config FILE: a saved run's config.yaml to start from
    verbose: bool = False
    overwrite: bool = False


def usage(prog: str, flags: Sequence[str] = (), extra_dirs: Sequence[str] = ()) -> str:
    """The ``--help`` text (:mod:`semcorr.cli.help`)."""
    from semcorr.cli.help import help_text

    return help_text(prog, flags, extra_dirs)


def _print_help(prog: str, flags: Sequence[str], extra_dirs: Sequence[str], topic: Optional[str]) -> None:
    from semcorr.cli.help import topic_help, topics

    if topic is None:
        sys.stdout.write(usage(prog, flags, extra_dirs))
        return
    text = topic_help(topic, extra_dirs)
    if text is None:
        raise ConfigError(f"no help on {topic!r}; topics: {', '.join(topics())}")
    sys.stdout.write(text)


def parse_args(argv: Sequence[str], prog: str, flags: Sequence[str] = ()) -> Args:
    """Split ``argv`` into config tokens and flags; ``--help [TOPIC]`` prints the help
    (:mod:`semcorr.cli.help`) and exits."""
    args = Args(tokens=[])
    argv = list(argv)
    it = iter(range(len(argv)))
    wants_help = False
    topic: Optional[str] = None
    for i in it:
        token = argv[i]
        if token in ("-h", "--help"):
            wants_help = True
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is not None and not following.startswith("-") and "=" not in following:
                topic = following
                next(it, None)
        elif token == "--print-config":
            args.print_config = True
        elif token == "--verbose":
            args.verbose = True
        elif token == "--config":
            args.config = argv[i + 1] if i + 1 < len(argv) else None
            next(it, None)
            if args.config is None:
                raise ConfigError("--config needs a saved config.yaml (a run's out_dir/config.yaml)")
        elif token == "--config-dir":
            value = argv[i + 1] if i + 1 < len(argv) else None
            next(it, None)
            if value is None:
                raise ConfigError("--config-dir needs a folder")
            args.config_dirs.append(value)
        elif token == "--overwrite" and "--overwrite" in flags:
            args.overwrite = True
        elif token == "--resume" and "--resume" in flags:
            args.resume = argv[i + 1] if i + 1 < len(argv) else None
            next(it, None)
            if args.resume is None:
                raise ConfigError("--resume needs a checkpoint path or an out_dir")
        elif token.startswith("--"):
            raise ConfigError(f"unknown flag {token}; valid: --config, --config-dir, --print-config, "
                              "--verbose, --help" + "".join(f", {f}" for f in flags))
        else:
            args.tokens.append(token)
    if wants_help:
        _print_help(prog, flags, args.config_dirs, topic)
        raise SystemExit(0)
    return args


def setup_logging(verbose: bool = False) -> None:
    """semcorr's log on the console: INFO with ``--verbose`` (on global rank 0), else warnings
    only (the console shows progress bars, the results and where they went)."""
    level = logging.INFO if verbose else logging.WARNING  # other libraries' info too (matplotlib)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    logging.getLogger("semcorr").setLevel(level)
    quiet_unless(launch_rank_is_zero())


def quiet_unless(rank_zero: bool) -> None:
    """Ranks other than global rank 0 of a distributed run log warnings only."""
    if not rank_zero:
        logging.getLogger("semcorr").setLevel(logging.WARNING)


def run_main(fn, argv: Optional[Sequence[str]], prog: str) -> int:
    """Run ``fn(argv)``, turning configuration and input errors, and a file that cannot be written
    (full disk, read-only), into one line on stderr and exit code 2; a run stopped by SIGINT /
    SIGTERM into one line and 130 / 143 (:mod:`semcorr.interrupt`). The console is quiet
    (:func:`semcorr.cli.console.quiet_console`) unless ``--verbose`` is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    setup_logging(verbose)
    try:
        with sigterm_raises(), quiet_console(verbose):
            return fn(argv) or 0
    except (SemcorrError, FileNotFoundError) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except BaseException as err:  # noqa: BLE001  (only interruptions are answered here)
        signum = interrupting_signal(err)
        if signum is None:
            raise
        detail = err.detail if isinstance(err, RunInterrupted) else ""
        sys.stderr.write(f"{prog}: interrupted by {signal_name(signum)}"
                         + (f"; {detail}" if detail else "") + "\n")
        return exit_code(signum)


# a file or folder that cannot be written: the disk, the quota, the permissions (one line, rc 2)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG)


def resolve_config(args: Args) -> Optional[DictConfig]:
    """The run config of ``args``; None after printing it when ``--print-config`` was given.

    With a ``ckpt=PATH`` token the run is rebuilt from the checkpoint's saved config, and the
    other tokens override it (so ``eval.py ckpt=RUN data=pf_willow`` scores a trained model on
    another dataset with the same backbone, head and matcher). ``--config FILE`` starts from a
    saved run's config instead (a ``ckpt=`` token then only replaces its checkpoint). The
    settings of a checkpoint that change its features are kept unless overridden, and values the
    defaults leave open are filled in (:mod:`semcorr.resolved`): the saved config re-runs the run.
    """
    from semcorr.resolved import keep_feature_settings, resolve_open_values, saved_config

    ckpt = ckpt_token(args.tokens)
    base = (saved_config(args.config) if args.config
            else checkpoint_config(ckpt) if ckpt else None)
    cfg = load_config(args.tokens, base=base, extra_dirs=args.config_dirs)
    if base is not None:
        keep_feature_settings(cfg, base, args.tokens, args.config_dirs)
    resolve_open_values(cfg, base, args.tokens, args.config_dirs)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return None
    return cfg


def check_out_dir(path: str | Path) -> Path:
    """Check, creating nothing, that ``out_dir`` can be a run folder: not an existing file, not
    under a file, and its nearest existing folder writable. Run before anything is built, so a bad
    ``out_dir`` is one line (:class:`ConfigError`) and nothing is half-written; :func:`make_out_dir`
    creates it once the run has been built."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out_dir {path} exists and is not a folder; choose another out_dir")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"out_dir {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir {path} cannot be created: {parent} is not writable")
    return path


def make_out_dir(path: str | Path) -> Path:
    """Create ``out_dir`` and prove it writable (a probe file); any failure is a one-line
    :class:`ConfigError` (permission checks alone pass for root, a write does not)."""
    path = check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"out_dir {path} is not writable ({err.strerror or err})") from None
    return path


def write_json(path: str | Path, data: Any, non_finite: str = "error") -> Path:
    """Write strict JSON atomically (:func:`semcorr.atomic.write_json`): a reader never sees a
    half-written ``metrics.json`` or ``train_summary.json``, nor a ``NaN`` in one."""
    return atomic.write_json(path, data, non_finite=non_finite)


def plural(n: int, word: str, words: Optional[str] = None) -> str:
    """``1 pair``, ``2 pairs`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def rate(n: int, seconds: float) -> str:
    """Throughput in a readable unit: ``12.3 pairs/s``, or ``4.2 s/pair`` below one pair per second."""
    if n <= 0:
        return "no pairs"
    per_s = n / max(seconds, 1e-9)
    return f"{per_s:.1f} pairs/s" if per_s >= 1 else f"{seconds / n:.1f} s/pair"


def accelerator(cfg: DictConfig) -> str:
    import torch

    if cfg.device != "auto":
        return "gpu" if cfg.device == "cuda" else cfg.device
    if cfg.trainer.accelerator != "auto":
        return cfg.trainer.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


# trainer.* keys that evaluation passes to the Trainer (the others are about training): where it
# runs (the keys a checkpoint's config does not carry over) and how
EVAL_TRAINER_KEYS = (*PLACEMENT_KEYS, "precision", "limit_test_batches", "deterministic",
                     "enable_progress_bar")


def trainer_kwargs(cfg: DictConfig, stage: str = "fit", module: Optional[torch.nn.Module] = None
                   ) -> Dict[str, Any]:
    """``lightning.Trainer`` arguments from ``trainer.*`` (``stage="test"``: the evaluation ones).

    The datamodule shards every split itself (:mod:`semcorr.data.samplers`), so Lightning's
    distributed sampler is off. For training under DDP, a ``module`` whose trainable parameters
    may sit out a step (:func:`may_leave_parameters_unused`) gets ``find_unused_parameters``.
    """
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
              if v is not None}
    if stage != "fit":
        kwargs = {k: v for k, v in kwargs.items() if k in EVAL_TRAINER_KEYS}
    kwargs["accelerator"] = accelerator(cfg)
    kwargs["use_distributed_sampler"] = False
    if stage == "fit" and module is not None and may_leave_parameters_unused(module) and (
            kwargs.get("strategy") == "ddp"
            or (kwargs.get("strategy", "auto") == "auto" and several_processes(kwargs))):
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(find_unused_parameters=True)
    return kwargs


def may_leave_parameters_unused(module: torch.nn.Module) -> bool:
    """Whether some trainable parameter may get no gradient in a step: a learnable matcher's (GW-OT's
    λ of a term the batch has no data for, e.g. ``lam_sym`` without symmetric keypoints). DDP
    then needs ``find_unused_parameters=True``; heads and backbones use all their trainable
    parameters in every step."""
    net = getattr(module, "net", None)
    return net is not None and any(p.requires_grad for p in net.matcher.parameters())


def several_processes(kwargs: Dict[str, Any]) -> bool:
    """Whether these Trainer arguments start more than one process (``strategy=auto`` is DDP)."""
    if int(kwargs.get("num_nodes", 1)) > 1:
        return True
    devices = kwargs.get("devices", 1)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]) > 1
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if str(devices) in ("-1", "auto"):
        import torch

        return kwargs.get("accelerator") == "gpu" and torch.cuda.device_count() > 1
    return int(devices) > 1


@contextmanager
def share_out_dir(cfg: DictConfig) -> Iterator[None]:
    """For the duration of a run, the processes Lightning launches from this one (``strategy=ddp``
    on one node re-runs the command line) default to this run's ``out_dir`` (instead of a
    timestamp of their own; see :func:`semcorr.distributed.launch_out_dir`)."""
    before = os.environ.get(DEFAULT_OUT_DIR_ENV)
    os.environ[DEFAULT_OUT_DIR_ENV] = str(cfg.out_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DEFAULT_OUT_DIR_ENV, None)
        else:
            os.environ[DEFAULT_OUT_DIR_ENV] = before


def pck_table(result: Dict[str, Any], title: str) -> str:
    """A plain-text table of overall and per-category PCK, with their intervals when ``result``
    has them (``pck_ci95``, ``pck_per_category_ci95``: :mod:`semcorr.eval_stats`)."""
    from semcorr.eval_stats import interval_legend, with_interval

    alphas = list(result["pck"].keys())
    cat_ci, all_ci = result.get("pck_per_category_ci95") or {}, result.get("pck_ci95") or {}
    w = 24 if all_ci else 11

    def cells(values: Dict[str, float], ci: Dict[str, Any]) -> str:
        return "".join(f"{with_interval(values[a], ci.get(a)):>{w}}" for a in alphas)

    head = f"{'category':<20}" + "".join(f"{'PCK@' + a:>{w}}" for a in alphas)
    lines = [title, head, "-" * len(head)]
    for cat, values in result["pck_per_category"].items():
        lines.append(f"{cat:<20}" + cells(values, cat_ci.get(cat) or {}))
    lines.append("-" * len(head))
    lines.append(f"{'all':<20}" + cells(result["pck"], all_ci))
    return "\n".join(lines + interval_legend(result))
