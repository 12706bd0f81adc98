"""The import graph of `src/affectus` points one way (docs/architecture.md, "Layers").

Every import in every module, at the top or inside a function, is read from the source; an import from a
higher layer into a lower one is a concept in the wrong room and fails here with the offending lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import affectus

# Lowest first. A package may import its own layer and any layer below it, never one above.
LAYERS = (
    ("errors", "utils"),  # no affectus imports beyond each other
    ("data",),  # readers, presets, label schemes, batches
    ("features",),  # extractors and transcript encoders: training, predict and serve use them
    ("pretrained",),  # pretrained experts (text heads over MiniLM, the face model): predict, serve and, as
    # evidence (train.pretrained_experts), training use them
    ("models",),  # the registry and one file per model
    ("evaluation",),  # predict a split, metrics, subsets, results
    ("runs",),  # the run folder: write, read, checksum, the same run
    ("training",),  # config, the loop, recipes
    ("inference",),  # loading a run for prediction, the service
    ("experiments",),  # specs, the runner, sweeps
    ("report",),  # the HTML report over run folders (re-predicts with a loaded run)
    ("cli", "api", "__main__", ""),  # the doors ("" is the package's own __init__)
)
SRC = Path(affectus.__file__).parent


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package '{top}' is in no layer of tests/test_layers.py; add it")


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every affectus import in one file under `src` (the affectus package folder)."""
    module = ".".join(path.relative_to(src.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, t) for t in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in found if t == "affectus" or t.startswith("affectus.")]


def test_no_import_runs_back_up_the_layers():
    upward = []
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for line, target in _imports(path):
            if target == "affectus":
                target = "affectus.__init__"
            if _layer(target if target != "affectus.__init__" else "affectus") > _layer(module):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    assert not upward, "imports running back up the layers:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check reads imports inside functions too (where most upward imports hide)."""
    probe = tmp_path / "affectus" / "models" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from . import layers\n\n\ndef _f():\n    from affectus.training.loop import logger\n")
    found = [t for _, t in _imports(probe, tmp_path / "affectus")]
    assert found == ["affectus.models.layers", "affectus.training.loop"]
    assert _layer("affectus.training.loop") > _layer("affectus.models.probe")
