"""Matcher speed / memory benchmark: nn, ot, gwot (ours), gwot_dense (naive), POT, against a
softmax over the plan.

    python benchmarks/matcher.py --grids 32 60 --steps 50 --batch 1 --device cpu \
        --json runs/bench_matcher.json [--dense-steps 10 | --no-dense] [--threads 1]
    python benchmarks/matcher.py --device cuda --grids 60 --batch 1 8 --methods softmax ot gwot \
        --implementation cpu gpu --cuda-graph off on --precision fp32 --no-dense

Every (method, grid, batch, implementation, CUDA graph) is measured in a fresh subprocess so that
peak memory is its own, after one untimed warm-up call (lazy initialisation, cuDNN's algorithm
choice, the CUDA graph's capture), timed ``--repeats`` times (default 3 on CUDA, 1 on a CPU;
the minimum is kept):

- CPU: ``peak_mb`` = peak resident set size of the process (``ru_maxrss``) minus its resident
  size just before the measured calls (inputs, imports and the POT/torch runtime excluded). It is
  an upper bound of the extra memory, including allocator slack.
- CUDA: ``torch.cuda.max_memory_allocated`` during the calls, minus the memory allocated before.

**Ratio** (``x_softmax``): each child also times ``torch.softmax`` over a (B, Ns, Nt) tensor
(the plan's size), three times before and three times after the method (median), in the same
process, and reports the method's time per iteration (``ot``: Sinkhorn iteration; ``gwot*``:
mirror-descent step, setup and output included; ``nn``: the whole call) in units of that
softmax. Absolute times depend on the machine and its load; the ratio is the claim.

Methods (same random features, L2-normalised, cost C = 1 - cos; paper TSS preset
λ=0.2, λ_gw=0.2, λ_ub=0.05, ε=0.01, δ=(3, 5)):

- ``softmax``: the reference, ``torch.softmax(C, -1)`` (x_softmax = 1 by construction);
- ``nn``: cosine similarity; ``ot``: semi-unbalanced Sinkhorn (``steps`` iterations);
- ``gwot``: :func:`semcorr.matchers.gwot.solve_gwot` (unbalanced, automatic step; backward in
  ``checkpoint`` mode) and ``gwot_dense``: the dense reference on the same problem; the diff
  column is max |T_gwot - T_dense| over the plan. The dense reference costs O(N^3) per step
  (minutes at 60x60): ``--dense-steps K`` runs it for K steps only (the diff is then taken
  against ``gwot`` solved for K steps, untimed, in the same child), ``--no-dense`` skips it;
- ``gwot_compiled`` (optional, not in the default ``--methods``): the gpu formulation's step
  (:func:`semcorr.matchers.gwot.solver.gpu_step_function`) under ``torch.compile``, to measure
  what fusing its elementwise ops buys on a GPU (compiled in the untimed warm-up);
- ``gwot_bal`` and ``pot``: the POT-comparable problem (balanced marginals, η = 1/ε, no symmetry):
  ours with 10 warm-started Sinkhorn iterations per step, and POT's
  ``entropic_fused_gromov_wasserstein`` (PGD, ``steps`` outer iterations, torch backend), both
  against the dense reference of that problem.

Solver settings (issue 22): ``--implementation`` (``auto``, ``cpu``, ``gpu``: the solvers'
formulation, for ``ot``, ``gwot``, ``gwot_bal``), ``--cuda-graph off on`` (the step loop replayed
as a captured CUDA graph; used on CUDA without autograd, so only the forward column changes),
``--precision`` (the dtype of the cost handed to the solvers: ``fp16`` / ``bf16`` are solved in
float32; the softmax reference stays float32), ``--batch`` (several: one child each).
``ms/pair`` is the forward time over the batch size (the issue's targets on an H100: 50 GW-OT
steps at 60x60 in <= 20 ms per pair at batch 1, <= 5 ms per pair at batch 8).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import rss_mb, sync  # benchmarks/_common.py (this script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the dense reference

LAM, LAM_GW, LAM_UB, EPS, DMIN, DMAX = 0.2, 0.2, 0.05, 0.01, 3.0, 5.0
METHODS = ("softmax", "nn", "ot", "gwot", "gwot_dense", "gwot_bal", "pot")
OPTIONAL = ("gwot_compiled",)  # not in the default --methods
PER_STEP = ("ot", "gwot", "gwot_dense", "gwot_bal", "gwot_bal_dense", "pot", "gwot_compiled")
SOLVERS = ("ot", "gwot", "gwot_bal")
REFERENCES = ("gwot_dense", "gwot_bal_dense", "pot")  # the methods that take --implementation and --cuda-graph
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}



def _inputs(grid, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish random features: a low-frequency random field plus noise, so plans are peaked.
    base = torch.randn(batch, 64, grid // 4 + 1, grid // 4 + 1, generator=g)
    f = torch.nn.functional.interpolate(base, size=(grid, grid), mode="bilinear", align_corners=False)
    f1 = f + 0.3 * torch.randn(batch, 64, grid, grid, generator=g)
    f2 = torch.roll(f, shifts=(1, 2), dims=(2, 3)) + 0.3 * torch.randn(batch, 64, grid, grid, generator=g)
    return f1.to(device), f2.to(device)


def _cost(f1, f2):
    a = torch.nn.functional.normalize(f1.flatten(2).transpose(1, 2), dim=-1)
    b = torch.nn.functional.normalize(f2.flatten(2).transpose(1, 2), dim=-1)
    return 1 - a @ b.transpose(1, 2)


def _run_method(method, grid, steps, cost, backward, solver=None):
    """``solver``: dict(implementation=..., cuda_graph=..., graphs=GraphCache) for ot / gwot*."""
    from semcorr.matchers.gwot import solve_gwot
    from reference.gwot_dense import solve_gwot_dense
    from semcorr.matchers.ot import solve_ot

    g = (grid, grid)
    sk = dict(solver or {})
    cost = cost.detach().requires_grad_(backward)
    nu = grid * grid / 3600  # λ_gw normalisation (n_s / ref_cells), explicit for POT
    if method == "softmax":
        out = torch.log_softmax(cost, -1) if backward else torch.softmax(cost, -1)
    elif method == "nn":
        out = -cost
    elif method == "ot":
        out = solve_ot(cost, lam=LAM, eps=EPS, lam_ub=LAM_UB, n_steps=steps, **sk)
    elif method == "gwot":
        out = solve_gwot(cost, g, g, lam=LAM, lam_gw=LAM_GW, lam_ub=LAM_UB, eps=EPS, delta_min=DMIN,
                         delta_max=DMAX, n_steps=steps, grad="checkpoint" if backward else "detach",
                         **sk).log_plan
    elif method == "gwot_compiled":
        out = _compiled_gwot(cost, g, steps, backward)
    elif method == "gwot_dense":
        out = solve_gwot_dense(cost, g, g, lam=LAM, lam_gw=LAM_GW, lam_ub=LAM_UB, eps=EPS,
                               delta_min=DMIN, delta_max=DMAX, n_steps=steps)[0]
    elif method == "gwot_bal":
        out = solve_gwot(cost, g, g, lam=LAM, lam_gw=LAM_GW * nu, eps=EPS, delta_min=DMIN, delta_max=DMAX,
                         n_steps=steps, marginal="balanced", step_size=1 / EPS, scale="raw",
                         grad="checkpoint" if backward else "detach", **sk).log_plan
    elif method == "gwot_bal_dense":
        out = solve_gwot_dense(cost, g, g, lam=LAM, lam_gw=LAM_GW * nu, eps=EPS, delta_min=DMIN,
                               delta_max=DMAX, n_steps=steps, marginal="balanced", step_size=1 / EPS,
                               scale="raw")[0]
    elif method == "pot":
        out = _pot(cost, g, steps, nu).log()[None]
    else:
        raise ValueError(method)
    if backward:
        loss = out.sum() if method == "nn" else out[torch.isfinite(out)].exp().pow(2).sum()
        loss.backward()
    return out.detach()


def _compiled_gwot(cost, g, steps, backward):
    """The gpu formulation's step under torch.compile (default mode), looped ``steps`` times
    (the first call compiles: the untimed warm-up); plan rows as solve_gwot's (no padding)."""
    from semcorr.matchers.gwot.solver import gpu_step_function
    from semcorr.matchers.static import exact_fp32

    with torch.set_grad_enabled(backward), exact_fp32(cost.device):
        step, z, pot = gpu_step_function(cost, g, g, lam=LAM, lam_gw=LAM_GW, lam_ub=LAM_UB, eps=EPS,
                                         delta_min=DMIN, delta_max=DMAX)
        compiled = torch.compile(step)
        for _ in range(steps):
            z, pot = compiled(z, pot)
        return torch.log_softmax(z, 2) - torch.log(torch.tensor(float(z.shape[1])))


def _pot(cost, g, steps, nu):
    import ot

    from reference.gwot_dense import structure_matrices

    cp, cq = structure_matrices(g, g, DMIN, DMAX, cost.dtype, cost.device)
    k = 1 - cq
    lam_gw = LAM_GW * nu
    s = LAM + lam_gw / 2
    n = cost.shape[1]
    p = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    return ot.gromov.entropic_fused_gromov_wasserstein(
        cost[0], cp, k, p, p, loss_fun="square_loss", epsilon=EPS / s, alpha=(lam_gw / 2) / s,
        max_iter=steps, tol=0.0, solver="PGD", symmetric=True,
    )



def _softmax_ms(cost, device, n=3):
    """Median time of ``n`` softmax passes over a tensor of the plan's size."""
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        torch.softmax(cost, -1)
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def child(args) -> dict:
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    f1, f2 = _inputs(args.grid, args.batch, device)
    cost32 = _cost(f1, f2)
    cost = cost32.to(PRECISIONS[args.precision])
    if args.method in REFERENCES and cost.dtype in (torch.float16, torch.bfloat16):
        cost = cost.float()  # the references solve the same (rounded) values in float32
    from semcorr.matchers.static import GraphCache, resolve_implementation

    solver = None
    impl = graph = None
    if args.method in SOLVERS:
        impl = resolve_implementation(args.implementation, torch.device(device))
        graph = args.cuda_graph == "on"
        solver = dict(implementation=impl, cuda_graph=graph, graphs=GraphCache())
    rec = dict(method=args.method, grid=args.grid, batch=args.batch, device=device, steps=args.steps,
               implementation=impl, cuda_graph=graph, precision=args.precision,
               threads=torch.get_num_threads(), ms_forward=None, ms_forward_backward=None, peak_mb=None,
               max_abs_diff_vs_dense=None, ms_softmax=None, x_softmax=None, ms_per_pair=None,
               repeats=args.repeats, load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    if device == "cuda":
        rec["gpu"] = torch.cuda.get_device_name()
    import semcorr.matchers.gwot  # noqa: F401  (imports outside the measurement)

    if args.method == "pot":
        import ot  # noqa: F401
    if args.method == "pot" and args.batch != 1:
        rec["note"] = "POT solves one pair"
        f1, f2 = f1[:1], f2[:1]
        cost, cost32 = cost[:1], cost32[:1]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = rss_mb()
    # Untimed warm-up at every grid: lazy initialisation, cuDNN's algorithm choice, the graph's capture.
    _run_method(args.method, args.grid, args.steps, cost, backward=False, solver=solver)
    soft = _softmax_ms(cost32, device)
    forward = []
    for _ in range(max(args.repeats, 1)):
        sync(device)
        t0 = time.perf_counter()
        out = _run_method(args.method, args.grid, args.steps, cost, backward=False, solver=solver)
        sync(device)
        forward.append((time.perf_counter() - t0) * 1000)
    soft += _softmax_ms(cost32, device)
    rec["ms_forward"] = min(forward)
    rec["ms_per_pair"] = rec["ms_forward"] / cost.shape[0]
    rec["ms_softmax"] = sorted(soft)[len(soft) // 2]
    per = rec["ms_forward"] / args.steps if args.method in PER_STEP and args.steps else rec["ms_forward"]
    rec["x_softmax"] = per / rec["ms_softmax"]
    if args.backward and args.method not in ("pot",):
        sync(device)
        t0 = time.perf_counter()
        _run_method(args.method, args.grid, args.steps, cost, backward=True, solver=solver)
        sync(device)
        rec["ms_forward_backward"] = (time.perf_counter() - t0) * 1000
    if device == "cuda":
        rec["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        rec["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    if args.reference:
        ref = torch.load(args.reference)
        if args.ref_steps and args.ref_steps != args.steps:  # a shorter reference: compare at its length
            out = _run_method(args.method, args.grid, args.ref_steps, cost, backward=False, solver=solver)
            rec["note"] = f"diff at {args.ref_steps} steps"
        rec["max_abs_diff_vs_dense"] = float((out.exp().cpu() - ref.exp()).abs().max())
    if args.save_plan:
        torch.save(out.cpu(), args.save_plan)
    return rec


def _spawn(method, grid, a, backward, reference=None, save_plan=None, steps=None, batch=1,
           implementation="auto", cuda_graph="off"):
    cmd = [sys.executable, __file__, "--_child", method, "--grid", str(grid), "--steps", str(steps or a.steps),
           "--batch", str(batch), "--device", a.device, "--repeats", str(a.repeats),
           "--precision", a.precision, "--implementation", implementation, "--cuda-graph", cuda_graph]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if reference and a.dense_steps:
        cmd += ["--_ref_steps", str(a.dense_steps)]
    if backward:
        cmd.append("--_backward")
    if reference:
        cmd += ["--_reference", reference]
    if save_plan:
        cmd += ["--_save_plan", save_plan]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{method} @ {grid}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", type=int, nargs="+", default=[16, 32, 40, 60])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (one child each)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", default=None, help="write the records to this path")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + OPTIONAL)
    ap.add_argument("--pot-max-grid", type=int, default=32, help="skip POT above this grid")
    ap.add_argument("--dense-backward-max-grid", type=int, default=32,
                    help="skip the dense reference's backward above this grid (memory: O(steps N^2))")
    ap.add_argument("--dense-steps", type=int, default=None,
                    help="run the dense references for this many steps only (diffs taken at that length)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense references (no diff column)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every child")
    ap.add_argument("--no-backward", action="store_true", help="skip the forward + backward timings")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed forward runs per child, the minimum kept (default: 3 on CUDA, 1 on a CPU)")
    ap.add_argument("--implementation", nargs="+", default=["auto"], choices=("auto", "cpu", "gpu"),
                    help="the solvers' formulation(s) for ot / gwot / gwot_bal (auto: by device)")
    ap.add_argument("--cuda-graph", nargs="+", default=["off"], choices=("off", "on"),
                    help="replay the solvers' step loop as a CUDA graph (CUDA, no autograd)")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                    help="dtype of the cost handed to the solvers (fp16 / bf16: solved in float32)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--grid", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--_backward", dest="backward", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_reference", dest="reference", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_save_plan", dest="save_plan", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_ref_steps", dest="ref_steps", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.repeats is None:
        a.repeats = 3 if a.device == "cuda" else 1
    if a._child:
        a.method = a._child
        a.batch, a.implementation, a.cuda_graph = a.batch[0], a.implementation[0], a.cuda_graph[0]
        print(json.dumps(child(a)))
        return 0
    import tempfile

    records = []
    tmp = tempfile.mkdtemp(prefix="bench_matcher_")
    for grid in a.grids:
        for batch in a.batch:
            _measure_grid(a, grid, batch, tmp, records)
    print()
    print(_table(records))
    loads = [r["load_avg"] for r in records if r.get("load_avg") is not None]
    if loads:
        print(f"1-min load average during the children: {min(loads):.1f} - {max(loads):.1f}")
    _write(a.json, records)
    return 0


def _measure_grid(a, grid, batch, tmp, records):
    """All methods at one grid and batch size (the dense references first, for the diffs)."""
    refs = {}
    need_bal = any(m in a.methods for m in ("gwot_bal", "pot"))
    ref_methods = [] if a.no_dense else ["gwot_dense"] + (["gwot_bal_dense"] if need_bal else [])
    for ref_method in ref_methods:
        path = os.path.join(tmp, f"{ref_method}_{grid}_{batch}.pt")
        rec = _spawn(ref_method, grid, a, backward=(ref_method == "gwot_dense" and grid <= a.dense_backward_max_grid),
                     save_plan=path, steps=a.dense_steps, batch=batch)
        if a.dense_steps:
            rec["note"] = f"{a.dense_steps} steps"
        refs[ref_method] = (path, rec)
    for method in a.methods:
        if method == "pot" and grid > a.pot_max_grid:
            records.append(dict(method=method, grid=grid, batch=batch, device=a.device, ms_forward=None,
                                ms_forward_backward=None, peak_mb=None, max_abs_diff_vs_dense=None,
                                note=f"skipped (grid > --pot-max-grid {a.pot_max_grid})"))
            continue
        if method == "gwot_dense":
            if a.no_dense:
                continue
            rec = refs["gwot_dense"][1]
            rec["max_abs_diff_vs_dense"] = 0.0
            if grid > a.dense_backward_max_grid:
                rec["note"] = (rec.get("note", "") + "; backward skipped (memory)").lstrip("; ")
            runs = [rec]
        else:
            ref = None
            if not a.no_dense:
                ref = refs["gwot_dense"][0] if method == "gwot" else (
                    refs["gwot_bal_dense"][0] if method in ("gwot_bal", "pot") else None)
            settings = [(i, g) for i in a.implementation for g in a.cuda_graph] if method in SOLVERS else [("auto", "off")]
            # the backward does not depend on the CUDA graph (autograd runs eagerly): timed once
            runs = [_spawn(method, grid, a, backward=method != "softmax" and g == "off" and not a.no_backward,
                           reference=ref, batch=batch, implementation=i, cuda_graph=g) for i, g in settings]
        for rec in runs:
            records.append(rec)
            print(_fmt(rec), flush=True)
            _write(a.json, records)  # after every record, so a long run leaves partial results


def _write(path, records):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(records, f, indent=1)


def _num(v, fmt):
    return format(v, fmt) if v is not None else format("-", ">" + fmt.split(".")[0])


def _fmt(r):
    graph = {True: "on", False: "off"}.get(r.get("cuda_graph"), "-")
    return (f"{r['method']:<13} {r['grid']:>4} {r['batch']:>5} {r['device']:>6} {r.get('implementation') or '-':>4} "
            f"{graph:>5} {r.get('precision', 'fp32'):>4} {_num(r['ms_forward'], '12.1f')} "
            f"{_num(r.get('ms_per_pair'), '9.2f')} {_num(r.get('ms_softmax'), '10.2f')} "
            f"{_num(r.get('x_softmax'), '9.2f')} {_num(r['ms_forward_backward'], '14.1f')} "
            f"{_num(r['peak_mb'], '9.1f')} {_num(r['max_abs_diff_vs_dense'], '12.2e')}  {r.get('note', '')}")


def _table(records):
    head = (f"{'method':<13} {'grid':>4} {'batch':>5} {'device':>6} {'impl':>4} {'graph':>5} {'prec':>4} "
            f"{'ms_forward':>12} {'ms/pair':>9} {'ms_softmax':>10} "
            f"{'x_softmax':>9} {'ms_fwd+bwd':>14} {'peak_mb':>9} {'diff_vs_ref':>12}")
    return "\n".join([head, "-" * len(head)] + [_fmt(r) for r in records])


if __name__ == "__main__":
    raise SystemExit(main())
