"""The package's structure: imports point one way (no cycle among semcorr modules), the group
list has one source, and a regular (non-editable) install finds its configs from any folder."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_graph(src: Path) -> Dict[str, Set[str]]:
    """semcorr module -> the semcorr modules it imports (any import statement, top-level or in a
    function; ``from pkg import name`` counts pkg, and pkg.name when that is a module)."""
    files = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] == "semcorr":
            files[".".join(parts)] = path
    graph: Dict[str, Set[str]] = {m: set() for m in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first == last), or [] when the graph has none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = module_graph(SRC)
    assert len(graph) > 50
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_library_does_not_import_the_cli():
    graph = module_graph(SRC)
    offenders = sorted(m for m, deps in graph.items()
                       if not m.startswith("semcorr.cli") and any(d.startswith("semcorr.cli") for d in deps))
    assert not offenders


def test_the_registry_is_a_leaf():
    graph = module_graph(SRC)
    assert graph["semcorr.registry"] <= {"semcorr.errors"}


@pytest.mark.slow
def test_the_pipeline_imports_no_lightning():
    """``semcorr.net`` (the whole pipeline) loads no Lightning: a fresh interpreter that imports it
    has no ``lightning`` / ``pytorch_lightning`` module afterwards, and no semcorr module it
    reaches names Lightning in an import."""
    code = ("import sys; import semcorr.net; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout[:500]
    graph = module_graph(SRC)
    reach, todo = set(), ["semcorr.net"]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo.extend(graph[m])

    def imports_lightning(module: str) -> bool:
        path = SRC / module.replace(".", "/")
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in names):
                return True
        return False

    assert len(reach) > 10 and not [m for m in sorted(reach) if imports_lightning(m)]


def test_group_list_has_one_source():
    """The group names are written once (semcorr.registry.GROUPS); nowhere else in the package."""
    literal = '"data", "backbone", "matcher", "head", "loss"'
    holders = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if literal in p.read_text()]
    assert holders == ["semcorr/registry.py"]


@pytest.mark.slow
def test_regular_install_finds_its_configs(tmp_path):
    """Build a wheel of the source tree, install it into a folder (no editable link to the
    repository) and run the console scripts from another folder."""
    if shutil.which("git") is None:
        pytest.skip("needs git to copy the tracked files")
    tree = tmp_path / "tree"
    tree.mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tree / rel)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                              str(site), *map(str, (tmp_path / "dist").glob("*.whl"))],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("SEMCORR_CONFIG_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import semcorr; print(semcorr.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the source tree

    def script(name, *args):
        return subprocess.run([str(site / "bin" / name), *args], cwd=outside, env=env,
                              capture_output=True, text=True, timeout=120)

    run = script("semcorr-eval", "--print-config", "data=pf_willow", "matcher=gwot_pf_willow")
    assert run.returncode == 0, run.stderr[-2000:]
    # the installed package prints the packaged preset's values (read here from the source tree)
    preset = yaml.safe_load((SRC / "semcorr" / "configs" / "matcher" / "gwot_pf_willow.yaml").read_text())
    assert "kind: pf_willow" in run.stdout
    for key in ("lam_gw", "lam_ub"):
        assert f"{key}: {float(preset[key])}" in run.stdout, key
    for name in ("semcorr-eval", "semcorr-train", "semcorr-match"):
        helped = script(name, "--help")
        assert helped.returncode == 0, (name, helped.stderr[-2000:])
        assert "gwot_spair" in helped.stdout and "synthetic" in helped.stdout, name
    # a user's own config folder is searched first
    mine = tmp_path / "mine" / "matcher"
    mine.mkdir(parents=True)
    (mine / "my_gwot.yaml").write_text("kind: gwot\nlam_gw: 7.5\n")
    run = script("semcorr-eval", "--print-config", "--config-dir", str(tmp_path / "mine"), "matcher=my_gwot")
    assert run.returncode == 0 and "lam_gw: 7.5" in run.stdout, run.stderr[-2000:]
