"""Shared test fixtures: tiny raw MMSA dicts, writing them to disk, and running the CLI.

Everything here is small and generic so any test module can build the data it needs in
milliseconds; nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from affectus.data.batches import Batch
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate

SRC = str(Path(__file__).resolve().parents[1] / "src")  # for child Pythons that import this tree
# One epoch of a one-layer, one-head CMC on the small simulation: the run the failure-path tests damage.
SMALL_FAST = ["--set", "train.epochs=1", "--set", "train.patience=1", "--set", "model.layers=1", "--set",
              "model.heads=1", "--set", "train.batch_size=8", "--threads", "1", "--quiet"]
DEFAULT_DIMS = {"text": 6, "audio": 4, "vision": 5}
DEFAULT_SEQ_LENS = {"text": 5, "audio": 7, "vision": 6}
DEFAULT_SIZES = {"train": 12, "valid": 6, "test": 6}


def build_raw(
    sizes: dict[str, int] | None = None,
    dims: dict[str, int] | None = None,
    seq_lens: dict[str, int] | None = None,
    unimodal: bool = False,
    text_bert: bool = False,
    label_range: float = 3.0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A valid raw MMSA dict (`{split: {key: array}}`) with random features and padded sequences.

    Labels are multiples of 0.5 in [-label_range, label_range], so some are exactly 0 (the neutral
    class). Audio / vision lengths vary in [1, L] with zero padding after the true length.
    """
    sizes = DEFAULT_SIZES if sizes is None else sizes
    dims = {**DEFAULT_DIMS, **(dims or {})}
    seq_lens = {**DEFAULT_SEQ_LENS, **(seq_lens or {})}
    rng = np.random.default_rng(seed)
    raw: dict[str, dict[str, Any]] = {}
    for split, n in sizes.items():
        d: dict[str, Any] = {
            "id": [f"{split}vid{i // 3}_{i % 3}" for i in range(n)],
            "raw_text": [f"utterance {i} of {split}" for i in range(n)],
        }
        for m in ("text", "audio", "vision"):
            feats = rng.standard_normal((n, seq_lens[m], dims[m])).astype(np.float32)
            if m != "text":
                lengths = rng.integers(1, seq_lens[m] + 1, size=n).astype(np.int64)
                for i, ln in enumerate(lengths):
                    feats[i, ln:] = 0.0
                d[f"{m}_lengths"] = lengths
            d[m] = feats
        if text_bert:
            lt = seq_lens["text"]
            tl = rng.integers(1, lt + 1, size=n)
            mask = (np.arange(lt)[None, :] < tl[:, None]).astype(np.int64)
            ids = rng.integers(100, 2000, size=(n, lt)) * mask
            d["text_bert"] = np.stack([ids, mask, np.zeros_like(mask)], axis=1).astype(np.float64)  # as MMSA
        steps = int(2 * label_range)
        d["regression_labels"] = (rng.integers(-steps, steps + 1, size=n) / 2.0).astype(np.float32)
        if unimodal:
            for suffix in "TAV":
                d[f"regression_labels_{suffix}"] = (rng.integers(-steps, steps + 1, size=n) / 2.0).astype(
                    np.float32
                )
        d["classification_labels"] = (np.sign(d["regression_labels"]) + 1).astype(np.int64)  # ignored key
        raw[split] = d
    return raw


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run a packaged model (MiniLM, Moonshine) belong to the slow tier as well."""
    for item in items:
        if item.get_closest_marker("minilm") or item.get_closest_marker("asr"):
            item.add_marker(pytest.mark.slow)


def tiny_sim_config(**overrides: Any) -> SynthConfig:
    """The tiny CH-SIMS-like simulation the end-to-end tests train on (72/24/24 rows, unimodal labels, so
    D_msc / D_msi exist); `overrides` change single fields (`seed=4`, `with_text_bert=True`)."""
    base: dict[str, Any] = {"n_train": 72, "n_valid": 24, "n_test": 24, "seq_lens": {"text": 4, "audio": 6, "vision": 5},
                            "dims": {"text": 12, "audio": 5, "vision": 7}, "seed": 3}
    return SynthConfig(**{**base, **overrides})


# The smaller file the failure-path tests train one-epoch runs on (24/8/8 rows, 6 text features).
SMALL_SIM = SynthConfig(n_train=24, n_valid=8, n_test=8, seq_lens={"text": 4, "audio": 6, "vision": 5},
                        dims={"text": 6, "audio": 5, "vision": 7}, seed=3)


@pytest.fixture(scope="session")
def sim_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_sim_config()` written once per session as a pickle; tests read it and never write to it."""
    path = tmp_path_factory.mktemp("sim") / "tiny.pkl"
    write_pickle(generate(tiny_sim_config()), path)
    return path


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`SMALL_SIM` written once per session as a pickle; tests read it and never write to it."""
    path = tmp_path_factory.mktemp("small") / "tiny.pkl"
    write_pickle(generate(SMALL_SIM), path)
    return path


@pytest.fixture(scope="session")
def trained(tiny_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained once per session on `tiny_file` with SMALL_FAST; tests that damage a run use `run_copy`."""
    from affectus.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(tiny_file), "--out", str(out), *SMALL_FAST]) == 0
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    """A private copy of `trained` that a test may edit or break."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_error_line(rc: int, err: str, *fragments: str) -> str:
    """The failure contract: exit 2, exactly one `error:` line on stderr holding every fragment."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def make_raw() -> Callable[..., dict[str, dict[str, Any]]]:
    """The `build_raw` factory: `make_raw(sizes=..., dims=..., unimodal=True, text_bert=True)`."""
    return build_raw


@pytest.fixture
def write_raw(tmp_path: Path) -> Callable[..., Path]:
    """Write a raw dict as a pickle under tmp_path and return its path: `write_raw(raw, "x.pkl")`."""

    def _write(raw: Any, name: str = "data.pkl") -> Path:
        path = tmp_path / name
        write_pickle(raw, path)
        return path

    return _write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the `affectus` CLI in-process: `rc, out, err = cli("inspect", path, "--json")`."""
    from affectus.cli import main

    def _run(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return _run


TINY_BATCH_DIMS = {"text": 6, "audio": 3, "vision": 4}


def tiny_batch(b: int = 4, seed: int = 0, sequences: bool = False) -> Batch:
    """A hand-made Batch of up to 4 samples with awkward lengths, for model forward/backward tests.
    `sequences`: the samples are also one video's utterances, in order (`Batch.seq_*`, data/context.py), for
    models that read their video (`Capabilities.utterance_context`)."""
    g = torch.Generator().manual_seed(seed)
    batch = Batch(
        text=torch.randn(b, 5, TINY_BATCH_DIMS["text"], generator=g),
        audio=torch.randn(b, 7, TINY_BATCH_DIMS["audio"], generator=g),
        vision=torch.randn(b, 3, TINY_BATCH_DIMS["vision"], generator=g),
        text_lengths=torch.tensor([5, 3, 1, 0][:b]),  # 0 is read as 1
        audio_lengths=torch.tensor([7, 2, 4, 9][:b]),  # 9 > L is read as L
        vision_lengths=torch.tensor([3, 3, 2, 1][:b]),
        index=torch.arange(b),
        scores=torch.tensor([-1.5, 0.0, 0.6, 2.0][:b]),
        classes=torch.tensor([0, 1, 2, 2][:b]),
    )
    if not sequences:
        return batch
    seq = {}
    for m in ("text", "audio", "vision"):
        x = getattr(batch, m)
        lengths = batch.lengths(m).clamp(max=x.shape[1])
        steps = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).float()
        seq[f"seq_{m}"] = ((x * steps[..., None]).sum(1) / lengths.clamp(min=1)[:, None])[None]  # (1, B, D)
    present = torch.stack([batch.lengths(m) > 0 for m in ("text", "audio", "vision")], dim=1)  # (B, 3)
    seq["seq_text"] = seq["seq_text"] * present[None, :, 0, None]
    return replace(batch, **seq, seq_available=present[None], seq_mask=torch.ones(1, b, dtype=torch.bool),
                   seq_centre=torch.arange(b), seq_index=torch.zeros(b, dtype=torch.long))


@contextmanager
def served_on_loopback(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a daemon thread on a free loopback port; yields its base URL and
    stops the server afterwards (the browser and load tests talk to it over a real socket)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------- a tiny causal LM (mse_adapter)

_TINY_LM: list[Path] = []


def tiny_causal_lm_dir() -> Path:
    """A randomly initialised one-layer GPT-2 (width 16) with a character-level tokenizer, saved once per
    session with save_pretrained: a real Hugging Face causal-LM directory for mse_adapter, built offline
    (fixed seed, so its weights are the same every session)."""
    if _TINY_LM:
        return _TINY_LM[0]
    import atexit
    import string
    import tempfile

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="affectus-tiny-lm-"))
    atexit.register(shutil.rmtree, folder, True)
    vocab = {t: i for i, t in enumerate(["<unk>", "<bos>", "<pad>", *string.printable])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")  # one token per character
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>", pad_token="<pad>"
                            ).save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                   bos_token_id=1, eos_token_id=1)).save_pretrained(folder)
    _TINY_LM.append(folder)
    return folder


# settings a model needs to be built at all (registry-wide tests add them): mse_adapter's frozen LM
def model_needs(name: str, prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}lm_path": str(tiny_causal_lm_dir())} if name == "mse_adapter" else {}
