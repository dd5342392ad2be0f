"""What eval, train and match share: argument parsing and building a run from its config."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from semcorr.backbones import build_backbone
from semcorr.config import ConfigError, available, load_config, to_yaml
from semcorr.errors import SemcorrError
from semcorr.heads import build_head
from semcorr.matchers import build_matcher

log = logging.getLogger("semcorr")

USAGE = """usage: {prog} [group=name ...] [key.path=value ...] [--print-config] [--help]

groups: data, backbone, matcher, head, loss (e.g. data=pf_willow backbone=dsift matcher=nn)
overrides: any key of the resolved config (see --print-config), e.g. data.max_pairs=100
"""


@dataclass
class Args:
    tokens: List[str]
    print_config: bool = False
    resume: Optional[str] = None


def parse_args(argv: Sequence[str], prog: str, flags: Sequence[str] = ()) -> Args:
    """Split ``argv`` into config tokens and flags; ``--help`` prints usage and the choices."""
    args = Args(tokens=[])
    it = iter(argv)
    for token in it:
        if token in ("-h", "--help"):
            groups = "\n".join(f"  {g}: {', '.join(available(g))}"
                               for g in ("data", "backbone", "matcher", "head", "loss"))
            sys.stdout.write(USAGE.format(prog=prog) + "\navailable group files:\n" + groups + "\n")
            raise SystemExit(0)
        if token == "--print-config":
            args.print_config = True
        elif token == "--resume" and "--resume" in flags:
            args.resume = next(it, None)
            if args.resume is None:
                raise ConfigError("--resume needs a checkpoint path or an out_dir")
        elif token.startswith("--"):
            raise ConfigError(f"unknown flag {token}; valid: --print-config, --help"
                              + "".join(f", {f}" for f in flags))
        else:
            args.tokens.append(token)
    return args


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def run_main(fn, argv: Optional[Sequence[str]], prog: str) -> int:
    """Run ``fn(argv)``, turning configuration and input errors into one line on stderr."""
    setup_logging()
    try:
        return fn(list(sys.argv[1:] if argv is None else argv)) or 0
    except (SemcorrError, FileNotFoundError) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2


def resolve_config(args: Args, base: Optional[DictConfig] = None) -> Optional[DictConfig]:
    """The run config; None after printing it when ``--print-config`` was given."""
    cfg = load_config(args.tokens, base=base)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return None
    return cfg


def accelerator(cfg: DictConfig) -> str:
    if cfg.device != "auto":
        return "gpu" if cfg.device == "cuda" else cfg.device
    if cfg.trainer.accelerator != "auto":
        return cfg.trainer.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def config_dict(cfg: DictConfig) -> Dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def build_parts(cfg: DictConfig):
    """Backbone, head and matcher from the config."""
    backbone = build_backbone(cfg.backbone)
    head = build_head(cfg.head, dim=backbone.dim)
    matcher = build_matcher(cfg.matcher)
    return backbone, head, matcher


def protocol(cfg: DictConfig, dataset) -> Dict[str, str]:
    """The dataset's published protocol, with the config's explicit choices on top."""
    proto = dict(dataset.protocol)
    if cfg.metric.threshold_by:
        proto["threshold_by"] = cfg.metric.threshold_by
    if cfg.metric.average:
        proto["average"] = cfg.metric.average
    return proto


def pck_table(result: Dict[str, Any], title: str) -> str:
    """A plain-text table of overall and per-category PCK."""
    alphas = list(result["pck"].keys())
    head = f"{'category':<20}" + "".join(f"{'PCK@' + a:>11}" for a in alphas)
    lines = [title, head, "-" * len(head)]
    for cat, values in result["pck_per_category"].items():
        lines.append(f"{cat:<20}" + "".join(f"{values[a]:>11.2f}" for a in alphas))
    lines.append("-" * len(head))
    lines.append(f"{'all':<20}" + "".join(f"{result['pck'][a]:>11.2f}" for a in alphas))
    return "\n".join(lines)
