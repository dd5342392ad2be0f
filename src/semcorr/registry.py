"""The component registry: config group -> kind -> (schema dataclass, builder).

A leaf module (it imports no other semcorr module but :mod:`semcorr.errors`): component modules
register into it with :func:`register`, and :mod:`semcorr.components` imports every component
package once, which fills it (the layout of timm's ``_registry.py`` and ``models/__init__.py``).

A component's defaults and checks live in its schema dataclass only: the builder receives the
typed config object (:func:`build`), and a constructor called from Python takes the same object or
keyword overrides of its fields (:func:`configured`), never defaults of its own.

Example::

    @dataclass
    class DSiftConfig(GroupConfig):
        stride: int = 8

    @register("backbone", "dsift", DSiftConfig)
    class DenseSift(Backbone):
        def __init__(self, cfg: DSiftConfig | None = None, **overrides):
            cfg = configured(DSiftConfig, cfg, **overrides)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Type, TypeVar

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


T = TypeVar("T")


def register(group: str, kind: str, schema: type) -> Callable[[Any], Any]:
    """Decorator: ``obj(config, **extra)`` builds a ``group`` component of ``kind`` from its typed
    ``schema`` object (see :func:`build`)."""
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


def builder(group: str, kind: str) -> Optional[Callable[..., Any]]:
    """What builds a ``group`` component of ``kind`` (e.g. a dataset class), or None."""
    return _BUILDERS[group].get(kind)


def configured(schema: Type[T], cfg: Optional[Any] = None, **overrides: Any) -> T:
    """The config object a component is built from: ``cfg`` (an instance of ``schema``, a mapping
    or ``DictConfig`` of its fields, or None for its defaults) with ``overrides`` (field values)
    on top. The schema's ``__post_init__`` checks every value (raising ``ValueError``)."""
    if cfg is None:
        obj = schema()
    elif isinstance(cfg, schema):
        obj = cfg
    elif isinstance(cfg, DictConfig):
        obj = OmegaConf.to_object(cfg)
    elif isinstance(cfg, Mapping):
        obj = schema(**cfg)
    else:
        raise TypeError(f"expected a {schema.__name__}, got {type(cfg).__name__}")
    return dataclasses.replace(obj, **overrides) if overrides else obj


def section(cfg: DictConfig, exclude: Sequence[str] = ("kind", "name")) -> Dict[str, Any]:
    """A group section as a plain dict of its fields (e.g. overrides for :func:`configured`)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in exclude}


def build(group: str, cfg: DictConfig, **extra: Any) -> Any:
    """Build the component that ``cfg`` (a group section with ``kind``) describes: its builder gets
    the section as its typed schema object, and ``extra`` keyword arguments (what is not config:
    a dataset's split, a head's input dimension)."""
    builders = _BUILDERS[group]
    if cfg.kind not in builders:
        raise ConfigError(f"no {group} of kind {cfg.kind!r}; valid: {', '.join(sorted(builders))}")
    return builders[cfg.kind](OmegaConf.to_object(cfg), **extra)
