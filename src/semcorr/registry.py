"""The component registry: config group -> kind -> (schema dataclass, builder).

A leaf module (it imports no other semcorr module but :mod:`semcorr.errors`): component modules
register into it with :func:`register`, and :mod:`semcorr.components` imports every component
package once, which fills it (the layout of timm's ``_registry.py`` and ``models/__init__.py``).

Example::

    @dataclass
    class NNConfig(MatcherConfig): ...

    @register("matcher", "nn", NNConfig)
    class NearestNeighbourMatcher(Matcher): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Sequence

from omegaconf import DictConfig, OmegaConf

from semcorr.errors import ConfigError

# The config groups, in the order the CLIs list them; each picks one YAML file per run.
GROUPS = ("data", "backbone", "matcher", "head", "loss")

_SCHEMAS: Dict[str, Dict[str, type]] = {group: {} for group in GROUPS}
_BUILDERS: Dict[str, Dict[str, Callable[..., Any]]] = {group: {} for group in GROUPS}


@dataclass
class GroupConfig:
    """Base of every group schema: ``kind`` picks the schema, ``name`` is the group file's name."""

    kind: str = ""
    name: str = ""


def register(group: str, kind: str, schema: type) -> Callable[[Any], Any]:
    """Decorator: ``obj(**section)`` builds a ``group`` component of ``kind`` typed by ``schema``."""
    if group not in _SCHEMAS:
        raise KeyError(f"unknown config group {group!r}; valid: {', '.join(GROUPS)}")

    def wrap(obj: Any) -> Any:
        _SCHEMAS[group][kind] = schema
        _BUILDERS[group][kind] = obj
        return obj

    return wrap


def schemas(group: str) -> Dict[str, type]:
    """``{kind: schema dataclass}`` of a group (what has been registered so far)."""
    return dict(_SCHEMAS[group])


def section(cfg: DictConfig, exclude: Sequence[str] = ("kind", "name")) -> Dict[str, Any]:
    """A group section as a plain dict of constructor keyword arguments."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in exclude}


def build(group: str, cfg: DictConfig, exclude: Sequence[str] = (), **extra: Any) -> Any:
    """Build the component that ``cfg`` (a group section with ``kind``) describes.

    Keys in ``exclude`` are not passed on; ``extra`` keyword arguments are.
    """
    builders = _BUILDERS[group]
    if cfg.kind not in builders:
        raise ConfigError(f"no {group} of kind {cfg.kind!r}; valid: {', '.join(sorted(builders))}")
    kwargs = section(cfg, exclude=("kind", "name", *exclude))
    return builders[cfg.kind](**kwargs, **extra)
