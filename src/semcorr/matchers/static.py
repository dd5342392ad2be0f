"""Static, sync-free execution of the OT-family solvers on accelerators (a leaf: torch and
:mod:`semcorr.precision` only).

The solvers have two formulations, chosen by the ``implementation`` setting
(:data:`IMPLEMENTATIONS`; ``auto`` picks by the cost's device, :func:`resolve_implementation`):

- ``cpu``: cache-sized chunks, reused buffers and in-place updates; fast on a CPU, but a Python
  loop of small ops (hundreds of kernel launches per step on a GPU) with host-side decisions
  that synchronise (``.item()``, ``nonzero``, data-dependent shapes);
- ``gpu``: whole-tensor operations (the disc filters as convolutions), a fixed sequence of
  kernels per step with no host synchronisation and static shapes, so that ``torch.compile``
  traces one step as one graph and the step loop can be captured as a CUDA graph
  (:func:`run_graphed`, ``cuda_graph: true``).

Also here: the solvers' dtype rule (:func:`solver_dtype`: half precision is computed in float32)
and :func:`exact_fp32` (cuDNN convolutions without TF32 inside a solve).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Sequence

import torch

from semcorr.precision import autocast_off  # noqa: F401  (the solvers' autocast switch)

IMPLEMENTATIONS = ("auto", "cpu", "gpu")


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """``auto`` -> ``cpu`` on a CPU, ``gpu`` on any other device (CUDA, MPS, XPU, meta);
    ``cpu`` / ``gpu`` are kept (each formulation runs on any device)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    return "cpu" if torch.device(device).type == "cpu" else "gpu"


def check_static_options(opts) -> None:
    """Range checks of the fields every solver's options share (``implementation``,
    ``cuda_graph``), with :mod:`semcorr.checks`' messages (``implementation must be one of ...``)."""
    if opts.implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
                         f"got {opts.implementation!r}")
    if not isinstance(opts.cuda_graph, bool):
        raise ValueError(f"cuda_graph must be true or false, got {opts.cuda_graph!r}")


def solver_dtype(x: torch.Tensor) -> torch.Tensor:
    """The solvers' working precision: float16 / bfloat16 input is computed in float32 (their
    range cannot hold the padding logit NEG = -1e20, and t log t underflows to NaN); float32 and
    float64 are kept. Differentiable (the gradient returns in the input's dtype)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the OT solvers take a float16/bfloat16/float32/float64 cost, got {x.dtype}")
    return x


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """cuDNN convolutions in full float32 inside the block (no TF32, which cuDNN allows by
    default on Ampere and later): the gpu formulation's disc filters are then exact sums, and a
    CUDA plan equals the CPU plan. A no-op off CUDA. The previous setting is restored on exit
    (a process-wide flag: the block should not overlap other threads' convolutions)."""
    if torch.device(device).type != "cuda":
        yield
        return
    with cudnn_ieee_fp32():
        yield


@contextlib.contextmanager
def cudnn_ieee_fp32():
    """The flag behind :func:`exact_fp32`, on any build: cuDNN convolutions in IEEE float32
    (torch >= 2.9: ``torch.backends.cudnn.conv.fp32_precision``; older: ``allow_tf32``)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: per-op precision
        prev = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = prev
    else:
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = prev


class GraphCache:
    """Captured CUDA graphs by key (the step, its static settings, the shapes, dtypes and device
    of its tensors), the ``size`` most recent kept. A module holds one (``cuda_graph: true``):
    a new batch size or grid captures a new graph. Each entry holds its static buffers and the
    graph's memory pool (a few plan-sized tensors). Copies and pickles of the cache are empty."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: "OrderedDict[Hashable, tuple]" = OrderedDict()

    def get(self, key: Hashable):
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: tuple) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __deepcopy__(self, memo) -> "GraphCache":
        return GraphCache(self.size)

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])


def _signature(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


def graphs_available(device: torch.device) -> bool:
    """Whether ``cuda_graph`` applies on this device (CUDA only; elsewhere the loop runs eagerly)."""
    return torch.device(device).type == "cuda"


def _capture(fn: Callable[[], None]) -> Callable[[], None]:
    """Capture ``fn`` (which only launches kernels on static tensors) as a CUDA graph; returns its
    replay. Warm-up runs on a side stream first (lazy initialisation, cuDNN algorithm choice)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def run_graphed(step: Callable[[List[torch.Tensor], List[Optional[torch.Tensor]]], None],
                state: Sequence[torch.Tensor], consts: Sequence[Optional[torch.Tensor]], n: int,
                cache: Optional[GraphCache], key: Hashable) -> List[torch.Tensor]:
    """Run ``step(state, consts)`` ``n`` times as a replayed CUDA graph.

    ``step`` updates the tensors of ``state`` in place from those of ``consts`` (None entries are
    passed through); it must not synchronise with the host or create tensors from host data.
    The graph is captured once per ``key`` and signature (looked up in ``cache``; None: captured
    for this call only) on static copies of the tensors; every call copies ``state`` and
    ``consts`` into them and replays. Returns the static state tensors: read them before the
    next call with the same cache and key. Call without autograd (``torch.no_grad``).
    """
    full_key = (key, _signature(state), _signature(consts))
    entry = cache.get(full_key) if cache is not None else None
    if entry is None:
        with torch.inference_mode(False):  # ordinary tensors: usable under no_grad and inference_mode
            s_state = [x.clone() for x in state]
            s_consts = [None if c is None else c.clone() for c in consts]
        replay = _capture(lambda: step(s_state, s_consts))
        entry = (replay, s_state, s_consts)
        if cache is not None:
            cache.put(full_key, entry)
    replay, s_state, s_consts = entry
    for dst, src in zip(s_state, state):
        dst.copy_(src)
    for dst, src in zip(s_consts, consts):
        if dst is not None:
            dst.copy_(src)
    for _ in range(n):
        replay()
    return s_state
