"""The package's import graph follows its layers (docs/architecture.md):

    errors, log, modalities, utils, presets  <  data  <  features  <  models  <  modeldir, collate
        <  train, inference  <  experiments  <  cli

Every ``import`` in ``src/giamic`` is read with ``ast``, at module level and inside functions, plus
the module names given as strings (``importlib.import_module`` targets such as the CLI's command
modules). A stage may import its own layer or a lower one only; ``train`` and ``inference`` never
import each other; ``models`` imports no other stage but the bottom layer; the stages form no cycle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "giamic"

LAYERS: dict[str, int] = {
    "errors": 0, "log": 0, "modalities": 0, "utils": 0, "version": 0, "presets": 0,
    "data": 1,
    "features": 2,
    "models": 3,
    "modeldir": 4, "collate": 4,
    "train": 5, "inference": 5,
    "experiments": 6,
    "cli": 7, "__main__": 7,
}
BOTTOM = {"errors", "log", "modalities", "utils", "version", "presets"}
_MODULE_STRING = re.compile(r"giamic(\.[A-Za-z_][A-Za-z0-9_]*)+")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def root_exports(root: Path) -> dict[str, str]:
    """``from giamic import X``: the module each name of the package's ``__init__`` comes from
    (names defined there, such as ``__version__``, belong to the bottom layer)."""
    tree = ast.parse((root / "__init__.py").read_text(encoding="utf-8"))
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("giamic."):
            for a in node.names:
                out[a.asname or a.name] = node.module
    return out


def imports_of(path: Path, module: str, root: Path) -> set[str]:
    """Every giamic module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    exports = root_exports(root)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "giamic")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "giamic":  # from giamic import GIAMIC, __version__, log, ...
                for a in node.names:
                    if (root / a.name).is_dir() or (root / f"{a.name}.py").is_file():
                        found.add(f"giamic.{a.name}")
                    else:
                        found.add(exports.get(a.name, "giamic.version"))
            elif target.split(".")[0] == "giamic":
                found.add(target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
            found.add(node.value)  # importlib.import_module targets
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package facade itself
    return parts[1]


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the giamic modules it imports (the package facade ``giamic/__init__`` left out:
    it only re-exports the model)."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        if mod == "giamic":
            continue
        graph[mod] = imports_of(path, mod, root)
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    stage_edges: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        src = stage_of(mod)
        if src not in LAYERS:
            out.append(f"{mod}: module outside the known stages {sorted(LAYERS)}")
            continue
        for t in sorted(targets):
            dst = stage_of(t)
            if dst is None or dst == src:
                continue
            if dst not in LAYERS:
                out.append(f"{mod} imports {t}: unknown stage {dst!r}")
                continue
            stage_edges.setdefault(src, set()).add(dst)
            if {src, dst} == {"train", "inference"}:
                out.append(f"{mod} imports {t}: train and inference must not import each other")
            elif src == "models" and dst not in BOTTOM:
                out.append(f"{mod} imports {t}: models may import only {sorted(BOTTOM)}")
            elif LAYERS[dst] > LAYERS[src]:
                out.append(f"{mod} imports {t}: {src} (layer {LAYERS[src]}) imports upwards into {dst} "
                           f"(layer {LAYERS[dst]})")
    for cycle in _cycles(stage_edges):
        out.append("stages import each other in a cycle: " + " -> ".join(cycle))
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of stages (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return groups


def test_the_package_follows_its_layers():
    graph = import_graph()
    assert len(graph) > 60  # the whole package was read
    assert "giamic.modeldir" in graph["giamic.inference.predictor"]  # function-level imports are seen too
    assert "giamic.experiments.commands" in graph["giamic.cli"]  # and the CLI's command modules
    problems = violations(graph)
    assert not problems, "\n".join(problems)


def test_inference_and_train_read_the_model_directory_through_the_contract():
    graph = import_graph()
    assert "giamic.modeldir" in graph["giamic.train.recipe"]
    assert "giamic.collate" in graph["giamic.train.batches"] and "giamic.collate" in graph["giamic.inference.predictor"]
    assert not any(t.startswith("giamic.train") for m, ts in graph.items() if m.startswith("giamic.inference") for t in ts)


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "giamic"
    for name, text in {"__init__.py": "from giamic.models.modeling import GIAMIC\n__version__ = '0'\n", **files}.items():
        p = pkg / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return pkg


@pytest.mark.parametrize("files, expected", [
    ({"models/a.py": "def f():\n    from giamic.data import load_dataset\n"}, "models may import only"),
    ({"models/a.py": "from giamic import __version__\nfrom giamic.errors import ConfigError\n"}, None),
    ({"inference/p.py": "from giamic.train.cv import run_cv\n"}, "train and inference must not import each other"),
    ({"train/x.py": "def f():\n    import giamic.inference.asr\n"}, "train and inference must not import each other"),
    ({"data/x.py": "from ..features import build_encoder\n"}, "imports upwards into features"),
    ({"features/x.py": "from giamic import GIAMIC\n"}, "imports upwards into models"),
    ({"modeldir.py": "MODULES = ('giamic.experiments.runner',)\n"}, "imports upwards into experiments"),
    ({"train/x.py": "from giamic.experiments import runner\n"}, "imports upwards into experiments"),
    ({"experiments/x.py": "from giamic.train.cv import run_cv\nfrom giamic.inference import Predictor\n"}, None),
    ({"modeldir.py": "from giamic.collate import pad_features\n", "collate.py": "from giamic import modeldir\n"},
     "cycle: collate -> modeldir -> collate"),
])
def test_the_checker_finds_each_kind_of_violation(tmp_path, files, expected):
    """The checker itself on small made-up packages: each rule fires, and allowed imports pass."""
    pkg = _write(tmp_path, files)
    problems = violations(import_graph(pkg))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems
