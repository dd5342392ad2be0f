"""Issue 22: the ``gpu`` formulation of the OT / GW-OT solvers (``implementation: gpu``), checked
on the CPU: the same plans as the dense reference and the ``cpu`` formulation, the full-grid
solve equal to the cropped one, no host synchronisation (it runs on ``meta`` tensors), ops and
bytes per step within the issue's budget, one ``torch.compile`` graph per step, the CUDA-graph
step loop (with the capture faked), half-precision costs, and the option checks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from semcorr.backbones.base import FeatureMap
from semcorr.matchers import static
from semcorr.matchers.gridfilter import (conv_filter_leading, conv_filter_trailing, disc_kernel, disc_rows,
                                         filter_leading, filter_trailing)
from semcorr.matchers.gwot import GWOTMatcher, GWOTOptions, solve_gwot
from semcorr.matchers.gwot.solver import gpu_step_function
from semcorr.matchers.ot import OTMatcher, OTOptions, solve_ot
from semcorr.matchers.sinkhorn import log_iteration, sinkhorn, sinkhorn_log, uniform_log_marginals
from reference.gwot_dense import solve_gwot_dense
from test_gwot import KW, PAIRS, SG, TG, _cost, _masks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("delta,strict", [(3, True), (5, False), (2.5, True), (2.5, False), (5 ** 0.5, True),
                                          (1, True), (0, True), (0, False)])
def test_conv_filters_equal_the_shift_filters(delta, strict):
    """disc_kernel is the disc of disc_rows; conv2d / conv3d filter as the shifted sums do."""
    h, w = 7, 9
    x = torch.rand(2, h * w, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kernel = disc_kernel(delta, strict, x)
    rows = disc_rows(delta, strict)
    if not rows:
        assert kernel is None
    else:
        ry, rx = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
        offsets = {(int(dy) - ry, int(dx) - rx) for dy, dx in kernel.nonzero()}
        assert offsets == {(dy, dx) for dy, wd in rows for dx in range(-wd, wd + 1)}
    k4 = None if kernel is None else kernel[None, None]
    k5 = None if kernel is None else kernel[None, None, :, :, None]
    assert torch.allclose(conv_filter_leading(x, (h, w), k5), filter_leading(x, (h, w), delta, strict))
    xt = x.transpose(1, 2).contiguous()
    assert torch.allclose(conv_filter_trailing(xt, (h, w), k4), filter_trailing(xt, (h, w), delta, strict))


@pytest.mark.parametrize("marginal,scale", [("unbalanced", "fraction"), ("balanced", "fraction"),
                                            ("unbalanced", "raw")])
def test_gpu_formulation_equals_dense_reference(marginal, scale):
    cost = _cost()
    sv, tv = _masks()
    kw = dict(KW, lam_gw=torch.tensor([2.0, 5.0], dtype=torch.float64), sym_pairs=PAIRS, n_steps=15,
              marginal=marginal, scale=scale)
    ref_plan, ref_obj, ref_eta = solve_gwot_dense(cost, SG, TG, sv, tv, **kw)
    fin = torch.isfinite(ref_plan)
    for want_obj in (False, True):  # the objective takes the log-plan branch of the step
        res = solve_gwot(cost, SG, TG, sv, tv, implementation="gpu", return_objective=want_obj, **kw)
        assert torch.equal(torch.isfinite(res.log_plan), fin)
        assert torch.allclose(res.log_plan[fin], ref_plan[fin], rtol=1e-10, atol=0)
        assert torch.allclose(res.step_size, ref_eta, rtol=1e-12)
        if want_obj:
            assert torch.allclose(res.objective, ref_obj, rtol=1e-6, atol=1e-12)


def test_gpu_formulation_equals_cpu_formulation_float32():
    cost = _cost(dtype=torch.float32)
    sv, tv = _masks()
    kw = dict(KW, lam_gw=3.0, sym_pairs=PAIRS, n_steps=30)
    plans = [solve_gwot(cost, SG, TG, sv, tv, implementation=impl, **kw).log_plan.exp() for impl in ("cpu", "gpu")]
    assert (plans[0] - plans[1]).abs().max() < 1e-5 * plans[0].max()  # float32 rounding, 30 steps


@pytest.mark.parametrize("grad", ["unroll", "checkpoint"])
@pytest.mark.parametrize("marginal", ["unbalanced", "balanced"])
def test_gpu_formulation_gradcheck(grad, marginal):
    sg, tg = (3, 3), (3, 4)
    cost = _cost(1, sg, tg, seed=11).requires_grad_()
    lam_gw = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    lam_sym = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def fn(cost, lam_gw, lam_sym, eps):
        return solve_gwot(cost, sg, tg, lam=0.5, lam_gw=lam_gw, lam_ub=0.1, eps=eps, lam_sym=lam_sym,
                          sym_pairs=torch.tensor([[[0, 2]]]), delta_min=1.5, delta_max=1.0, n_steps=4,
                          step_size=3.0, marginal=marginal, sinkhorn_iters=3, scale="raw", grad=grad,
                          checkpoint_every=2, implementation="gpu").log_plan

    assert torch.autograd.gradcheck(fn, (cost, lam_gw, lam_sym, eps), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)


def _padded_maps(dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    grid = (7, 8)
    src = FeatureMap(torch.randn(2, 16, *grid, generator=g, dtype=dtype), 8, torch.ones(2, *grid, dtype=torch.bool))
    trg = FeatureMap(torch.randn(2, 16, *grid, generator=g, dtype=dtype), 8, torch.ones(2, *grid, dtype=torch.bool))
    src.valid[:, 5:] = False  # bottom rows padded in both pairs: the crop removes them
    src.valid[:, :, :1] = False  # and the left column
    src.valid[1, :, 6] = False  # pair-specific padding inside the box
    trg.valid[:, :, 6:] = False
    trg.valid[0, :, 5] = False
    return src, trg


@pytest.mark.parametrize("with_similarity", [False, True])
def test_full_grid_solve_equals_the_crop(with_similarity):
    """The gpu formulation solves on the full grids (padded cells carry no mass); its scores,
    padded rows included (box_rows), equal the cropped cpu formulation's everywhere."""
    src, trg = _padded_maps()
    pairs = torch.tensor([[[1, 4], [45, 50]], [[9, 14], [-1, -1]]])  # 45 / 50 lie in cropped rows
    sim = None
    if with_similarity:
        sim = torch.rand(2, 56, 56, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        sim = sim.masked_fill(~trg.valid.flatten(1)[:, None, :], float("-inf"))
    scores = {}
    for impl in ("cpu", "gpu"):
        m = GWOTMatcher(lam_gw=3.0, lam_sym=1.0, n_steps=8, grad="detach", implementation=impl)
        scores[impl] = m(src, trg, pairs, similarity=sim).scores
    fin = torch.isfinite(scores["cpu"])
    assert torch.equal(torch.isfinite(scores["gpu"]), fin)
    assert torch.allclose(scores["gpu"][fin], scores["cpu"][fin], rtol=1e-10, atol=1e-12)


class _NoHostData(TorchDispatchMode):
    """Fails on an op that brings host data to the device (a copy from a CPU tensor that is not
    a wrapped Python number): with meta inputs, such a copy would be a blocking host-to-device
    transfer on a GPU. Reading values on the host (``.item()``, ``nonzero``, ``bool``) needs no
    check: meta tensors have none, so it raises by itself."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_", "lift_fresh_copy", "_copy_from"):
            srcs = [a for a in (args[1:2] if name == "copy_" else args[:1]) if isinstance(a, torch.Tensor)]
            assert not any(s.device.type == "cpu" for s in srcs), f"host data copied to the device by {func}"
        return func(*args, **(kwargs or {}))


def test_gpu_formulation_is_sync_free():
    """Solver, matcher (full grid, padded, symmetry with a tensor λ_sym, objective off) and OT run
    on meta tensors: no value is ever read on the host and no host data is copied in."""
    meta = torch.device("meta")
    cost = _cost(dtype=torch.float32).to(meta)
    sv, tv = (m.to(meta) for m in _masks())
    pairs = PAIRS.to(meta)
    lam_sym = torch.tensor([0.5, 0.0], device=meta)
    src, trg = _padded_maps(torch.float32)
    src, trg = (FeatureMap(f.features.to(meta), 8, f.valid.to(meta)) for f in (src, trg))
    m = GWOTMatcher(lam_sym=0.1, n_steps=3, learnable=True).to(meta)  # auto: gpu off the CPU
    m_pairs = torch.tensor([[[1, 4]], [[9, 14]]], device=meta)
    with _NoHostData():
        for marginal in ("unbalanced", "balanced"):
            res = solve_gwot(cost, SG, TG, sv, tv, pairs, lam_gw=2.0, lam_sym=lam_sym, marginal=marginal,
                             n_steps=3, implementation="gpu")
            assert res.log_plan.shape == cost.shape and res.log_plan.device == meta
        out = m(src, trg, m_pairs)
        assert out.scores.shape == (2, 56, 56)
        assert solve_ot(cost, sv, tv, implementation="gpu").shape == cost.shape
    with pytest.raises(Exception):  # the check has teeth: the cpu formulation crops on the host
        GWOTMatcher(n_steps=3, implementation="cpu")(src, trg)


def test_ops_and_bytes_per_step_within_budget():
    """Issue 22: one no-grad gpu step at 60x60, δ (3, 5), batch 1: <= 40 ATen ops (<= 50 with
    the symmetry term) and <= 0.8 GB written (counted on meta tensors, which run the same ops)."""
    import launches

    for sym, limit in ((False, 40), (True, 50)):
        rec = launches.count("gpu", 60, 1, train=False, sym=sym, device="meta")
        assert rec["ops"] <= limit and rec["gb_written"] <= 0.8, rec
    before = launches.count("cpu", 60, 1, train=False, sym=False, device="meta")
    assert before["kernels"] > 10 * rec["kernels"]  # the cpu formulation's Python loops on a GPU


def test_meta_counts_are_the_cpu_counts():
    """launches.py counts the gpu formulation on meta tensors: the ops are those of a real run."""
    import launches

    for train in (False, True):
        recs = [launches.count("gpu", 12, 2, train=train, sym=True, device=d) for d in ("cpu", "meta")]
        assert recs[0]["by_op"] == recs[1]["by_op"] and recs[0]["gb_written"] == recs[1]["gb_written"]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("marginal", ["unbalanced", "balanced"])
def test_compiled_step_is_one_graph(grad, marginal):
    """torch.compile traces one gpu step (symmetry on, padded pairs) as one graph, no breaks."""
    torch._dynamo.reset()
    cost = _cost(dtype=torch.float32).requires_grad_(grad)
    sv, tv = _masks()
    with torch.set_grad_enabled(grad):
        step, z, g = gpu_step_function(cost, SG, TG, sv, tv, PAIRS, lam_gw=2.0, lam_sym=1.0, marginal=marginal)
        explain = torch._dynamo.explain(step)(z, g)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


def test_compiled_sinkhorn_iteration_is_one_graph():
    torch._dynamo.reset()
    cost = _cost(dtype=torch.float32)
    sv, tv = _masks()
    log_p, log_q, _, _ = uniform_log_marginals(sv, tv, cost.dtype)
    z = (-20 * cost).masked_fill(~tv[:, None, :], -1e20)
    f = torch.zeros_like(log_p)
    rho = torch.full((2, 1), 0.8)
    explain = torch._dynamo.explain(log_iteration)(z, f, log_p, log_q, tv, rho)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """The CUDA-graph path on the CPU: 'capture' runs the step twice (as the warm-up does, on
    whatever the static buffers hold) and returns it as the 'replay'; counts the captures."""
    captured = []

    def capture(fn):
        fn()
        fn()
        captured.append(fn)
        return fn

    monkeypatch.setattr(static, "graphs_available", lambda device: True)
    monkeypatch.setattr(static, "_capture", capture)
    return captured


def test_cuda_graph_step_loop_equals_eager(fake_cuda_graphs):
    """cuda_graph: the module captures once per shape, refreshes the static inputs every call and
    gives the eager plan; a new batch size captures again; the cache keeps the two newest."""
    src, trg = _padded_maps(torch.float32)
    pairs = torch.tensor([[[1, 4], [20, 21]], [[9, 14], [-1, -1]]])
    for marginal in ("unbalanced", "balanced"):
        fake_cuda_graphs.clear()
        graphed = GWOTMatcher(lam_sym=0.5, n_steps=6, implementation="gpu", cuda_graph=True, marginal=marginal)
        eager = GWOTMatcher(lam_sym=0.5, n_steps=6, implementation="gpu", marginal=marginal)
        # batch 2, batch 1, batch 2 (cached), a 7x7 grid (the cache drops batch 1), batch 1 again
        for b, w in ((slice(0, 2), 8), (slice(1, 2), 8), (slice(0, 2), 8), (slice(0, 2), 7), (slice(1, 2), 8)):
            s, t = (FeatureMap(f.features[b, ..., :w] * (1 + b.start), 8, f.valid[b, ..., :w]) for f in (src, trg))
            a, e = graphed(s, t, pairs[b]).scores, eager(s, t, pairs[b]).scores
            assert torch.equal(a, e)
        assert len(fake_cuda_graphs) == 4 and len(graphed._graphs) == 2
    graphed = GWOTMatcher(lam_sym=0.5, n_steps=6, implementation="gpu", cuda_graph=True)
    eager = GWOTMatcher(lam_sym=0.5, n_steps=6, implementation="gpu")
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):  # captured under inference
        with mode():  # mode, the graph's buffers still take no_grad calls
            s, t = (FeatureMap(f.features[:1] * 3, 8, f.valid[:1]) for f in (src, trg))
            assert torch.equal(graphed(s, t, pairs[:1]).scores, eager(s, t, pairs[:1]).scores)
    with torch.enable_grad():  # autograd: no graph, eager
        cost = _cost(dtype=torch.float32).requires_grad_()
        fake_cuda_graphs.clear()
        solve_gwot(cost, SG, TG, n_steps=2, implementation="gpu", cuda_graph=True, grad="unroll")
        assert not fake_cuda_graphs


def test_cuda_graph_sinkhorn_equals_eager(fake_cuda_graphs):
    g = torch.Generator().manual_seed(0)
    src = FeatureMap(torch.randn(2, 16, 6, 7, generator=g), 8)
    trg = FeatureMap(torch.randn(2, 16, 5, 8, generator=g), 8)
    for marginal in ("balanced", "unbalanced"):
        m = OTMatcher(marginal=marginal, implementation="gpu", cuda_graph=True)
        for scale in (1.0, 2.0):
            s = FeatureMap(src.features * scale, 8)
            assert torch.equal(m(s, trg).scores, OTMatcher(marginal=marginal, implementation="gpu")(s, trg).scores)
    assert len(fake_cuda_graphs) == 2  # one capture per marginal, reused for the second call


@pytest.mark.parametrize("eps", [0.01, 1e-3])
def test_sinkhorn_gpu_formulation(eps):
    """The log-domain iteration: the cpu formulation's potentials (which, at ε = 1e-3, come from
    its log-domain fallback) and the same OT plans."""
    cost = _cost(dtype=torch.float32)
    sv, tv = _masks()
    log_p, log_q, _, _ = uniform_log_marginals(sv, tv, cost.dtype)
    z = (-0.2 / eps * cost).masked_fill(~tv[:, None, :], -1e20)
    rho = torch.full((2,), 0.05 / (0.05 + eps))
    a = sinkhorn(z, log_p, log_q, tv, 20, rho)
    b = sinkhorn(z, log_p, log_q, tv, 20, rho, implementation="gpu")
    f, g = sinkhorn_log(z, log_p, log_q, tv, 20, rho)
    assert torch.allclose(b.f, f, atol=1e-5) and torch.allclose(b.g, g, atol=1e-5)
    assert torch.allclose(a.f, b.f, atol=1e-3) and torch.allclose(a.g, b.g, atol=1e-3)
    for marginal in ("balanced", "unbalanced"):
        plans = [solve_ot(cost, sv, tv, eps=eps, marginal=marginal, implementation=i).exp() for i in ("cpu", "gpu")]
        assert (plans[0] - plans[1]).abs().max() < 1e-4 * plans[0].max()


def test_ot_gpu_formulation_gradcheck():
    cost = _cost(1, (2, 2), (2, 3), seed=3).requires_grad_()
    eps = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    for marginal in ("balanced", "unbalanced"):
        fn = lambda c, e: solve_ot(c, lam=1.0, eps=e, lam_ub=0.3, marginal=marginal, n_steps=5,  # noqa: E731
                                   implementation="gpu")
        assert torch.autograd.gradcheck(fn, (cost, eps), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["cpu", "gpu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cost_is_solved_in_float32(dtype, implementation):
    """An fp16 / bf16 cost handed to the solvers is solved in float32 (NEG = -1e20 would be -inf
    and t log t NaN in half precision): the plan of the float32 copy, finite, in float32."""
    cost = _cost(dtype=torch.float32).to(dtype)
    sv, tv = _masks()
    kw = dict(KW, lam_gw=3.0, sym_pairs=PAIRS, n_steps=10, return_objective=True, implementation=implementation)
    half = solve_gwot(cost, SG, TG, sv, tv, **kw)
    full = solve_gwot(cost.float(), SG, TG, sv, tv, **kw)
    assert half.log_plan.dtype == torch.float32 and torch.equal(half.log_plan, full.log_plan)
    assert torch.isfinite(half.objective).all() and not torch.isnan(half.log_plan).any()
    for marginal in ("balanced", "unbalanced"):
        ot_half = solve_ot(cost, sv, tv, marginal=marginal, implementation=implementation)
        assert ot_half.dtype == torch.float32 and not torch.isnan(ot_half).any()
        assert torch.equal(ot_half, solve_ot(cost.float(), sv, tv, marginal=marginal, implementation=implementation))
    with pytest.raises(TypeError, match="float16/bfloat16/float32/float64"):
        solve_ot(cost.to(torch.int32))


def test_implementation_and_cuda_graph_options_are_checked():
    from semcorr.config import ConfigError, load_config

    assert static.resolve_implementation("auto", torch.device("cpu")) == "cpu"
    assert static.resolve_implementation("auto", torch.device("meta")) == "gpu"
    for cls in (GWOTOptions, OTOptions):
        assert cls().implementation == "auto" and cls().cuda_graph is False
        with pytest.raises(ValueError, match="implementation must be one of auto, cpu, gpu, got 'tpu'"):
            cls(implementation="tpu")
        with pytest.raises(ValueError, match="cuda_graph must be true or false"):
            cls(cuda_graph="yes")
    for name in ("gwot", "ot"):
        cfg = load_config([f"matcher={name}", "matcher.implementation=gpu", "matcher.cuda_graph=true"]).matcher
        assert cfg.implementation == "gpu" and cfg.cuda_graph is True
        with pytest.raises(ConfigError, match="matcher.implementation must be one of"):
            load_config([f"matcher={name}", "matcher.implementation=fast"])


def test_exact_fp32_sets_and_restores_the_cudnn_flag():
    cudnn = torch.backends.cudnn
    new_api = hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    read = (lambda: cudnn.conv.fp32_precision) if new_api else (lambda: cudnn.allow_tf32)
    before = read()
    with static.cudnn_ieee_fp32():
        assert read() == ("ieee" if new_api else False)
    assert read() == before
    with static.exact_fp32(torch.device("cpu")):  # a no-op off CUDA
        assert read() == before


def test_graph_cache_is_bounded_and_not_copied():
    import copy
    import pickle

    cache = static.GraphCache(size=2)
    for k in "abc":
        cache.put(k, (k,))
    assert cache.get("a") is None and cache.get("b") == ("b",) and len(cache) == 2
    cache.put("d", ("d",))  # "b" was used last: "c" goes
    assert cache.get("c") is None and cache.get("b") == ("b",)
    assert len(copy.deepcopy(cache)) == 0 and len(pickle.loads(pickle.dumps(cache))) == 0
    m = GWOTMatcher()
    m._graphs.put("x", (1,))
    assert len(copy.deepcopy(m)._graphs) == 0


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --tiny: the GPU check end to end at tiny sizes."""
    import os

    out = tmp_path / "check"
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=path, HF_HUB_OFFLINE="1")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                          "--out", str(out)], capture_output=True, text=True, timeout=1500, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = (out / "gpu_check.txt").read_text()
    assert "plans: OK" in report and "gwot" in report and "x_softmax" in report
    # section 3: the pipeline through the data path and the feature extractor, the Tab. 3 lines
    # (batch 1 and 2, NN and GW-OT, a training step) and the precision agreement
    assert "Tab. 3 for semcorr" in report and "ERROR" not in report
    assert report.count("| cpu | DINOv2-S/14 | 56 (4x4) | ") == 2
    assert "bf16 (runs as bf16): feature rel. error" in report


def test_pipeline_benchmark_jobs_and_tab3_row():
    """benchmarks/pipeline.py: on CUDA one child per (backbone, size, precision) runs every
    configuration (peak memory reset per batch), on a CPU one child per configuration (an honest
    peak RSS); the Tab. 3 line puts features, both matchers, totals and the training step side by side."""
    import argparse

    import pipeline

    a = argparse.Namespace(backbones=["b"], sizes=[840], precision=["auto", "bf16"], batch=[1, 8],
                           matchers=["nn", "gwot_tss"], cuda_graph=["off", "on"], train=True, agreement=True,
                           device="cuda", repeats=3, resize="square", threads=None, train_precision="bf16-mixed")
    cuda = pipeline.jobs(a)
    assert [(j["precision"], len(j["configs"])) for j in cuda] == [("auto", 8), ("bf16", 8)]
    assert [bool(j.get("agreement")) for j in cuda] == [False, True]
    a.device = "cpu"
    assert len(pipeline.jobs(a)) == 16
    common = dict(backbone="dinov2_vitb14", size=840, grid=60, precision="auto", device="cuda", gpu="H100",
                  resolved_precision="tf32", batch=8, worker_ms=30.0, digest_ms=9.0)
    records = [dict(common, kind="inference", matcher="nn", cuda_graph=False, feat_ms=10.0, match_ms=1.0,
                    total_ms=11.5, peak_mb=900.0),
               dict(common, kind="inference", matcher="gwot_tss", cuda_graph=True, feat_ms=10.2, match_ms=4.0,
                    total_ms=14.5, peak_mb=1200.0),
               dict(common, kind="train_step", matcher="gwot_tss (checkpoint)", cuda_graph=None, feat_ms=None,
                    match_ms=None, total_ms=80.0, peak_mb=5000.0, digest_ms=None)]
    rows = pipeline.tab3_rows(records)
    assert rows[-2] == ("| H100 | DINOv2-B/14 | 840 (60x60) | 8 | auto (tf32) | gwot_tss, graph on | 10.0 | 1.0 "
                        "| 4.0 | 11.5 | 14.5 | 900 / 1200 | 80.0 (5000 MB) | 30.0 (9.0) |")
    assert rows[-1].startswith("paper (RTX 4090)")
