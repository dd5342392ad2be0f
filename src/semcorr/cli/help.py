"""The ``--help`` text of the CLIs, built without importing torch (it answers in well under 2 s).

``--help`` lists the arguments and flags, every config group with its files, the packaged
experiments and sweeps (with their one-line descriptions), every top-level key with its type and
default (the dataclasses of :mod:`semcorr.config`; a key's trailing comment in the source is its
description) and examples. ``--help GROUP`` (``data``, ``backbone``, ``matcher``, ``head``,
``loss``) lists the keys of each kind of that group (this imports the components, so it takes as
long as importing torch); ``--help SECTION`` (``metric``, ``trainer``, ...) one section's keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from semcorr.config import DEFAULT_GROUPS, EXPERIMENT, RunConfig, available, group_file
from semcorr.registry import GROUPS

SWEEP = "sweep"
WIDTH = 100

OVERWRITE = ("--overwrite", "replace the results of an earlier run in out_dir (without it, such an "
                            "out_dir is refused)")

# What each CLI does, its extra flags and examples (the flags every CLI takes are in FLAGS).
PROGRAMS: Dict[str, Dict[str, Any]] = {
    "eval.py": {
        "what": "Evaluate semantic correspondence (PCK) zero-shot or from a trained checkpoint; "
                "writes config.yaml, metrics.json, predictions.jsonl and figures into out_dir.",
        "flags": [OVERWRITE],
        "examples": [
            ("python eval.py", "the demo: synthetic pairs, dense SIFT, nearest neighbours"),
            ("python eval.py data=pf_willow data.root=/data/pf-willow backbone=dsift "
             "matcher=gwot_pf_willow", "PF-WILLOW with GW-OT"),
            ("python eval.py experiment=paper_spair data.root=/data/SPair-71k",
             "the GW-OT paper's SPair-71k setting"),
            ("python eval.py ckpt=runs/tiny data.max_pairs=100", "a trained run's best checkpoint"),
            ("python eval.py --config runs/x/config.yaml out_dir=runs/x_again",
             "re-run a saved run with exactly its settings"),
            ("python eval.py data=pf_willow --print-config", "show every resolved value, run nothing"),
        ],
    },
    "train.py": {
        "what": "Fine-tune a backbone / head / matcher with a loss (loss defaults to gaussian_ce); "
                "writes checkpoints, learning curves and train_summary.json into out_dir.",
        "flags": [("--resume RUN", "continue a run (its out_dir or a .ckpt) exactly where it stopped"),
                  OVERWRITE],
        "examples": [
            ("python train.py data=synthetic backbone=vit_tiny_random data.image_size=128 "
             "trainer.max_steps=400 out_dir=runs/tiny", "a run that learns on a CPU"),
            ("python train.py experiment=survey_baseline data.root=/data/SPair-71k",
             "the survey baseline on a GPU"),
            ("python train.py --resume runs/tiny", "continue an interrupted run"),
            ("python train.py --config runs/tiny/config.yaml out_dir=runs/tiny2",
             "train again with a saved run's settings"),
        ],
    },
    "semcorr-match": {
        "what": "Match points between two images of your own; writes matches.json and "
                "matches.png into out_dir.",
        "flags": [OVERWRITE],
        "examples": [],
    },
    "semcorr-features": {
        "what": "Write the backbone's features of every image of the dataset split (data.split) "
                "into out_dir in the layout backbone=precomputed reads (one file per image id "
                "plus features.json).",
        "flags": [("--format F", "pt (default), npy or safetensors"),
                  ("--mirrored", "also each image's mirror image (id + '#hflip'), for a flipped "
                                 "(Pose-Align) source")],
        "examples": [
            ("semcorr-features data=pf_willow data.root=/data/pf-willow backbone=dsift "
             "out_dir=feats/willow_dsift", "dense SIFT features of PF-WILLOW"),
            ("python eval.py data=pf_willow data.root=/data/pf-willow backbone=precomputed "
             "backbone.root=feats/willow_dsift", "evaluate from those files"),
        ],
    },
}

FLAGS = [
    ("--config FILE", "start from a saved run's config.yaml (re-run it exactly; its out_dir is "
                      "not reused: a new runs/<timestamp>-<random> unless out_dir= is given); later "
                      "tokens override it"),
    ("--config-dir DIR", "a folder of your own <group>/<name>.yaml files, searched before the "
                         "packaged ones (repeatable; also $SEMCORR_CONFIG_DIR)"),
    ("--print-config", "print the resolved configuration and exit"),
    ("--verbose", "also show semcorr's progress log and the messages of Lightning, W&B and "
                  "the other libraries (filtered by default)"),
    ("--help [TOPIC]", "this text; TOPIC: a group (its kinds and their keys) or a top-level "
                       "section such as metric or trainer (its keys)"),
]

TOKENS = [
    ("group=NAME", f"pick a group file ({', '.join(GROUPS)}), e.g. data=pf_willow matcher=gwot"),
    ("key.path=VALUE", "override one key of the resolved config, e.g. data.max_pairs=100 "
                       "metric.alphas=[0.05,0.1]"),
    ("experiment=NAME", "a bundle of tokens (below), applied before the command line's own"),
    ("ckpt=RUN", "a trained run's folder (its best checkpoint) or a .ckpt file: its backbone, "
                 "head and matcher, and the settings that change its features (image size, "
                 "resize, backbone layers and upsampling), are kept unless overridden"),
    ("out_dir=DIR", "where the run writes (default runs/<timestamp>-<random>, a new folder for "
                    "every run)"),
]


# ------------------------------------------------------------------------------------------------
# what the files and dataclasses say
# ------------------------------------------------------------------------------------------------
def description(group: str, name: str, extra_dirs: Sequence[str | Path] = ()) -> str:
    """The one-line ``description`` of an experiment or sweep file ('' when it has none)."""
    try:
        raw = OmegaConf.load(group_file(group, name, extra_dirs))
    except Exception:  # noqa: BLE001  (a broken file: its name is still listed)
        return "(unreadable file)"
    text = raw.get("description", "") if hasattr(raw, "get") else ""
    return " ".join(str(text or "").split())


def field_comments(cls: type) -> Dict[str, str]:
    """``{field: its comment}`` from a dataclass's source: the ``#`` lines right above the field
    and its trailing ``#`` comment (empty when the source is unavailable)."""
    try:
        lines = inspect.getsourcelines(cls)[0]
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    above: List[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+)\s*:[^#=]*(?:=[^#]*)?(?:#\s*(.+))?$", line.rstrip())
        if match and match.group(1) not in out and not text.startswith(("def ", "@", "return")):
            note = " ".join(above + ([match.group(2).strip()] if match.group(2) else []))
            if note:
                out[match.group(1)] = note
        above = []
    return out


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default_factory):
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def key_lines(cls: type, prefix: str = "") -> List[str]:
    """One line per key of a dataclass (nested dataclasses expanded): ``key: type = default  #
    comment``."""
    comments: Dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if dataclasses.is_dataclass(base):
            comments.update(field_comments(base))
    lines: List[str] = []
    for f in dataclasses.fields(cls):
        if f.name in ("kind", "name") and prefix.count(".") == 1:
            continue  # set by the group file, not by hand
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            lines += key_lines(factory, f"{prefix}{f.name}.")
            continue
        text = f"{prefix}{f.name}: {f.type} = {_shown(field_default(f))}"
        note = comments.get(f.name)
        lines.append(f"{text}  # {note}" if note else text)
    return lines


def _key_block(line: str, indent: int = 2) -> str:
    """A key line wrapped at :data:`WIDTH`, its comment continued under the key."""
    return textwrap.fill(line, WIDTH, initial_indent=" " * indent,
                         subsequent_indent=" " * (indent + 6), break_on_hyphens=False)


def two_columns(pairs: Sequence[tuple[str, str]], indent: int = 2, gap: int = 2) -> str:
    """Two columns: names, then wrapped descriptions."""
    width = min(max((len(a) for a, _ in pairs), default=0), 24)
    out = []
    for name, text in pairs:
        body = textwrap.wrap(text, WIDTH - indent - width - gap) or [""]
        first = f"{' ' * indent}{name:<{width}}{' ' * gap}"
        if len(name) > width:
            out.append(" " * indent + name)
            first = " " * (indent + width + gap)
        out.append(first + body[0])
        out += [" " * (indent + width + gap) + line for line in body[1:]]
    return "\n".join(out)


def _files(group: str, extra_dirs: Sequence[str | Path]) -> str:
    names = available(group, extra_dirs)
    default = DEFAULT_GROUPS.get(group)
    return ", ".join(f"{n} (default)" if n == default else n for n in names) or "(none)"


# ------------------------------------------------------------------------------------------------
# the texts
# ------------------------------------------------------------------------------------------------
def usage_line(prog: str, flags: Sequence[str] = ()) -> str:
    labels = {f[0].split()[0]: f[0] for f in PROGRAMS.get(prog, {}).get("flags", [])}
    extra = "".join(f" [{labels.get(f, f)}]" for f in flags)
    text = (f"usage: {prog} [group=NAME ...] [key.path=VALUE ...] [--config FILE] "
            f"[--config-dir DIR] [--print-config] [--verbose] [--help [TOPIC]]{extra}")
    return textwrap.fill(text, WIDTH, subsequent_indent=" " * (len(prog) + 8), break_on_hyphens=False)


def catalogue(extra_dirs: Sequence[str | Path] = ()) -> str:
    """The groups with their files, the experiments and the sweeps with their descriptions."""
    groups = two_columns([(g, _files(g, extra_dirs)) for g in GROUPS])
    experiments = two_columns([(n, description(EXPERIMENT, n, extra_dirs))
                         for n in available(EXPERIMENT, extra_dirs)]) or "  (none)"
    sweeps = two_columns([(n, description(SWEEP, n, extra_dirs))
                    for n in available(SWEEP, extra_dirs)]) or "  (none)"
    return (f"groups (group=NAME; --help GROUP lists a group's keys):\n{groups}\n\n"
            f"experiments (experiment=NAME; docs/presets.md):\n{experiments}\n\n"
            f"sweeps (python sweep.py NAME [--search N]; sweep.py --help):\n{sweeps}\n")


def top_level_keys() -> str:
    groups = [f"  {g}: group section (kind and keys from the {g} file; --help {g})" for g in GROUPS]
    keys = [_key_block(line) for line in key_lines(RunConfig) if line.split(":")[0] not in GROUPS]
    return ("top-level keys (key: type = default; --help SECTION for one section):\n"
            + "\n".join(groups + keys) + "\n")


def help_text(prog: str, flags: Sequence[str] = (), extra_dirs: Sequence[str | Path] = ()) -> str:
    """The full ``--help`` of ``prog`` (``eval.py``, ``train.py``, ``semcorr-match``)."""
    info = PROGRAMS.get(prog, {"what": "", "examples": []})
    own_flags = [f for f in info.get("flags", []) if f[0].split()[0] in flags]
    tokens = [t for t in TOKENS if not (t[0] == "ckpt=RUN" and prog == "train.py")]  # --resume
    parts = [usage_line(prog, flags), "", textwrap.fill(info["what"], WIDTH), "",
             "arguments:", two_columns(tokens + FLAGS + own_flags), "",
             catalogue(extra_dirs), top_level_keys()]
    if info["examples"]:
        parts += ["examples:"] + [f"  {cmd}\n      # {why}" for cmd, why in info["examples"]] + [""]
    parts.append("Docs: README.md, docs/presets.md (experiments, sweeps), docs/datasets.md "
                 "(datasets, protocols), docs/errors.md (bad inputs).")
    return "\n".join(parts) + "\n"


def topic_help(topic: str, extra_dirs: Sequence[str | Path] = ()) -> Optional[str]:
    """``--help TOPIC``: a group's kinds with their keys, or a top-level section's keys; None for
    an unknown topic."""
    if topic in GROUPS:
        from semcorr.config import load_components
        from semcorr.registry import schemas

        load_components()
        by_kind: Dict[str, List[str]] = {}
        for name in available(topic, extra_dirs):
            try:
                kind = OmegaConf.load(group_file(topic, name, extra_dirs)).get("kind", name)
            except Exception:  # noqa: BLE001
                kind = "?"
            by_kind.setdefault(kind, []).append(name)
        out = [f"{topic} files: {_files(topic, extra_dirs)}", ""]
        for kind, schema in sorted(schemas(topic).items()):
            files = ", ".join(by_kind.get(kind, [])) or "(no packaged file)"
            out.append(f"{topic} kind {kind!r} (files: {files}); key: type = default (a file "
                       "sets some of these):")
            out += [_key_block(line) for line in key_lines(schema, f"{topic}.")
                    if not line.startswith((f"{topic}.kind:", f"{topic}.name:"))]
            out.append("")
        return "\n".join(out)
    for f in dataclasses.fields(RunConfig):
        factory = f.default_factory
        if f.name == topic and factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            doc = " ".join((factory.__doc__ or "").split())
            lines = [f"{topic} ({factory.__name__}){': ' + doc if doc and not doc.startswith(factory.__name__ + '(') else ''}"]
            return "\n".join(lines + [_key_block(line) for line in key_lines(factory, f"{topic}.")]) + "\n"
    return None


def topics() -> List[str]:
    """Every valid ``--help TOPIC``."""
    sections = [f.name for f in dataclasses.fields(RunConfig)
                if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)]
    return [*GROUPS, *sections]
