"""The core's contracts: a model brings its own recipe; label schemes; modality availability; inference
imports no training code; the trainer leaves global torch state alone; the test-label firewall."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from affectus.cli import main
from affectus.data.batches import iterate_batches
from affectus.data.missing import CONDITIONS, condition_name, parse_available, with_availability
from affectus.data.mmsa import dataset_from_raw, load_dataset, write_pickle
from affectus.data.schemes import get_scheme, infer_scheme
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from affectus.evaluation.metrics import compute_metrics
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
from affectus.training.trainer import build_model, plan_for

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}
FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("core") / "tiny.pkl"
    write_pickle(generate(SynthConfig(n_train=40, n_valid=16, n_test=16, seed=5, **TINY)), path)
    return path


# ------------------------------------------------------------------------- a toy model with its recipe


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


# ----------------------------------------------------------------------------------------- schemes


def test_categorical_scheme_metrics_by_hand():
    s = get_scheme({"name": "categorical", "classes": ["happy", "sad", "angry", "neutral"]})
    truth = np.array([0, 0, 1, 2, 3, 3])
    pred = np.array([0, 1, 1, 2, 3, 0])
    m = compute_metrics(s, logits=np.eye(4)[pred], scores=truth.astype(np.float32))
    assert m["acc"] == pytest.approx(100 * 4 / 6)
    # recalls: happy 1/2, sad 1, angry 1, neutral 1/2 -> UAR 0.75
    assert m["uar"] == pytest.approx(75.0)
    # F1: happy P 1/2 R 1/2 -> 0.5; sad P 1/2 R 1 -> 2/3; angry 1; neutral P 1 R 1/2 -> 2/3
    assert m["f1_happy"] == pytest.approx(50.0) and m["f1_sad"] == pytest.approx(200 / 3)
    assert m["f1_angry"] == pytest.approx(100.0) and m["f1_neutral"] == pytest.approx(200 / 3)
    weighted = (2 * 0.5 + 1 * 2 / 3 + 1 * 1 + 2 * 2 / 3) / 6 * 100
    assert m["f1"] == pytest.approx(weighted)
    with pytest.raises(AffectusError, match="split train row 2: label 7 is not one of the 4 classes"):
        s.check_labels(np.array([0, 1, 7]), "file f split train")


def test_sentiment_schemes_keep_the_paper_columns():
    assert [c for c, _ in get_scheme("sims").columns][:2] == ["D_test Acc2", "D_test F1"]
    assert get_scheme("mosei").name == "mosi" and get_scheme("mosi").objective == "has0_acc2"


def test_scheme_is_inferred_from_train_and_selection_splits_only():
    raw = generate(SynthConfig(n_train=20, n_valid=8, n_test=8, seed=1, **TINY))
    for split in raw.values():  # drop unimodal labels so the label range decides
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            split.pop(key)
    clean = dataset_from_raw(raw)
    raw["test"]["regression_labels"] = (raw["test"]["regression_labels"] * 3).astype(np.float32)  # poisoned
    poisoned = dataset_from_raw(raw)
    assert plan_for(clean).scheme.name == plan_for(poisoned).scheme.name == "sims"
    assert infer_scheme(np.array([-2.0, 1.0]), np.array([0.5]), False).name == "mosi"


# ------------------------------------------------------------------------------------- availability


def test_parse_available_and_conditions():
    assert parse_available("text,audio") == ("text", "audio")
    assert parse_available("l,a") == parse_available("la") == parse_available("{l,a}") == ("text", "audio")
    assert [condition_name(c) for c in CONDITIONS] == ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"]
    with pytest.raises(AffectusError, match="unknown modality 'x'"):
        parse_available("l,x")
    with pytest.raises(AffectusError, match="at least one modality"):
        parse_available("")


def test_absent_modality_is_zero_filled_with_length_zero():
    ds = dataset_from_raw(generate(SynthConfig(n_train=8, n_valid=4, n_test=4, seed=2, **TINY)))
    split = with_availability(ds["train"], ("text",))
    assert (split.audio == 0).all() and (split.audio_lengths == 0).all() and (split.vision_lengths == 0).all()
    assert np.array_equal(split.text, ds["train"].text)
    batch = next(iter(iterate_batches(split, 8)))
    assert batch.available.tolist() == [[True, False, False]] * 8
    assert ds["train"].available is None and next(iter(iterate_batches(ds["train"], 8))).availability().all()


@pytest.mark.parametrize("model_name", list_models())
def test_every_model_every_availability_mask_no_nan(model_name):
    """Forward and backward in training, forward in evaluation, under each of the 7 conditions."""
    ds = dataset_from_raw(generate(SynthConfig(n_train=12, n_valid=4, n_test=4, seed=3, **TINY)))
    fields = get_model_entry(model_name).config_cls.__dataclass_fields__
    small = {f"model.{k}": v for k, v in (("layers", 1), ("heads", 2)) if k in fields}
    cfg = resolve_config(model_name, None, None, None, small)
    torch.manual_seed(0)
    model, _ = build_model(cfg, ds, get_scheme("sims"))
    for present in CONDITIONS:
        split = with_availability(ds["train"], present)
        batch = next(iter(iterate_batches(split, 12)))
        model.train()
        out = model(batch)
        loss = out.logits.float().sum() + (0 if out.regression is None else out.regression.sum())
        loss.backward()
        assert torch.isfinite(out.logits).all(), (model_name, present)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), (model_name, present)
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(batch).logits).all(), (model_name, present)


def test_evaluate_available_gives_the_same_keys(sim_file, tmp_path, capsys):
    out = tmp_path / "lf"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--available", "l,a"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert set(full) == set(part) and set(full["d_test"]) == set(part["d_test"])
    assert main(["evaluate", str(out), "--data", str(sim_file), "--available", "l,q"]) == 2
    assert "unknown modality 'q'" in capsys.readouterr().err
    # the Python API takes the same option; absent modalities leave the explanation
    import affectus

    pred = affectus.load(out).predict(load_dataset(sim_file)["test"], available="text")
    assert pred.available[:, 1:].sum() == 0 and pred.probabilities.shape == (16, 3)


# ------------------------------------------------------------------------------------- boundaries


def test_load_imports_no_training_code_or_sklearn(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    code = ("import sys, affectus; p = affectus.load(sys.argv[1]); "
            "bad = sorted(m for m in sys.modules if m.startswith(('affectus.training', 'sklearn'))); print(bad)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_library_training_leaves_global_torch_state_alone(sim_file, tmp_path):
    import affectus

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    affectus.train(sim_file, tmp_path / "run", model="late_fusion", threads=1,
                   overrides={"train.epochs": 1, "train.batch_size": 16})
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)  # the run's seeds did not reset the caller's RNG


def test_training_set_size_one_more_than_a_batch_multiple(tmp_path):
    """N % batch == 1 used to yield an empty final batch (NaN loss): now the single sample sits out."""
    path = tmp_path / "odd.pkl"
    write_pickle(generate(SynthConfig(n_train=33, n_valid=8, n_test=8, seed=4, **TINY)), path)
    assert main(["train", "--data", str(path), "--model", "late_fusion", "--out", str(tmp_path / "r"), *FAST]) == 0


def test_every_registered_model_builds_from_its_registry_entry():
    for name in list_models():
        entry = get_model_entry(name)
        model = create_model(name, make_config(name, {"dims": TINY["dims"]}))
        assert isinstance(model, nn.Module)
        assert entry.default_variant in entry.get_variants()


def test_evaluate_with_the_authors_subset_files(sim_file, tmp_path, capsys):
    """--subsets MSC,MSI scores the subsets listed in the files; listing the computed ones reproduces them."""
    import pickle

    out = tmp_path / "lf"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    test = load_dataset(sim_file)["test"]
    msc, msi = get_scheme("sims").consistency_masks(test.labels, test.unimodal_labels)
    files = []
    for name, mask in (("msc", msc), ("msi", msi)):
        path = tmp_path / f"[test]D_{name}.pkl"
        path.write_bytes(pickle.dumps({"test": {"id": np.array([i for i, m in zip(test.ids, mask) if m], dtype=object)}}))
        files.append(str(path))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    computed = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--subsets", ",".join(files)]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert from_files["d_msc"] == computed["d_msc"] and from_files["d_msi"] == computed["d_msi"]
    # only half of D_msi listed: the subset shrinks
    Path(files[1]).write_bytes(pickle.dumps([i for i, m in zip(test.ids, msi) if m][: int(msi.sum()) // 2]))
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--subsets", ",".join(files)]) == 0
    assert json.loads(capsys.readouterr().out)["d_msi"]["n"] == int(msi.sum()) // 2


def test_epoch_lines_fit_80_columns_and_quiet_silences_them(sim_file, tmp_path, capsys):
    args = ["train", "--data", str(sim_file), "--model", "cmc", "--set", "model.layers=1", "--set", "model.heads=2",
            "--set", "train.epochs=2", "--set", "train.batch_size=16", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if "/2" in ln and "train" in ln and "val" in ln]
    assert err[0].startswith("epochs:") and "* = best (kept)" in err[0] and len(err[0]) <= 80
    assert len(lines) == 4 and {ln.split()[0] for ln in lines} == {"stage1", "stage2"}  # 2 epochs x 2 stages
    assert all(len(ln) <= 80 for ln in lines)
    # TensorBoard events were written by the trainer, per stage, with validation metrics as well as losses
    from affectus.evaluation.tensorboard import read_scalars

    tags = read_scalars(tmp_path / "a" / "tensorboard")
    assert [step for step, _ in tags["stage1/val_ce_audio"]] == [1, 2] and "stage2/train_loss" in tags
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "train" not in capsys.readouterr().err.replace("wrote", "")


def test_models_lists_a_models_config_keys(cli):
    rc, out, _ = cli("models", "cmc")
    assert rc == 0 and "model.layers = 2" in out and "recipe.plgm = true" in out and "train.lr = 0.001" in out
    rc, out, _ = cli("models", "late_fusion")
    assert rc == 0 and "recipe." not in out
    rc, out, _ = cli("models")
    assert rc == 0 and "--variant wo_pfm" in out and "late_fusion" in out


def test_evaluate_defaults_to_the_runs_own_data(sim_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "lf"
    monkeypatch.chdir(sim_file.parent)  # a relative --data is recorded as an absolute path
    assert main(["train", "--data", sim_file.name, "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["d_test"]["acc2"] == json.loads((out / "metrics.json").read_text())["d_test"]["acc2"]


def test_train_refuses_to_replace_files_it_did_not_write(sim_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 2
    assert "not an affectus run but holds config.json" in capsys.readouterr().err
    assert (out / "config.json").read_text() == '{"my": "settings"}'
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), "--overwrite", *FAST]) == 0


def test_predict_explains_every_sample_of_a_features_file(sim_file, tmp_path, capsys):
    out = tmp_path / "cmc"
    assert main(["train", "--data", str(sim_file), "--out", str(out), "--set", "model.layers=1", "--set",
                 "model.heads=2", *FAST]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(sim_file), "--split", "test", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    test = load_dataset(sim_file)["test"]
    assert [r["id"] for r in rows] == test.ids and rows[0]["transcript"] == test.raw_text[0]
    for r in rows:
        assert set(r["modalities"]) == {"text", "audio", "vision"} and r["acc2"] in ("non-positive", "positive")
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        weights = sorted(((v["weight"], m) for m, v in r["modalities"].items()), reverse=True)
        lead = weights[0][1]
        if r["modalities"][lead]["prediction"] == r["verdict"] and weights[0][0] - weights[1][0] >= 0.1:
            assert r["followed"] == lead  # the largest weight, agreeing with the verdict, by a margin
        else:
            assert r["followed"] is None
    assert main(["predict", str(out), str(sim_file), "--split", "test", "--json", "--available", "l,a"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # faithful CMC zero-fills the absent vision: it entered the verdict, and the row says so
    assert all(set(r["modalities"]) == {"text", "audio", "vision"} and "zero-filled" in r["absent"]["vision"]
               for r in rows)
    assert main(["predict", str(out), "clip.mp4"]) == 2
    assert "does not know how to extract a clip" in capsys.readouterr().err


def test_preset_help_is_generated_from_the_preset_registry():
    """A command's --preset help that names presets names every one (iemocap too), read from the presets,
    not listed by hand."""
    import typer

    from affectus.cli import app
    from affectus.data.presets import list_presets

    group = typer.main.get_command(app)
    helps = {name: p.help for name, cmd in group.commands.items() for p in cmd.params
             if "--preset" in p.opts and p.help and any(preset in p.help for preset in list_presets())}
    assert {"train", "synth"} <= set(helps)
    for name, text in helps.items():
        assert all(preset in text for preset in list_presets()), (name, text)


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


def test_api_and_cli_train_share_one_preparation(sim_file, tmp_path, monkeypatch, capsys):
    """`affectus.train` and `affectus train` open, configure and plan through `training/job.py` alone: the
    seed / device / threads shortcuts are folded in there, and win over the overrides."""
    import affectus
    from affectus.training import job

    job_seen = []
    real = job.prepare_training

    def spy(*args, **kwargs):
        job_seen.append(real(*args, **kwargs))
        raise AffectusError("stop after preparing")

    monkeypatch.setattr(job, "prepare_training", spy)
    with pytest.raises(AffectusError, match="stop after preparing"):
        affectus.train(str(sim_file), tmp_path / "api", model="late_fusion", overrides={"train.seed": 1}, seed=7)
    assert main(["train", "--data", str(sim_file), "--out", str(tmp_path / "cli"), "--model", "late_fusion",
                 "--set", "train.seed=1", "--seed", "7"]) == 2
    assert "stop after preparing" in capsys.readouterr().err
    assert [(j.cfg.model_name, j.cfg.train.seed, j.plan.train) for j in job_seen] == [("late_fusion", 7, "train")] * 2
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()
