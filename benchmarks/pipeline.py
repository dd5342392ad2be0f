"""Per-pair cost of the whole pipeline, as the GW-OT paper's Tab. 3: features, matching, total.

    python benchmarks/pipeline.py --device cpu --pairs 2 --sizes 448 --json runs/bench_pipeline.json
    python benchmarks/pipeline.py --device cuda --pairs 20 --sizes 448 840 --train

For each backbone (DINOv2-S/14, -B/14, random weights: ``backbone.weights=none``, so no download)
and input side (448 px: a 32x32 patch grid; 840 px: 60x60, the paper's setting), and each
matcher (``nn``, ``ot``, and the GW-OT presets ``gwot_tss`` and ``gwot_spair``, built through
:func:`semcorr.config.load_config` and :func:`semcorr.matchers.build_matcher`), one fresh
subprocess times ``--pairs`` pairs (after one untimed pair):

- ``feat ms``: features of the two images of a pair (one batch of 2, inference mode);
- ``match ms``: the matcher on the pair's feature maps (``gwot_spair`` with 8 synthetic
  left/right source pairs for its symmetry term);
- ``total ms`` = feat + match; ``peak MB``: CPU: peak resident set size of the child minus its
  size once the model is built (model and imports excluded, allocator slack included); CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before.

``--train`` adds one training step per (backbone, size): the last 2 ViT blocks trainable, the
``resnet_bottleneck`` head, the ``ot_nll`` loss through GW-OT (``gwot_tss``) in ``checkpoint``
mode, backward and an AdamW step, batch 1, 16 random keypoints; its time and peak memory (as
above, the model's own weights excluded).

Times on a CPU depend on the machine and its load (the child reports the 1-min load average);
random weights cost what trained ones cost. The paper's Tab. 3 (RTX 4090): DINOv2-B/14 features
97 ms per pair, GW-OT 120 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _common import rss_mb, sync  # benchmarks/_common.py (this script's folder is on sys.path)

BACKBONES = {"s": "dinov2_vits14", "b": "dinov2_vitb14"}
MATCHERS = ("nn", "ot", "gwot_tss", "gwot_spair")
STRIDE = 14



class _Meter:
    """Peak memory of the calls after ``start`` (CPU: RSS; CUDA: allocated)."""

    def __init__(self, device: str):
        self.device = device

    def start(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_mb()

    def peak_mb(self) -> float:
        import torch

        if self.device == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base



def _backbone(name: str, device: str, trainable_blocks: int = 0):
    from semcorr.backbones import build_backbone
    from semcorr.config import load_config

    cfg = load_config([f"backbone={BACKBONES[name]}", "backbone.weights=none",
                       f"backbone.trainable_blocks={trainable_blocks}"])
    return build_backbone(cfg.backbone).to(device).eval()


def _images(size: int, device: str, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g).to(device)


def _sym_pairs(grid: int, device: str):
    """(1, 8, 2) source cells mirrored about the vertical centre line (stand-ins for the left /
    right keypoint pairs that SPair's symmetry table gives)."""
    import torch

    rows = torch.linspace(grid // 4, 3 * grid // 4, 8).long()
    cols = torch.linspace(1, grid // 2 - 2, 8).long()
    a = rows * grid + cols
    b = rows * grid + (grid - 1 - cols)
    return torch.stack([a, b], -1)[None].to(device)


def run_inference(backbone: str, size: int, matcher: str, pairs: int, device: str) -> dict:
    import torch

    from semcorr.config import load_config
    from semcorr.matchers import build_matcher

    net = _backbone(backbone, device)
    m = build_matcher(load_config([f"matcher={matcher}"]).matcher).to(device).eval()
    grid = size // STRIDE
    sym = _sym_pairs(grid, device) if matcher == "gwot_spair" else None
    feat_ms, match_ms = [], []
    meter = _Meter(device)
    meter.start()  # the warm-up pair reaches the same peak as the timed ones
    with torch.inference_mode():
        for i in range(pairs + 1):  # pair 0: untimed warm-up
            images = _images(size, device, i)
            sync(device)
            t0 = time.perf_counter()
            fm = net(images)
            sync(device)
            t1 = time.perf_counter()
            src, trg = fm.with_features(fm.features[:1]), fm.with_features(fm.features[1:])
            out = m(src, trg, sym_pairs=sym)
            out.scores.sum().item()  # the result is used
            sync(device)
            t2 = time.perf_counter()
            if i:
                feat_ms.append((t1 - t0) * 1000)
                match_ms.append((t2 - t1) * 1000)
    feat, match = sum(feat_ms) / pairs, sum(match_ms) / pairs
    return dict(kind="inference", backbone=BACKBONES[backbone], size=size, grid=grid, matcher=matcher,
                pairs=pairs, feat_ms=feat, match_ms=match, total_ms=feat + match, peak_mb=meter.peak_mb())


def run_train(backbone: str, size: int, device: str, kps: int = 16) -> dict:
    import torch

    from semcorr.config import load_config
    from semcorr.heads import build_head
    from semcorr.losses import build_loss
    from semcorr.matchers import build_matcher

    net = _backbone(backbone, device, trainable_blocks=2)
    cfg = load_config(["matcher=gwot_tss", "matcher.grad=checkpoint", "head=resnet_bottleneck", "loss=ot_nll"])
    m = build_matcher(cfg.matcher).to(device)
    dim = net.vit.embed_dim
    head = build_head(cfg.head, dim=dim).to(device)
    loss_fn = build_loss(cfg.loss)
    params = [p for p in list(net.parameters()) + list(head.parameters()) + list(m.parameters())
              if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(1, kps, 2, generator=g) * (size - 1)).to(device)
    batch = {"src_kps": pts, "trg_kps": pts.flip(1), "kps_valid": torch.ones(1, kps, dtype=torch.bool, device=device),
             "pair_id": ["bench"]}
    images = _images(size, device, 0)
    net.train()
    meter = _Meter(device)
    meter.start()
    sync(device)
    t0 = time.perf_counter()
    fm = net(images)
    src, trg = head(fm.with_features(fm.features[:1]), fm.with_features(fm.features[1:]))
    loss, _ = loss_fn(batch, src, trg, m(src, trg))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    ms = (time.perf_counter() - t0) * 1000
    return dict(kind="train_step", backbone=BACKBONES[backbone], size=size, grid=size // STRIDE,
                matcher="gwot_tss (checkpoint)", pairs=1, feat_ms=None, match_ms=None, total_ms=ms,
                peak_mb=meter.peak_mb(), loss=float(loss), trainable_params=sum(p.numel() for p in params))


def _child(a) -> dict:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.matcher == "__train__":
        rec = run_train(a.backbone, a.size, a.device)
    else:
        rec = run_inference(a.backbone, a.size, a.matcher, a.pairs, a.device)
    rec.update(device=a.device, threads=torch.get_num_threads(),
               load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    return rec


def _spawn(a, backbone, size, matcher) -> dict:
    cmd = [sys.executable, __file__, "--_child", matcher, "--_backbone", backbone, "--_size", str(size),
           "--pairs", str(a.pairs), "--device", a.device]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{backbone} {size} {matcher}: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _num(v, fmt):
    return format(v, fmt) if v is not None else format("-", ">" + fmt.split(".")[0])


def _fmt(r) -> str:
    return (f"{r['backbone']:<14} {r['size']:>5} {r['grid']:>5} {r['matcher']:<22} {_num(r['feat_ms'], '10.1f')} "
            f"{_num(r['match_ms'], '10.1f')} {_num(r['total_ms'], '10.1f')} {_num(r['peak_mb'], '9.1f')}")


def _table(records) -> str:
    head = (f"{'backbone':<14} {'size':>5} {'grid':>5} {'matcher':<22} {'feat ms':>10} {'match ms':>10} "
            f"{'total ms':>10} {'peak MB':>9}")
    return "\n".join([head, "-" * len(head)] + [_fmt(r) for r in records])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--pairs", type=int, default=2, help="timed pairs per configuration (after one warm-up)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[448], help="input sides in px (multiples of 14)")
    ap.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["s", "b"],
                    help="DINOv2 sizes: s (ViT-S/14), b (ViT-B/14)")
    ap.add_argument("--matchers", nargs="+", choices=MATCHERS, default=list(MATCHERS))
    ap.add_argument("--train", action="store_true", help="also one training step per backbone and size")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every child")
    ap.add_argument("--json", default=None, help="write the records to this path")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_backbone", default="b", help=argparse.SUPPRESS)
    ap.add_argument("--_size", type=int, default=448, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        a.matcher, a.backbone, a.size = a._child, a._backbone, a._size
        print(json.dumps(_child(a)))
        return 0
    for size in a.sizes:
        if size % STRIDE:
            ap.error(f"--sizes: {size} is not a multiple of {STRIDE}")
    records = []
    for backbone in a.backbones:
        for size in a.sizes:
            for matcher in a.matchers + (["__train__"] if a.train else []):
                rec = _spawn(a, backbone, size, matcher)
                records.append(rec)
                print(_fmt(rec), flush=True)
                if a.json:
                    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
                    with open(a.json, "w") as f:
                        json.dump(records, f, indent=1)
    print()
    print(_table(records))
    loads = [r["load_avg"] for r in records if r.get("load_avg") is not None]
    if loads:
        print(f"device {a.device}; 1-min load average during the children: {min(loads):.1f} - {max(loads):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
