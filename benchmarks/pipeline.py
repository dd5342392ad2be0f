"""Per-pair cost of the whole pipeline, as the GW-OT paper's Tab. 3: features, matching, total.

    python benchmarks/pipeline.py --device cpu --sizes 448 --backbones s --json runs/bench_pipeline.json
    python benchmarks/pipeline.py --device cuda --sizes 840 --backbones b --matchers nn gwot_tss \
        --batch 1 8 --precision auto bf16 --cuda-graph off on --train

What runs is the evaluation pipeline itself, with random weights (``backbone.weights=none``: no
download; random weights cost what trained ones cost):

- **data** (the workers' side, not timed with the device): a dataset (:class:`RandomPairs`, a
  :class:`~semcorr.data.base.PairDataset` whose images are random 640 x 480 "photos" with 16
  keypoints) serves each pair through ``__getitem__``: resize to the network frame
  (``--resize``, default ``square``: the full ``size / 14`` grid) and the content digests the
  feature cache keys on (``src_digest`` / ``trg_digest``); ``collate`` makes the batch.
  ``worker ms`` is that per pair, ``digest ms`` its hashing part (both images);
- **inference**: the batch moved to the device, then :class:`~semcorr.net.CorrespondenceNet`
  (built by :func:`semcorr.builder.build_net`: the backbone through the
  :class:`~semcorr.features.FeatureExtractor` with its memory cache, ``matcher.transfer``) in
  eval mode under ``torch.inference_mode`` as evaluation runs it. Every batch holds new images
  (all cache misses: the first pass over a benchmark; a pair benchmark that reuses images costs
  less); the cache is emptied between batches, so memory is one batch's. ``feat ms`` and
  ``match ms`` are the net's stage clocks (:class:`~semcorr.net.StageClock`: the ``backbone``
  stage with the cache's keys and lookups; the ``match`` stage with the head, the matcher,
  keypoint transfer and the finite checks), ``total ms`` the wall time of the forward with the
  device synchronised, all per pair (batch time / batch size). ``gwot_spair`` gets 8 synthetic
  left/right source pairs for its symmetry term;
- **train** (``--train``): a warm training step per batch size: the last 2 ViT blocks trainable,
  the ``resnet_bottleneck`` head, ``ot_nll`` through ``gwot_tss`` in ``checkpoint`` mode,
  :meth:`CorrespondenceModule.training_step` (the module's own step; its ``self.log`` has no
  trainer here), backward and an AdamW step, under ``--train-precision`` (``bf16-mixed``, the
  training default on a GPU, or ``32-true``) with ``backbone.precision=auto``; the training split
  computes no digests, as in a real run.

One untimed warm-up batch (step) first (lazy initialisation, cuDNN's algorithm choice, the CUDA
graphs' capture, AdamW's state), then ``--repeats`` timed ones (default 3 on CUDA, 1 on a CPU;
the minimum is kept). ``--precision``: ``backbone.precision`` (``auto``: TF32 on CUDA, float32 on a
CPU; the resolved value is printed); ``--cuda-graph off on``: ``matcher.cuda_graph`` of the OT
family (used on CUDA under inference mode).

Peak memory: CUDA: the most ``torch.cuda.max_memory_allocated`` rose above the memory allocated
just before a batch (weights, optimiser state and earlier batches excluded; the batch's own
inputs and outputs included). CPU: peak resident set size of the process minus its size once
the model is built; each configuration then runs in its own subprocess (the peak cannot be reset),
while on CUDA one subprocess runs every configuration of a (backbone, size, precision).

Times on a CPU depend on the machine and its load (the children report the 1-min load
average). The paper's Tab. 3 (RTX 4090): DINOv2-B/14 features 97 ms per pair, GW-OT 120 ms; the
``Tab. 3`` lines at the end put semcorr's numbers in that form.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
import zlib

from _common import rss_mb, sync  # benchmarks/_common.py (this script's folder is on sys.path)
from semcorr.precision import BACKBONE_PRECISIONS

BACKBONES = {"s": "dinov2_vits14", "b": "dinov2_vitb14"}
NAMES = {"s": "DINOv2-S/14", "b": "DINOv2-B/14"}
MATCHERS = ("nn", "ot", "gwot_tss", "gwot_spair")
TRAIN_PRECISIONS = ("bf16-mixed", "32-true")
STRIDE = 14
KEYPOINTS = 16
ORIGINAL_HW = (480, 640)  # the random "photos" the dataset decodes
PAPER = "paper (RTX 4090): DINOv2-B/14 features 97 ms per pair, GW-OT 120 ms per pair"


# ------------------------------------------------------------------------------------------------
# the child: one job = the configurations of one (backbone, size, precision)
# ------------------------------------------------------------------------------------------------
def random_pairs(size: int, resize: str, seed: int, n_pairs: int, digests: bool = True):
    """A :class:`~semcorr.data.base.PairDataset` of ``n_pairs`` pairs of random images."""
    import numpy as np
    import torch

    from semcorr.data.base import DataConfig, PairDataset, PairRecord

    class RandomPairs(PairDataset):
        def read_image(self, image_id: str) -> torch.Tensor:
            g = torch.Generator().manual_seed(zlib.crc32(image_id.encode()))
            return torch.rand(3, *ORIGINAL_HW, generator=g)

        def original_size(self, image_id: str):  # no file to read a header from
            return ORIGINAL_HW

    ds = RandomPairs(DataConfig(image_size=size, resize=resize), divisor=STRIDE)
    rng = np.random.default_rng(seed)
    hw = np.array(ORIGINAL_HW[::-1], dtype=np.float32) - 1  # (x, y) extent
    records = [PairRecord(src=f"{seed}-{i}-src", trg=f"{seed}-{i}-trg",
                          src_kps=rng.random((KEYPOINTS, 2), dtype=np.float32) * hw,
                          trg_kps=rng.random((KEYPOINTS, 2), dtype=np.float32) * hw,
                          valid=np.ones(KEYPOINTS, dtype=bool), category="random", pair_id=f"{seed}-{i}")
               for i in range(n_pairs)]
    ds.finalize(records)
    ds.image_digests = digests
    return ds


def make_batches(ds, batch: int, count: int):
    """``count`` collated batches of ``batch`` pairs, each pair served by ``ds[i]`` (the workers'
    work, timed: ``worker_ms`` per pair; ``digest_ms``: hashing both images again, per pair)."""
    from semcorr.data.schema import collate
    from semcorr.digest import image_digest

    out, worker, digest = [], 0.0, 0.0
    for k in range(count):
        samples = []
        for i in range(k * batch, (k + 1) * batch):
            t0 = time.perf_counter()
            samples.append(ds[i])
            worker += time.perf_counter() - t0
            t0 = time.perf_counter()
            image_digest(samples[-1]["src_img"]), image_digest(samples[-1]["trg_img"])
            digest += time.perf_counter() - t0
        out.append(collate(samples))
    n = batch * count
    return out, worker * 1e3 / n, (digest * 1e3 / n if ds.image_digests else None)


def to_device(batch, device):
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


class Meter:
    """Peak memory a batch adds (CUDA: allocated; CPU: the process's RSS since ``start``)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0.0
        self.base_rss = rss_mb()

    def before_batch(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()

    def after_batch(self) -> None:
        import torch

        if self.device == "cuda":
            self.peak = max(self.peak, (torch.cuda.max_memory_allocated() - self.base) / 2**20)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base_rss


def sym_pairs(grid: int, batch: int, device: str):
    """(B, 8, 2) source cells mirrored about the vertical centre line (stand-ins for the left /
    right keypoint pairs that SPair's symmetry table gives), as keypoint indices: the batch's
    first 16 keypoints are moved onto those cells."""
    import torch

    rows = torch.linspace(grid // 4, 3 * grid // 4, 8).long()
    cols = torch.linspace(1, grid // 2 - 2, 8).long()
    centre = lambda r, c: torch.stack([c, r], -1).float() * STRIDE + (STRIDE - 1) / 2  # noqa: E731
    kps = torch.cat([centre(rows, cols), centre(rows, grid - 1 - cols)])  # (16, 2)
    pairs = torch.stack([torch.arange(8), torch.arange(8, 16)], -1)
    return kps.expand(batch, -1, -1).to(device), pairs.expand(batch, -1, -1).to(device)


def inference_config(job: dict, matcher: str, cuda_graph: bool):
    from semcorr.config import load_config

    tokens = [f"backbone={BACKBONES[job['backbone']]}", "backbone.weights=none",
              f"backbone.precision={job['precision']}", f"matcher={matcher}",
              f"data.image_size={job['size']}", f"data.resize={job['resize']}"]
    if matcher != "nn":
        tokens.append(f"matcher.cuda_graph={str(cuda_graph).lower()}")
    return load_config(tokens)


def run_inference(job: dict, nets: dict, conf: dict, seed: int) -> dict:
    import torch

    from semcorr.builder import build_net
    from semcorr.matchers import build_matcher
    from semcorr.net import StageClock
    from semcorr.stores import MemoryCache

    device, batch, repeats = job["device"], conf["batch"], job["repeats"]
    cfg = inference_config(job, conf["matcher"], conf["cuda_graph"])
    if "net" not in nets:  # one backbone per job; the matcher is swapped per configuration
        nets["net"] = build_net(cfg).to(device).eval()
    net = nets["net"]
    net.matcher = build_matcher(cfg.matcher).to(device).eval()
    memory_mb = float(cfg.cache.memory_mb)
    ds = random_pairs(job["size"], job["resize"], seed, batch * (repeats + 1))
    batches, worker_ms, digest_ms = make_batches(ds, batch, repeats + 1)
    meter = Meter(device)  # a CPU runs one configuration per process: its RSS from here on
    grid = job["size"] // STRIDE
    times = {"feat": [], "match": [], "total": []}
    with torch.inference_mode():
        for k, host in enumerate(batches):  # batch 0: the untimed warm-up
            b = to_device(host, device)
            if conf["matcher"] == "gwot_spair":
                b["src_kps"][:, :16], b["sym_pairs"] = sym_pairs(grid, batch, device)
            net.extractor.stores = [MemoryCache(memory_mb)]  # one batch's features at a time
            calls = net.extractor.backbone_calls
            net.clock = StageClock()
            meter.before_batch()
            sync(device)
            t0 = time.perf_counter()
            out = net(b)
            out.pred_orig.sum().item()  # the result is used
            sync(device)
            wall = (time.perf_counter() - t0) * 1e3
            meter.after_batch()
            stages = net.clock.totals()
            net.clock = None
            if net.extractor.backbone_calls - calls != 2 * batch:
                raise RuntimeError(f"the backbone ran {net.extractor.backbone_calls - calls} images for "
                                   f"{2 * batch} distinct ones")
            if k:
                times["feat"].append(stages["backbone"])
                times["match"].append(stages["match"])
                times["total"].append(wall)
    best = {k: min(v) / batch for k, v in times.items()}
    return dict(kind="inference", matcher=conf["matcher"], batch=batch, cuda_graph=conf["cuda_graph"],
                resolved_precision=net.backbone.resolved_precision(),
                worker_ms=worker_ms, digest_ms=digest_ms, feat_ms=best["feat"], match_ms=best["match"],
                total_ms=best["total"], peak_mb=meter.peak)


def run_train(job: dict, conf: dict, seed: int) -> dict:
    import torch

    from semcorr.builder import build_net
    from semcorr.config import load_config
    from semcorr.losses import build_loss
    from semcorr.models import CorrespondenceModule

    device, batch, repeats = job["device"], conf["batch"], job["repeats"]
    cfg = load_config([f"backbone={BACKBONES[job['backbone']]}", "backbone.weights=none",
                       "backbone.trainable_blocks=2", f"backbone.precision={job['precision']}",
                       "matcher=gwot_tss", "matcher.grad=checkpoint", "head=resnet_bottleneck", "loss=ot_nll",
                       f"data.image_size={job['size']}", f"data.resize={job['resize']}"])
    module = CorrespondenceModule(build_net(cfg, training=True), loss=build_loss(cfg.loss)).to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ds = random_pairs(job["size"], job["resize"], seed, batch * (repeats + 1), digests=False)
    batches, worker_ms, _ = make_batches(ds, batch, repeats + 1)
    meter = Meter(device)
    mixed = job["train_precision"] == "bf16-mixed"
    times, loss = [], None
    for k, host in enumerate(batches):  # step 0: the untimed warm-up (AdamW's state, cuDNN)
        b = to_device(host, device)
        meter.before_batch()
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed):  # as Lightning's bf16-mixed
            loss = module.training_step(b, k)
            resolved = module.net.backbone.resolved_precision()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        meter.after_batch()
        if k:
            times.append(ms)
    return dict(kind="train_step", matcher="gwot_tss (checkpoint)", batch=batch, cuda_graph=None,
                resolved_precision=resolved, train_precision=job["train_precision"], worker_ms=worker_ms,
                digest_ms=None, feat_ms=None, match_ms=None, total_ms=min(times) / batch,
                peak_mb=meter.peak, loss=float(loss), trainable_params=sum(p.numel() for p in params))


def run_agreement(job: dict, precisions=("tf32", "bf16")) -> list:
    """How far each reduced backbone precision moves the features and the nearest neighbours
    from exact float32, on the device: two bundled scikit-image photographs (cat and coffee,
    resized to ``size`` x ``size``), the job's backbone with random weights and its LayerScale
    factors drawn from N(0, 0.5^2) (at timm's 1e-5 every block would be near the identity and
    only the patch embedding would round). ``rel_error``: ||f - f32|| / ||f32|| of the patch
    features; ``nn_equal``: the share of source cells whose nearest target cell (cosine
    similarity, row argmax) is float32's. Random weights: an estimate of the rounding, not of
    trained features' margins."""
    import skimage.data
    import torch

    from semcorr.builder import build_net
    from semcorr.matchers.base import cosine_similarity
    from semcorr.precision import resolve_backbone_precision

    device, size = job["device"], job["size"]
    cfg = inference_config(job, "nn", False)
    backbone = build_net(cfg).backbone.to(device).eval()
    g = torch.Generator().manual_seed(0)
    for name, param in backbone.named_parameters():
        if name.endswith(".gamma"):  # LayerScale
            param.data.copy_(torch.randn(param.shape, generator=g) * 0.5)
    photos = [torch.from_numpy(skimage.data.chelsea()), torch.from_numpy(skimage.data.coffee())]
    images = torch.stack([torch.nn.functional.interpolate(p.permute(2, 0, 1)[None].float() / 255, size=(size, size),
                                                          mode="bilinear", antialias=True)[0] for p in photos])
    images = images.clamp(0, 1).to(device)

    def features(precision):
        backbone.precision = precision
        return backbone(images)

    out = []
    with torch.inference_mode():
        ref = features("fp32")
        ref_nn = cosine_similarity(ref.with_features(ref.features[:1]), ref.with_features(ref.features[1:])).argmax(-1)
        for precision in precisions:
            resolved = resolve_backbone_precision(precision, device)
            f = features(precision)
            nn = cosine_similarity(f.with_features(f.features[:1]), f.with_features(f.features[1:])).argmax(-1)
            out.append(dict(kind="agreement", precision=precision, resolved_precision=resolved, batch=1,
                            matcher="-", cuda_graph=None,
                            rel_error=float((f.features - ref.features).norm() / ref.features.norm()),
                            nn_equal=float((nn == ref_nn).float().mean())))
    return out


def run_job(job: dict) -> list:
    import torch

    warnings.filterwarnings("ignore", message=".*self.log.*")  # the module's step without a trainer
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    nets: dict = {}
    common = dict(backbone=BACKBONES[job["backbone"]], size=job["size"], grid=job["size"] // STRIDE,
                  precision=job["precision"], device=job["device"], repeats=job["repeats"],
                  threads=torch.get_num_threads())
    if job["device"] == "cuda":
        common["gpu"] = torch.cuda.get_device_name()
    records = []
    for i, conf in enumerate(job["configs"]):
        rec = dict(common)
        try:
            rec.update(run_train(job, conf, seed=1000 + i) if conf["kind"] == "train"
                       else run_inference(job, nets, conf, seed=1000 + i))
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: recorded, the run goes on
            rec.update(kind=conf["kind"], matcher=conf.get("matcher", "gwot_tss (checkpoint)"),
                       batch=conf["batch"], cuda_graph=conf.get("cuda_graph"),
                       error=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
        rec["load_avg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        records.append(rec)
        if job["device"] == "cuda":
            torch.cuda.empty_cache()
    if job.get("agreement"):
        for rec in run_agreement(job):
            records.append(dict(common, **rec, load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None))
    return records


# ------------------------------------------------------------------------------------------------
# the parent: jobs, children, tables
# ------------------------------------------------------------------------------------------------
def jobs(a) -> list:
    """Configurations grouped into children: on CUDA one per (backbone, size, precision); on a CPU
    one per configuration (an honest peak RSS)."""
    out = []
    for backbone in a.backbones:
        for size in a.sizes:
            for precision in a.precision:
                configs = []
                for batch in a.batch:
                    for matcher in a.matchers:
                        graphs = a.cuda_graph if matcher != "nn" else ["off"]
                        configs += [dict(kind="inference", matcher=matcher, batch=batch, cuda_graph=g == "on")
                                    for g in graphs]
                    if a.train:
                        configs.append(dict(kind="train", batch=batch))
                job = dict(backbone=backbone, size=size, precision=precision, device=a.device,
                           repeats=a.repeats, resize=a.resize, threads=a.threads,
                           train_precision=a.train_precision)
                groups = [configs] if a.device == "cuda" else [[c] for c in configs]
                out += [dict(job, configs=group) for group in groups]
            if a.agreement:  # once per (backbone, size): its last job also measures the agreement
                out[-1]["agreement"] = True
    return out


def spawn(a, job: dict) -> list:
    cmd = [sys.executable, __file__, "--_job", json.dumps(job)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{job['backbone']} {job['size']} {job['precision']}: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _num(v, fmt):
    return format(v, fmt) if v is not None else format("-", ">" + fmt.split(".")[0])


def _label(r) -> str:
    graph = {True: " graph", False: ""}.get(r.get("cuda_graph"), "")
    return f"{r['matcher']}{graph}"


def _fmt(r) -> str:
    if r["kind"] == "agreement":
        return (f"{r['backbone']:<14} {r['size']:>5} {r['grid']:>4} agreement {r['precision']}:"
                f"{r['resolved_precision']} vs fp32: rel. error {r['rel_error']:.2e}, NN equal {100 * r['nn_equal']:.1f} %")
    prec = f"{r['precision']}:{r.get('resolved_precision', '?')}"
    line = (f"{r['backbone']:<14} {r['size']:>5} {r['grid']:>4} {r['batch']:>5} {prec:<10} {_label(r):<22} "
            f"{_num(r.get('worker_ms'), '9.1f')} {_num(r.get('digest_ms'), '9.1f')} {_num(r.get('feat_ms'), '9.1f')} "
            f"{_num(r.get('match_ms'), '9.1f')} {_num(r.get('total_ms'), '9.1f')} {_num(r.get('peak_mb'), '9.1f')}")
    return line + (f"  ERROR {r['error']}" if r.get("error") else "")


def table(records) -> str:
    head = (f"{'backbone':<14} {'size':>5} {'grid':>4} {'batch':>5} {'precision':<10} {'matcher':<22} "
            f"{'worker ms':>9} {'digest ms':>9} {'feat ms':>9} {'match ms':>9} {'total ms':>9} {'peak MB':>9}")
    note = "(ms per pair; worker and digest ms: the data workers' side, not in the total)"
    return "\n".join([note, head, "-" * len(head)] + [_fmt(r) for r in records])


def tab3_rows(records) -> list:
    """The paper's Tab. 3 in one line per (backbone, size, precision, batch, CUDA graph): features,
    NN match, GW-OT match, totals, peak memory, the training step (ms per pair)."""
    ok = [r for r in records if not r.get("error")]
    lines = []
    keys = dict.fromkeys((r["backbone"], r["size"], r["precision"], r["batch"]) for r in ok)
    for backbone, size, precision, batch in keys:
        group = [r for r in ok if (r["backbone"], r["size"], r["precision"], r["batch"]) == (backbone, size, precision, batch)]
        nn = next((r for r in group if r["kind"] == "inference" and r["matcher"] == "nn"), None)
        train = next((r for r in group if r["kind"] == "train_step"), None)
        gwots = [r for r in group if r["kind"] == "inference" and r["matcher"].startswith("gwot")]
        for gw in gwots or [None]:
            inference = [r for r in (nn, gw) if r is not None]
            if not inference:
                continue
            feat = min(r["feat_ms"] for r in inference)
            graph = "-" if gw is None else f"{gw['matcher']}, graph {'on' if gw['cuda_graph'] else 'off'}"
            name = next(k for k, v in BACKBONES.items() if v == backbone)
            lines.append(
                f"| {group[0].get('gpu', group[0]['device'])} | {NAMES[name]} | {size} ({size // STRIDE}x{size // STRIDE}) "
                f"| {batch} | {precision} ({inference[0]['resolved_precision']}) | {graph} | {feat:.1f} "
                f"| {_num(nn and nn['match_ms'], '.1f')} | {_num(gw and gw['match_ms'], '.1f')} "
                f"| {_num(nn and nn['total_ms'], '.1f')} | {_num(gw and gw['total_ms'], '.1f')} "
                f"| {_num(nn and nn['peak_mb'], '.0f')} / {_num(gw and gw['peak_mb'], '.0f')} "
                f"| {_num(train and train['total_ms'], '.1f')} ({_num(train and train['peak_mb'], '.0f')} MB) "
                f"| {inference[0]['worker_ms']:.1f} ({_num(inference[0]['digest_ms'], '.1f')}) |")
    if not lines:
        return []
    head = ("| device | backbone | px (grid) | batch | backbone.precision | GW-OT matcher | features | NN match "
            "| GW-OT match | total NN | total GW-OT | peak MB NN / GW-OT | train step (peak) | workers (digest) |")
    rule = "|" + "---|" * (head.count("|") - 1)
    return ["Tab. 3 for semcorr (ms per pair; random weights: the timing is what counts):", head, rule,
            *lines, PAPER]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[448], help="input sides in px (multiples of 14)")
    ap.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["s", "b"],
                    help="DINOv2 sizes: s (ViT-S/14), b (ViT-B/14)")
    ap.add_argument("--matchers", nargs="+", choices=MATCHERS, default=list(MATCHERS))
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="pairs per batch (default: 1 8 on CUDA, 1 on a CPU)")
    ap.add_argument("--precision", nargs="+", choices=BACKBONE_PRECISIONS, default=["auto"], help="backbone.precision")
    ap.add_argument("--cuda-graph", nargs="+", choices=("off", "on"), default=["off"],
                    help="matcher.cuda_graph of the OT family (CUDA, inference mode)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed batches after the warm-up, the minimum kept (default: 3 on CUDA, 1 on a CPU)")
    ap.add_argument("--resize", choices=("square", "longer_side_pad"), default="square",
                    help="data.resize (square: the full grid)")
    ap.add_argument("--train", action="store_true", help="also a warm training step per batch size")
    ap.add_argument("--agreement", action="store_true",
                    help="also the features' and nearest neighbours' agreement of tf32 / bf16 with fp32")
    ap.add_argument("--train-precision", choices=TRAIN_PRECISIONS, default=None,
                    help="the training step's trainer.precision (default: bf16-mixed on CUDA, 32-true on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every child")
    ap.add_argument("--json", default=None, help="write the records to this path")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--_job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="only print the tables of the records in this file (e.g. of a run cut short)")
    a = ap.parse_args(argv)
    if a.report:
        with open(a.report) as f:
            records = json.load(f)
        return report(records, records[0]["device"] if records else a.device)
    if a._job:
        print(json.dumps(run_job(json.loads(a._job))))
        return 0
    cuda = a.device == "cuda"
    a.batch = a.batch or ([1, 8] if cuda else [1])
    a.repeats = a.repeats if a.repeats is not None else (3 if cuda else 1)
    a.train_precision = a.train_precision or ("bf16-mixed" if cuda else "32-true")
    for size in a.sizes:
        if size % STRIDE:
            ap.error(f"--sizes: {size} is not a multiple of {STRIDE}")
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    records = []
    for job in jobs(a):
        for rec in spawn(a, job):
            records.append(rec)
            print(_fmt(rec), flush=True)
            if a.json:
                os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
                with open(a.json, "w") as f:
                    json.dump(records, f, indent=1)
    return report(records, a.device)


def report(records: list, device: str) -> int:
    """Print the table, the Tab. 3 lines and the precision agreement of ``records``; 1 when a
    configuration failed."""
    timed = [r for r in records if r["kind"] != "agreement"]
    print()
    print(table(timed))
    loads = [r["load_avg"] for r in records if r.get("load_avg") is not None]
    if loads:
        print(f"device {device}; 1-min load average during the children: {min(loads):.1f} - {max(loads):.1f}")
    rows = tab3_rows(timed)
    if rows:
        print()
        print("\n".join(rows))
    agreement = [r for r in records if r["kind"] == "agreement"]
    if agreement:
        print()
        print("backbone precision against fp32 (random weights, LayerScale ~ N(0, 0.5^2); two photos):")
        for r in agreement:
            print(f"  {r['backbone']} {r['size']} px on {r.get('gpu', r['device'])}: {r['precision']} "
                  f"(runs as {r['resolved_precision']}): feature rel. error {r['rel_error']:.2e}, "
                  f"nearest neighbours equal to fp32's {100 * r['nn_equal']:.1f} %")
    failed = [r for r in records if r.get("error")]
    if failed:
        print(f"{len(failed)} configuration(s) failed (ERROR above)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
