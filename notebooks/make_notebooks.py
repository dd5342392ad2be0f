"""Write the notebooks of this folder from the cell sources below, and store them with outputs.

    python notebooks/make_notebooks.py            # rewrite the sources (keeps no outputs)
    python notebooks/make_notebooks.py --execute  # rewrite, run top to bottom, store the outputs
    python notebooks/make_notebooks.py --check    # exit 1 if a committed notebook's cells differ

Edit the cells here, not in Jupyter, so the notebooks stay reviewable. The committed notebooks
carry their outputs (figures as PNG at a modest resolution), so a reader of the repository sees
them; ``--check`` compares the cells' sources only, and ``tests/test_notebooks.py`` executes the
notebooks and checks they still match this script.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = '''\
import json
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from semcorr import viz
from semcorr.config import load_config
from semcorr.paths import shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here runs offline
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 60  # small PNGs: the notebooks are stored with their outputs
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's widget bar; text is fine

# Set SEMCORR_DINOV2_WEIGHTS=/path/to/dinov2_vitb14_pretrain.pth to use DINOv2 instead of dense SIFT.
WEIGHTS = os.environ.get("SEMCORR_DINOV2_WEIGHTS")
if WEIGHTS:
    BACKBONE, GWOT, SIZE = ["backbone=dinov2_vitb14", f"backbone.weights={WEIGHTS}"], "gwot", 448
else:
    BACKBONE, GWOT, SIZE = ["backbone=dsift"], "gwot_pf_willow", 192
OUT = Path(os.environ.get("SEMCORR_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="semcorr-nb-"))
OUT.mkdir(parents=True, exist_ok=True)
shared = shared_data_dir()
PF_WILLOW = shared / "pf-willow" if shared is not None else None
HAVE_PF_WILLOW = PF_WILLOW is not None and (PF_WILLOW / "PF-dataset-WILLOW").is_dir()
print("backbone:", " ".join(BACKBONE), "| GW-OT preset:", GWOT, "| image size:", SIZE)
print("PF-WILLOW:", PF_WILLOW if HAVE_PF_WILLOW else "not found, using a synthetic pair")
print("outputs in", OUT)'''

QUICKSTART: List[Tuple[str, str]] = [
    ("md", '''\
# semcorr quickstart

1. match points between two images with the Python API (the same code path as the
   `semcorr-match` command),
2. compare nearest-neighbour (NN) matching with GW-OT, keypoint by keypoint and as a dense warp,
3. run a small evaluation and read its `metrics.json`.

Runs offline on the CPU in about a minute with dense SIFT. It uses a PF-WILLOW pair when the
shared data is present (`$SEMCORR_SHARED_DATA` or `../shared/data`), otherwise a synthetic pair
(a photograph and a warped copy). Set `SEMCORR_DINOV2_WEIGHTS` to a DINOv2 ViT-B/14 checkpoint to
run everything with DINOv2.'''),
    ("code", SETUP),
    ("md", '''\
## A pair of images and its keypoints

Any two image files work; here we also have ground-truth target keypoints to score the matches.'''),
    ("code", '''\
from semcorr.data.base import load_image

if HAVE_PF_WILLOW:
    from semcorr.data.datasets.pf_willow import read_points

    folder = PF_WILLOW / "PF-dataset-WILLOW" / "car(S)"
    SRC, TRG = folder / "Cars_000a.png", folder / "Cars_014a.png"
    src_kps = torch.tensor(read_points(SRC.with_suffix(".mat")), dtype=torch.float32)
    trg_kps = torch.tensor(read_points(TRG.with_suffix(".mat")), dtype=torch.float32)
    DATA = ["data=pf_willow"]
else:  # a photograph and a randomly warped copy with exact ground truth
    from semcorr.data.datasets.synthetic import SyntheticPairs

    pair = SyntheticPairs(images=["chelsea"], n_pairs={"test": 1}, n_keypoints=10).load_pair(0)
    SRC, TRG = OUT / "src.png", OUT / "trg.png"
    plt.imsave(SRC, pair["src_img"].permute(1, 2, 0).numpy())
    plt.imsave(TRG, pair["trg_img"].permute(1, 2, 0).numpy())
    src_kps, trg_kps = pair["src_kps"], pair["trg_kps"]
    DATA = ["data=synthetic"]
src_img, trg_img = load_image(SRC), load_image(TRG)
print(SRC.name, tuple(src_img.shape), "->", TRG.name, tuple(trg_img.shape), "|", len(src_kps), "keypoints")'''),
    ("md", '''\
## Match with NN and with GW-OT

`inference_model` builds backbone, head and matcher from a config (the same `group=name` and
`key=value` tokens as the command line); `match_images` resizes both images to the network frame,
runs the pipeline and maps the predictions back to the original target frame.

The command-line equivalent writes `matches.json` and `matches.png`:
`semcorr-match SRC TRG --points "x,y;x,y" backbone=dsift matcher=gwot_pf_willow out_dir=out`
(or `--dense` for a grid of foreground points).'''),
    ("code", '''\
from semcorr.inference import inference_model, match_images

matches = {}
for name, matcher in {"NN": "nn", "GW-OT": GWOT}.items():
    cfg = load_config([*BACKBONE, f"matcher={matcher}", f"data.image_size={SIZE}"])
    net = inference_model(cfg)  # a CorrespondenceNet: backbone, head, matcher, transfer
    matches[name] = match_images(net, src_img, trg_img, src_kps, SIZE, cfg.data.resize)
    print(f"{name:6s} first matches:", matches[name].trg_points[:3].round().tolist(),
          "scores:", [f"{v:.3f}" for v in matches[name].scores[:3].tolist()])'''),
    ("md", '''\
Side by side: a line per keypoint, green when the prediction is within alpha = 0.1 of the
ground truth (white cross; PF-WILLOW's threshold is 0.1 x the larger side of the box around the
target keypoints), red otherwise.'''),
    ("code", '''\
from semcorr.metrics import Protocol, pck_scores

valid = torch.ones(len(src_kps), dtype=torch.bool)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.4))
for ax, (name, m) in zip(axes, matches.items()):  # PF-WILLOW's rule: L = the keypoints' box
    ok = pck_scores(Protocol(threshold_by="bbox_kp"), [0.1], m.trg_points[None], trg_kps[None],
                    valid[None]).correct[0, :, 0]
    viz.draw_matches(ax, src_img, trg_img, src_kps, m.trg_points, trg_kps, ok.numpy(), legend=True,
                     title=f"{name}: {int(ok.sum())}/{len(ok)} correct at alpha=0.1")
plt.show()'''),
    ("md", '''\
The dense view: every source cell copies the target patch its row of the scores (NN) or of the
transport plan (GW-OT) points to. A perfect matcher would reproduce the source; GW-OT's
neighbourhood term keeps neighbouring cells together, so its warp is more coherent.'''),
    ("code", '''\
from semcorr.warp import warp_match

warps = {}
for name, m in matches.items():
    src_net, trg_net, warps[name] = warp_match(m.batch, m.out)
viz.plot_dense_warps(src_net, trg_net, warps)
plt.show()'''),
    ("md", '''\
## Evaluate and read `metrics.json`

`eval.py` (here called in-process) writes `config.yaml`, `metrics.json` and the figures
`keypoints.png`, `pck_curve.png`, `dense_warp.png` into `out_dir`. Four pairs only, to stay fast.'''),
    ("code", '''\
from semcorr.cli.eval import main as eval_main

runs = {}
for name, matcher in {"NN": "nn", "GW-OT": GWOT}.items():
    runs[name] = OUT / f"eval_{matcher}"
    extra = [] if matcher == "nn" else ["matcher.grad=detach"]  # evaluation needs no gradient
    code = eval_main([*DATA, *BACKBONE, f"matcher={matcher}", *extra, f"data.image_size={SIZE}",
                      "data.max_pairs=4", "plots.n_pairs=1", "logger.wandb=false", "logger.csv=false",
                      "trainer.enable_progress_bar=false", f"out_dir={runs[name]}",
                      "--overwrite"])  # this cell may run again: it replaces its own results
    assert code == 0, f"eval failed for {matcher}"
print(sorted(p.name for p in runs["GW-OT"].iterdir() if not p.name.startswith(".")))'''),
    ("code", '''\
metrics = {name: json.loads((path / "metrics.json").read_text()) for name, path in runs.items()}
for name, m in metrics.items():
    pck = ", ".join(f"PCK@{a} = {v:.1f}" for a, v in m["pck"].items())
    print(f"{name:6s} {m['dataset']}, {m['n_pairs']} pairs ({m['protocol']['average']}, threshold by "
          f"{m['protocol']['threshold_by']}): {pck}; {m['timing']['match_ms_per_pair']:.0f} ms/pair to match")
viz.plot_pck_curves(runs, title="PCK vs alpha (from each run's metrics.json)")
plt.show()'''),
    ("code", '''\
import io

from IPython.display import Image as Picture, display
from PIL import Image

picture = Image.open(runs["GW-OT"] / "keypoints.png").convert("RGB")
picture.thumbnail((700, 700))  # shown at the notebook's width (the file keeps its resolution)
buffer = io.BytesIO()
picture.save(buffer, "JPEG", quality=85)  # a JPEG keeps the stored notebook small
display(Picture(buffer.getvalue()))'''),
]

GWOT_EXPLAINED: List[Tuple[str, str]] = [
    ("md", '''\
# What each term of the GW-OT objective does

GW-OT (Snelgar et al., arXiv 2602.03105) finds a transport plan T between the source cells i and
the target cells j of two feature grids:

$$T^* = \\arg\\min_{T \\ge 0,\\; T\\mathbf 1 = p}\\;
\\lambda\\langle C, T\\rangle
+ \\lambda_{gw}\\langle C^p T C^{q\\top}, T\\rangle
+ \\lambda_{sym} F_{sym}(T)
+ \\lambda_{ub}\\,\\mathrm{KL}(T^\\top\\mathbf 1\\,\\|\\,q)
- \\varepsilon H(T)$$

- $\\lambda\\langle C, T\\rangle$, with $C = 1 - \\cos(y_i, \\hat y_j)$: **appearance**, the only
  term nearest-neighbour matching has;
- the **Gromov-Wasserstein** term penalises sending two *close* source cells
  ($C^p_{ik} = 1[\\|x_i - x_k\\| < \\delta_{min}]$) to two *far* target cells
  ($C^q_{jl} = 1[\\|\\hat x_j - \\hat x_l\\| > \\delta_{max}]$): neighbours stay neighbours;
- $F_{sym}$ rewards keeping the **left/right order** of known symmetric source pairs;
- the **KL** term lets target cells receive more or less than their share $q$ (unbalanced: not
  every target cell needs a match, e.g. background);
- the **entropy** $\\varepsilon H(T)$ smooths the plan; the solver is mirror descent on $\\log T$.

We show each term on one real PF-WILLOW pair (a synthetic pair when the data is absent), with
dense SIFT by default (`SEMCORR_DINOV2_WEIGHTS` switches to DINOv2). About a minute on a CPU.'''),
    ("code", SETUP),
    ("md", '''\
## The pair, its features and the preset

A wine bottle seen from the front: its ten PF-WILLOW keypoints come in left/right pairs
(0-1, 2-3, ..., 8-9, by inspection of the annotation; PF-WILLOW ships no symmetry labels). We
pass them as `sym_pairs` so the symmetry term has something to work on.'''),
    ("code", '''\
from semcorr.registry import section
from semcorr.data.schema import collate
from semcorr.inference import inference_model

cfg = load_config([*BACKBONE, f"matcher={GWOT}", f"data.image_size={SIZE}"])
net = inference_model(cfg)
stride = net.backbone.stride
if HAVE_PF_WILLOW:
    from semcorr.data.datasets.pf_willow import PFWillowDataset

    dataset = PFWillowDataset(image_size=SIZE, divisor=stride, categories=["winebottle(M)"])
    sample = dataset[72]  # 246_0099 -> 246_0001: GW-OT fixes three of NN's mistakes here
else:
    from semcorr.data.datasets.synthetic import SyntheticPairs

    dataset = SyntheticPairs(image_size=SIZE, divisor=stride, images=["chelsea"], n_pairs={"test": 1},
                             n_keypoints=10)
    sample = dataset[0]
n_kps = len(sample["src_kps"])
sample["sym_pairs"] = torch.tensor([[k, k + 1] for k in range(0, n_kps - 1, 2)])  # (0, 1), (2, 3), ...
batch = collate([sample])
with torch.no_grad():
    src, trg = net.features(batch, use_cache=False)
PRESET = section(cfg.matcher, exclude=("kind", "name", "transfer"))
print(sample["pair_id"], "| grids:", src.grid, trg.grid, "| stride", stride)
print("preset:", {k: PRESET[k] for k in ("lam", "lam_gw", "lam_sym", "lam_ub", "eps", "delta_min", "delta_max", "n_steps")})'''),
    ("md", '''\
`solve(**changes)` runs the net's own matching step (`net.match`: head, matcher, then keypoint
transfer) with the preset changed by `changes`, and scores the transferred keypoints (PCK@0.1,
PF-WILLOW protocol).'''),
    ("code", '''\
from semcorr.matchers.gwot import GWOTMatcher
from semcorr.matchers.transfer import cell_index
from semcorr.metrics import Protocol, pck_scores

cells = cell_index(batch["src_kps"], src.grid, stride)[0]  # the source cell of each keypoint


def solve(**changes):
    net.matcher = GWOTMatcher(**{**PRESET, "grad": "detach", "return_objective": True, **changes})
    with torch.no_grad():
        out = net.match(batch, src, trg)  # a MatchOutput
    scores = pck_scores(Protocol(threshold_by="bbox_kp"), [0.1], out.pred_orig,
                        batch["trg_kps_orig"], batch["kps_valid"])
    return {"result": out.result, "pred": out.pred, "pred_orig": out.pred_orig,
            "ok": scores.correct[0, :, 0],
            "rows": out.scores[0, cells].exp().reshape(-1, *trg.grid)}  # plan rows, (K, h, w)


def report(name, out):
    print(f"{name:28s} PCK@0.1 = {100 * out['ok'].float().mean():5.1f}  "
          f"objective = {out['result'].extras['objective'][0, -1]:.5f}")'''),
    ("md", '''\
## Appearance only vs. with the Gromov-Wasserstein term

With $\\lambda_{gw} = 0$ the plan is entropic, semi-unbalanced OT on appearance alone: each row is
a soft nearest neighbour and may light up several look-alike places. The GW term couples rows:
the mass of neighbouring source cells must land close together, which removes isolated
look-alikes. Below, the rows of T for four keypoints (white cross: ground truth, cyan: predicted).'''),
    ("code", '''\
runs = {"appearance only (lam_gw=0)": solve(lam_gw=0.0, lam_sym=0.0),
        f"+ GW term (lam_gw={PRESET['lam_gw']:g})": solve(lam_sym=0.0)}
for name, out in runs.items():
    report(name, out)
show = [k for k in (0, 3, 5, 8) if k < n_kps]
viz.plot_plan_rows(batch["trg_img"][0], {n: o["rows"][show] for n, o in runs.items()}, stride,
                   trg_kps=batch["trg_kps"][0, show],
                   pred={n: o["pred"][0, show] for n, o in runs.items()},
                   labels=[f"keypoint {k}" for k in show], src_img=batch["src_img"][0],
                   src_kps=batch["src_kps"][0, show])
plt.show()'''),
    ("md", '''\
## Symmetry on / off

For a symmetric object, appearance cannot tell left from right, so a matcher may swap the two
keypoints of a pair. $F_{sym}(T) = -\\sum_{(i,k)} \\sum_{j,l} s_{ik}\\hat s_{jl} T_{ij}T_{kl}$
(with $s$ the sign of the horizontal offset) rewards plans that keep each pair's left/right
order. We count the pairs whose predictions keep the ground truth's order and print $F_{sym}$.
On this pair appearance and the GW term already keep every pair in order, so even ten times
`gwot_spair`'s $\\lambda_{sym} = 0.1$ only nudges the plan (a slightly lower $F_{sym}$): the term
matters when a matcher would swap left and right (SPair-71k animals and vehicles seen from the
side). Under `scale: asot` (as under `fraction`) its gradient is of the order of the feature
cost, so values far above the presets (several units) let it override appearance.'''),
    ("code", '''\
from semcorr.matchers.gwot.terms import sym_setup, sym_value
from semcorr.net import symmetric_cells

sym_cells = symmetric_cells(batch, src.grid, stride)  # the pairs' source cells


def f_sym(out):  # F_sym of the plan: more negative = left/right order better kept
    plan = out["result"].scores.exp()
    return float(sym_value(plan, sym_setup(sym_cells, src.grid, plan.dtype), trg.grid)[0])


def order_kept(out):
    pred, gt = out["pred_orig"][0], batch["trg_kps_orig"][0]
    pairs = batch["sym_pairs"][0]
    same = torch.sign(pred[pairs[:, 0], 0] - pred[pairs[:, 1], 0]) == torch.sign(gt[pairs[:, 0], 0] - gt[pairs[:, 1], 0])
    return int(same.sum()), len(pairs)


lam_sym = max(float(PRESET["lam_sym"]), 1.0)  # ten times gwot_spair's 0.1 (scale: asot)
runs_sym = {"symmetry off": runs[f"+ GW term (lam_gw={PRESET['lam_gw']:g})"], f"symmetry on (lam_sym={lam_sym:g})": solve(lam_sym=lam_sym)}
for name, out in runs_sym.items():
    report(name, out)
    kept, total = order_kept(out)
    print(f"{'':28s} left/right order kept for {kept} of {total} pairs; F_sym = {f_sym(out):.6e}")
pair = [2, 3]
viz.plot_plan_rows(batch["trg_img"][0], {n: o["rows"][pair] for n, o in runs_sym.items()}, stride,
                   trg_kps=batch["trg_kps"][0, pair], pred={n: o["pred"][0, pair] for n, o in runs_sym.items()},
                   labels=["left of pair (2, 3)", "right of pair (2, 3)"])
plt.show()'''),
    ("md", '''\
## The unbalanced (KL) term

Rows always carry their mass $p_i = 1/n_s$. The column sums $T^\\top\\mathbf 1$ are only pulled
towards the uniform $q$ with strength $\\lambda_{ub}$: small values let the plan ignore background
cells and pile mass on the object; larger values spread the mass over more target cells
(balanced OT in the limit). The maps show the column mass over the target grid.

The solver fixes its step size once, from the gradient at the uniform start plan, where the KL
gradient is zero, and caps it at $2 / (2\\varepsilon + \\lambda_{ub})$: a longer step would make
the KL column update overshoot once the column mass concentrates, and the objective would climb
again (it did before the cap, see `docs/gwot.md`, *Differentiability*). The right plot below
shows $\\lambda_{ub} = 0.1$ with the cap: the objective keeps falling.'''),
    ("code", '''\
base = runs[f"+ GW term (lam_gw={PRESET['lam_gw']:g})"]
variants = {"lam_ub=0.01 (freer)": solve(lam_sym=0.0, lam_ub=0.01),
            f"lam_ub={PRESET['lam_ub']:g} (preset)": base, "lam_ub=0.1 (closer to q)": solve(lam_sym=0.0, lam_ub=0.1)}
fig, axes = plt.subplots(1, len(variants), figsize=(3.2 * len(variants), 3))
for ax, (name, out) in zip(axes, variants.items()):
    report(name, out)
    column_mass = out["result"].scores[0].exp().sum(0).reshape(trg.grid)
    ax.imshow(column_mass, cmap="viridis")
    ax.set_title(f"{name}: max/mean {float(column_mass.max() / column_mass[column_mass > 0].mean()):.1f}", fontsize=8)
    ax.axis("off")
plt.show()'''),
    ("md", '''\
## The solver: objective per step

Each mirror-descent step multiplies $T$ by $\\exp(-\\eta\\nabla\\mathcal F)$ (plus the entropy
pull) and projects the rows back onto $p$. `return_objective=True` records the objective (with
the entropy term) after every step: with the preset it falls quickly, then flattens.'''),
    ("code", '''\
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
curves = [{**runs, **dict(list(runs_sym.items())[1:])}, {"lam_ub=0.1": variants["lam_ub=0.1 (closer to q)"]}]
for ax, group in zip(axes, curves):
    for name, out in group.items():
        objective = out["result"].extras["objective"][0]
        ax.plot(range(1, len(objective) + 1), objective, label=name)
    ax.set_xlabel("mirror-descent step")
    ax.set_ylabel("objective")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
plt.show()
final = runs[f"+ GW term (lam_gw={PRESET['lam_gw']:g})"]["result"].extras["objective"][0]
print(f"objective: step 1 {final[0]:.5f} -> step {len(final)} {final[-1]:.5f}")
strong_ub = variants["lam_ub=0.1 (closer to q)"]["result"].extras["objective"][0]
print(f"lam_ub=0.1: lowest objective at step {int(strong_ub.argmin()) + 1} of {len(strong_ub)}")'''),
]

NOTEBOOKS: Dict[str, List[Tuple[str, str]]] = {
    "quickstart.ipynb": QUICKSTART,
    "gwot_explained.ipynb": GWOT_EXPLAINED,
}


def build(cells: List[Tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell["id"] = f"cell-{i:02d}"
        nb.cells.append(cell)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def sources(nb: nbformat.NotebookNode) -> List[Tuple[str, str, str]]:
    """What ``--check`` compares: each cell's id, type and source (not its outputs)."""
    return [(c.get("id", ""), c.cell_type, c.source) for c in nb.cells]


def execute(path: Path, timeout: int = 600) -> None:
    """Run a notebook top to bottom with this interpreter's kernel and store its outputs."""
    import nbclient

    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:  # keep the file stable between runs
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)


def main(argv: List[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if check:
            if not path.is_file() or sources(nbformat.read(path, as_version=4)) != sources(
                    nbformat.reads(text, as_version=4)):
                stale.append(name)
        else:
            path.write_text(text)
            if "--execute" in argv:
                execute(path)
    if stale:
        sys.stderr.write(f"out of date: {', '.join(stale)}; run python notebooks/make_notebooks.py --execute\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
