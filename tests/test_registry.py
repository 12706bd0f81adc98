"""The model registry's contracts (models/registry.py): a model brings its own recipe, no generic code
compares a model name or probes a model, capabilities follow the config, names are case-insensitive, every
registered model builds, one default model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from affectus.cli import main
from affectus.errors import AffectusError
from affectus.models.output import ModelOutput
from affectus.models.registry import (
    _REGISTRY,
    Capabilities,
    create_model,
    get_model_entry,
    list_models,
    make_config,
    register_model,
)
from affectus.training.config import resolve_config
from conftest import model_needs

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


@dataclass
class ToyConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 1, "audio": 1, "vision": 1})
    num_classes: int = 3
    hidden: int = 4


class Toy(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(sum(config.dims.values()), config.num_classes)

    def forward(self, batch) -> ModelOutput:
        pooled = torch.cat([getattr(batch, m).float().mean(1) for m in ("text", "audio", "vision")], -1)
        return ModelOutput(logits=self.proj(pooled))


@dataclass
class ToyRecipeConfig:
    label_smoothing: float = 0.0


class ToyTask:
    """Cross-entropy with label smoothing; selects the last epoch (a recipe's own rule)."""

    name = "toy"

    def __init__(self, smoothing: float):
        self.smoothing = smoothing
        self.best_state = None
        self.calls = 0

    def start_epoch(self, epoch):
        pass

    def loss(self, model, batch):
        self.calls += 1
        loss = nn.functional.cross_entropy(model(batch).logits, batch.classes, label_smoothing=self.smoothing)
        return loss, {"loss": loss.item()}

    def after_step(self, model):
        pass

    def validate(self, model):
        return {"loss": 0.0}

    def end_epoch(self, epoch, model, val):
        self.best_state = {k: v.clone() for k, v in model.state_dict().items()}
        return True

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ToyRecipe:
    config_cls = ToyRecipeConfig
    seen: ClassVar[list[float]] = []

    def train(self, ctx):
        from affectus.training.recipes.base import RecipeResult

        self.seen.append(ctx.recipe.label_smoothing)
        task = ToyTask(ctx.recipe.label_smoothing)
        loop = ctx.run_stage(1, task, ctx.optimizer())
        return RecipeResult(task.best_state, {"toy": {"epochs": loop.epoch, "steps": task.calls}})


@pytest.fixture
def toy_registered():
    register_model("toy", ToyConfig, "a toy model for the registry test", recipe=ToyRecipe(),
                   variants={"plain": {"description": "as is", "overrides": {}},
                             "smooth": {"description": "label smoothing", "overrides": {"recipe.label_smoothing": 0.2}}})(Toy)
    yield
    _REGISTRY.pop("toy", None)


def test_toy_model_with_its_own_recipe_trains_and_evaluates_through_the_cli(toy_registered, sim_file, tmp_path, capsys):
    ToyRecipe.seen.clear()
    out = tmp_path / "toy"
    assert main(["train", "--data", str(sim_file), "--model", "toy", "--variant", "smooth", "--out", str(out), *FAST]) == 0
    assert ToyRecipe.seen == [0.2]  # the variant reached the recipe's own config
    info = json.loads((out / "run.json").read_text())
    assert info["model_name"] == "toy" and info["variant"] == "smooth" and info["stages"]["toy"]["epochs"] == 2
    assert info["config"]["recipe"] == {"label_smoothing": 0.2}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["split"] == "test" and 0 <= got["acc2"] <= 100
    # unknown recipe keys are refused, with the model's own keys suggested
    assert main(["train", "--data", str(sim_file), "--model", "toy", "--out", str(tmp_path / "x"),
                 "--set", "recipe.label_smothing=0.1", *FAST]) == 2
    assert "did you mean 'recipe.label_smoothing'" in capsys.readouterr().err


def test_no_generic_code_compares_a_model_or_scheme_name():
    """Generic code reads a registry entry or a label scheme's declarations; it never compares a registered
    model's or scheme's name (or a scheme alias) as a string, tests membership in a tuple of them, or
    indexes a dict literal by a name (`{"sims": ..., "mosi": ...}[scheme.name]`)."""
    import re

    from affectus.data import schemes
    from affectus.models.registry import list_models

    src = Path(__file__).resolve().parents[1] / "src" / "affectus"
    names = sorted({*list_models(), *schemes.list_schemes(), *schemes._ALIASES}, key=len, reverse=True)
    quoted = "[\"'](?:" + "|".join(re.escape(n) for n in names) + ")[\"']"
    pattern = re.compile(rf"[!=]=\s*{quoted}|{quoted}\s*[!=]=|\b(?:not\s+)?in\s*[(\[{{][^)\]}}]*{quoted}"
                         r"|\}\[[\w.]*(?:name|family)\]")
    hits = [f"{p}:{i}: {line.strip()}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) and not line.strip().startswith("for ")]
    assert hits == []
    # the pattern finds what it is meant to find
    for bad in ('if family == "sims":', "x = {'sims': 1, 'mosi': 2}[scheme.name]", 'if name in ("cmc", "tfn"):'):
        assert pattern.search(bad), bad


def test_no_generic_code_probes_a_model():
    """What a model can do is declared on its registry entry (`Capabilities`); generic code (everything but
    the models' own files and their recipes) neither probes a model's attributes nor sniffs its config's
    fields or values (#17 item 3)."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "affectus"
    generic = {"__init__.py", "registry.py", "variants.py", "output.py"}  # the rest of models/ is the models' own
    own = {p for p in (src / "models").glob("*.py") if p.name not in generic}
    pattern = re.compile(r'(?:get|has)attr\((?:self\.)?model\b[^)]*["\']|["\'](?:num_classes|text_views|bert_path)["\']\s+in\b'
                         r'|padding["\')]*\s*==|text_input["\')]*\s*==|model\.use_router')
    hits = [f"{p}:{i}: {line.strip()}" for p in src.rglob("*.py") if p not in own and "recipes" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
    for bad in ('bert = getattr(model, "bert", None)', 'if "num_classes" in known:',
                'getattr(getattr(self.model, "config", None), "padding", "faithful") == "masked"',
                'values.get("text_input") == "bert"', 'run.config.get("model.use_router") is True'):
        assert pattern.search(bad), bad


def test_capabilities_follow_the_models_config():
    from affectus.models.registry import get_model_entry

    cmc = get_model_entry("cmc")
    assert not cmc.can({}).sequence_masks and cmc.can({"padding": "masked"}).sequence_masks
    assert cmc.can({}).router and not cmc.can({"use_router": False}).router
    assert cmc.can({"text_input": "bert"}).reads_transcripts and not cmc.can({}).reads_transcripts
    plus = get_model_entry("cmc_plus").can({"text_views": [["sentence", 384], ["file", 768]]})
    assert plus.text_views and plus.experts == ("text:sentence", "text:file", "audio", "vision")
    assert get_model_entry("tfn").can({}) == Capabilities()  # a plain classifier declares nothing else


def test_model_names_are_case_insensitive_and_suggested():
    assert get_model_entry("CMC").name == "cmc"
    with pytest.raises(AffectusError, match="did you mean 'late_fusion'"):
        get_model_entry("late_fusoin")
    with pytest.raises(AffectusError, match="did you mean 'wo_pfm'"):
        resolve_config("cmc", "wo_pfn")


def test_every_registered_model_builds_from_its_registry_entry():
    for name in list_models():
        entry = get_model_entry(name)
        model = create_model(name, make_config(name, {"dims": TINY["dims"], **model_needs(name)}))
        assert isinstance(model, nn.Module)
        assert entry.default_variant in entry.get_variants()


def test_models_lists_a_models_config_keys(cli):
    rc, out, _ = cli("models", "cmc")
    assert rc == 0 and "model.layers = 2" in out and "recipe.plgm = true" in out and "train.lr = 0.001" in out
    rc, out, _ = cli("models", "late_fusion")
    assert rc == 0 and "recipe." not in out
    rc, out, _ = cli("models")
    assert rc == 0 and "--variant wo_pfm" in out and "late_fusion" in out


def test_the_default_model_is_one_constant():
    """The model trained when none is named is `models.registry.DEFAULT_MODEL`; no default parameter or
    option elsewhere spells a registered model's name."""
    import re

    from affectus.models.registry import DEFAULT_MODEL

    src = Path(__file__).resolve().parents[1] / "src" / "affectus"
    quoted = "[\"'](?:" + "|".join(re.escape(n) for n in list_models()) + ")[\"']"
    pattern = re.compile(rf"(?::\s*str(?:\s*\|\s*None)?\s*=\s*|Option\(\s*|\bor\s+){quoted}")
    hits = [f"{p}:{i}: {line.strip()}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []
    assert resolve_config().model_name == DEFAULT_MODEL in list_models()
    for bad in ('    model: str = "cmc",', 'typer.Option("cmc", "--model")', 'resolve_config(model or "cmc")'):
        assert pattern.search(bad), bad


def test_every_model_declares_its_family_and_paper(capsys):
    """`affectus models` groups models by family and names the paper each comes from (ours excepted)."""
    from affectus.models.registry import FAMILIES

    for name in list_models():
        entry = get_model_entry(name)
        assert entry.family in FAMILIES, name
        assert entry.paper or entry.family == "ours", f"{name}: no paper"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.index("# methods of the seed papers") < out.index("\ncmc ") < out.index("# comparison baselines")
