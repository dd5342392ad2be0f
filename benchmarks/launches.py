"""ATen ops and bytes written per GW-OT step, counted on the CPU (no GPU needed).

    python benchmarks/launches.py                      # 60x60, δ (3, 5), batch 1 and 8, both formulations
    python benchmarks/launches.py --grid 60 --batch 1 --implementations gpu --device meta
    python benchmarks/launches.py --json runs/launches.json

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` (:class:`OpCounter`) sees every ATen op
that reaches a backend, below autograd: on a GPU each non-view op is about one kernel launch
(a few composite kernels, e.g. ``logsumexp``, launch several). Per op it adds the bytes of its
outputs (numel x element size; views, aliases and allocations write nothing). One **step** is
the difference between a solve of ``n + 1`` and of ``n`` steps (setup, step size and output
cancel), for:

- the formulation: ``gpu`` (whole-tensor ops, :mod:`semcorr.matchers.gwot.gpu`); ``cpu`` as it
  runs on a GPU (**before** issue 22: its filters' Python loops over grid rows, one chunk; counted
  on the ``meta`` device, where the chunking takes the GPU branch); ``cpu`` on a CPU (cache-sized
  chunks: many small ops by design);
- the mode: ``no-grad`` (inference, ``grad: detach``) or ``train`` (``grad: unroll``: forward and
  backward of the step, with a loss on the plan);
- without / with the symmetry term (8 source pairs), at batch 1 and 8.

``--device meta`` runs the formulations on shape-only tensors (instant, same op sequence as the
CPU for the ``gpu`` formulation, tested); ``--device cpu`` computes for real (the ``gpu``
formulation's convolutions take seconds per step on a CPU at 60x60).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# In-place ops that write only part of their output: the argument holding what they write.
PARTIAL = {"index_add_": 3, "index_copy_": 3, "index_put_": 2, "scatter_": 3, "scatter_add_": 3}
NO_WRITE = {"_cuda_version", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view",
            "lift_fresh", "alias", "detach", "set_"}
PRESET = dict(lam=0.2, lam_gw=0.2, lam_ub=0.05, eps=0.01, delta_min=3.0, delta_max=5.0)


class OpCounter(TorchDispatchMode):
    """Counts ATen ops (``ops``: by name) and bytes written (``bytes``) while active; ``kernels``
    counts the ops that write (views, aliases and allocations excluded)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.writes: Counter = Counter()
        self.bytes = 0
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if not (func.is_view or name in NO_WRITE):
            part = args[PARTIAL[name]] if name in PARTIAL and len(args) > PARTIAL[name] else out
            written = sum(t.numel() * t.element_size() for t in tree_flatten(part)[0] if isinstance(t, torch.Tensor))
            self.bytes += written
            self.kernels += 1
            self.writes[name] += written
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _problem(grid: int, batch: int, sym: bool, device: str, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    y = torch.nn.functional.normalize(torch.randn(batch, n, 16, generator=g), dim=-1)
    x = torch.nn.functional.normalize(torch.randn(batch, n, 16, generator=g), dim=-1)
    cost = (1 - y @ x.transpose(1, 2)).to(dtype)
    pairs = None
    if sym:
        rows = torch.linspace(grid // 4, 3 * grid // 4, 8).long()
        cols = torch.linspace(1, grid // 2 - 2, 8).long()
        pairs = torch.stack([rows * grid + cols, rows * grid + (grid - 1 - cols)], -1)[None].expand(batch, -1, -1)
    if device == "meta":
        cost = torch.empty_like(cost, device="meta")
        pairs = None if pairs is None else torch.empty_like(pairs, device="meta")
    return cost, pairs


def _solve(cost, pairs, grid, steps, implementation, train):
    from semcorr.matchers.gwot import solve_gwot

    c = cost.detach().requires_grad_(train)
    res = solve_gwot(c, (grid, grid), (grid, grid), sym_pairs=pairs, n_steps=steps,
                     lam_sym=0.1 if pairs is not None else 0.0, implementation=implementation,
                     grad="unroll" if train else "detach", **PRESET)
    if train:
        plan = res.log_plan
        loss = plan.clamp_min(-50).exp().pow(2).sum()  # a loss on the whole plan
        loss.backward()


def count(implementation: str, grid: int, batch: int, train: bool, sym: bool, device: str = "cpu",
          steps: int = 1) -> dict:
    """Ops and bytes of one step (the difference of ``steps + 1`` and ``steps`` steps)."""
    cost, pairs = _problem(grid, batch, sym, device)
    _solve(cost, pairs, grid, steps, implementation, train)  # warm-up: one-time queries and caches
    counts = []
    for n in (steps, steps + 1):
        with OpCounter() as c:
            _solve(cost, pairs, grid, n, implementation, train)
        counts.append(c)
    a, b = counts
    ops = b.ops.copy()
    ops.subtract(a.ops)
    writes = b.writes.copy()
    writes.subtract(a.writes)
    return dict(implementation=implementation, device=device, grid=grid, batch=batch,
                mode="train" if train else "no-grad", sym=sym, ops=b.total - a.total,
                kernels=b.kernels - a.kernels, gb_written=(b.bytes - a.bytes) / 1e9,
                plan_mb=batch * grid ** 4 * 4 / 1e6, by_op={k: v for k, v in sorted(ops.items()) if v},
                gb_by_op={k: round(v / 1e9, 4) for k, v in sorted(writes.items(), key=lambda kv: -kv[1]) if v})


def _row(r: dict) -> str:
    label = {"gpu": "gpu", "cpu": "cpu @gpu (before)" if r["device"] == "meta" else "cpu @cpu"}[r["implementation"]]
    if r["implementation"] == "gpu" and r["device"] == "cpu":
        label = "gpu @cpu"
    return (f"{label:<18} {r['mode']:<8} {'yes' if r['sym'] else 'no':<4} {r['batch']:>5} {r['ops']:>7} "
            f"{r['kernels']:>8} {r['gb_written']:>10.3f} {r['gb_written'] * 1e3 / r['plan_mb']:>9.1f}")


def table(records) -> str:
    head = f"{'formulation':<18} {'mode':<8} {'sym':<4} {'batch':>5} {'ops':>7} {'kernels':>8} {'GB written':>10} {'x plan':>9}"
    return "\n".join([head, "-" * len(head)] + [_row(r) for r in records])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=60)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--implementations", nargs="+", default=["before", "gpu"],
                    choices=["before", "gpu", "cpu"],
                    help="before: the cpu formulation as it runs on a GPU (meta device); gpu: the gpu "
                         "formulation (on --device); cpu: the cpu formulation on a CPU")
    ap.add_argument("--modes", nargs="+", default=["no-grad", "train"], choices=["no-grad", "train"])
    ap.add_argument("--sym", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    ap.add_argument("--device", choices=("cpu", "meta"), default="meta",
                    help="where the gpu formulation runs (meta: shapes only, the same ops)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    torch.manual_seed(0)
    records = []
    for impl in a.implementations:
        for mode in a.modes:
            for sym in a.sym:
                for batch in a.batch:
                    name, device = {"before": ("cpu", "meta"), "gpu": ("gpu", a.device), "cpu": ("cpu", "cpu")}[impl]
                    rec = count(name, a.grid, batch, mode == "train", sym == "yes", device)
                    records.append(rec)
                    print(_row(rec), flush=True)
    print()
    print(f"per GW-OT step at {a.grid}x{a.grid}, δ (3, 5); a plan is {a.grid ** 4 * 4 / 1e6:.0f} MB per pair "
          f"(float32); ops: every ATen op; kernels: the ops that write")
    print(table(records))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
