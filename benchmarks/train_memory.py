"""Memory of one training step: features -> head -> GW-OT (or OT / NN) -> ot_nll -> backward.

    python benchmarks/train_memory.py [--grid 32] [--dim 384] [--matcher gwot]
                                      [--grads unroll checkpoint detach] [--head resnet_bottleneck]

Each configuration runs in a fresh subprocess (CPU) and reports
- ``saved MB``: bytes of the distinct tensors autograd keeps for backward during the forward
  pass (``torch.autograd.graph.saved_tensors_hooks``): the activation memory that grad modes trade;
- ``peak RSS delta MB``: the process's peak resident memory (``ru_maxrss``) during the step minus
  before it (includes the backward pass, recomputation in ``checkpoint`` mode and allocator slack);
- ``seconds``: wall time of the step.
Feature maps are random (B, D, grid, grid) tensors standing in for backbone features, so the
figures are those of the matcher, head and loss, not of a backbone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_step(grid: int, dim: int, matcher: str, grad: str, head: str, n_kps: int) -> dict:
    import torch

    from semcorr.backbones.base import FeatureMap
    from semcorr.config import load_config
    from semcorr.heads import build_head
    from semcorr.losses import build_loss
    from semcorr.matchers import build_matcher

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokens = [f"matcher={matcher}", f"head={head}", "loss=ot_nll"]
    if matcher == "gwot":
        tokens.append(f"matcher.grad={grad}")
    cfg = load_config(tokens)
    m, h = build_matcher(cfg.matcher), build_head(cfg.head, dim=dim)
    loss_fn = build_loss(cfg.loss)
    stride = 14
    src = FeatureMap(torch.randn(1, dim, grid, grid), stride, torch.ones(1, grid, grid, dtype=torch.bool))
    trg = FeatureMap(torch.randn(1, dim, grid, grid), stride, torch.ones(1, grid, grid, dtype=torch.bool))
    kps = torch.rand(1, n_kps, 2) * (grid * stride - 1)
    batch = {"src_kps": kps, "trg_kps": kps.flip(1), "kps_valid": torch.ones(1, n_kps, dtype=torch.bool),
             "pair_id": ["bench"]}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s2, t2 = h(src, trg)
        loss, _ = loss_fn(batch, s2, t2, m(s2, t2))
    if loss.requires_grad:  # detach: no gradient reaches the head through the plan
        loss.backward()
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = [p for p in list(h.parameters()) + list(m.parameters())]
    grad_norm = float(sum(p.grad.norm() ** 2 for p in params if p.grad is not None) ** 0.5)
    return {"grid": grid, "dim": dim, "matcher": matcher, "grad": grad if matcher == "gwot" else "-",
            "head": head, "saved_mb": sum(saved.values()) / 2**20,
            "peak_rss_delta_mb": (rss1 - rss0) / 1024, "seconds": seconds,
            "loss": float(loss), "grad_norm": grad_norm}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--matcher", default="gwot")
    parser.add_argument("--grads", nargs="+", default=["unroll", "checkpoint", "detach"])
    parser.add_argument("--head", default="resnet_bottleneck")
    parser.add_argument("--kps", type=int, default=16)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = one_step(args.grid, args.dim, args.matcher, args.grads[0], args.head, args.kps)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    rows = []
    for grad in args.grads:
        cmd = [sys.executable, __file__, "--one", "--grid", str(args.grid), "--dim", str(args.dim),
               "--matcher", args.matcher, "--grads", grad, "--head", args.head, "--kps", str(args.kps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    head = f"{'matcher':<8}{'grad':<12}{'grid':>6}{'saved MB':>11}{'peak RSS delta MB':>19}{'seconds':>9}{'loss':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['matcher']:<8}{r['grad']:<12}{r['grid']:>6}{r['saved_mb']:>11.1f}"
                     f"{r['peak_rss_delta_mb']:>19.1f}{r['seconds']:>9.2f}{r['loss']:>9.3f}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
