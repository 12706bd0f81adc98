"""Research for CMC+ (issue 9): which changes make a calibrated-consensus model beat strong simple
baselines, measured honestly. One experiment per call; prints one JSON object.

    python benchmarks/explore_cmc_plus.py mosi --exp NAME [--seeds 3]
    python benchmarks/explore_cmc_plus.py sim  --exp NAME [--seeds 3] [--mislead 0.5]

Data
- mosi: the shared CMU-MOSI utterance set; train -> valid (valid both selects and is reported, as the
  `mosi-utterance` preset says). Text is either the file's text-CNN feature or a frozen MiniLM
  sentence embedding of `raw_text` (affectus.features.text, cached under --cache).
- sim: the conflict simulator, `sims` preset shapes and split sizes, sequences x `--seq-scale`,
  inconsistency 0.5; `--mislead` is `text_misleading` (1/3: the preset's default, text contradicts the
  label in 1/6 of the clips; 0.5: in a quarter). Data seed = model seed = 1..seeds. Reported: D_test
  and D_msi on `test`; valid selects.

Which labels each prototype sees (the honesty rules of the brief)
- Heads (stage 1): trained on train labels (multimodal class, or with `--targets gt` the simulator's
  unimodal train labels, as CMC-GT), early-stopped on the selection split's fixed multimodal labels.
- Consensus (stage 2) fitted on one of:
  train      stage-1 predictions on train itself (in-sample);
  oof        out-of-fold predictions on train (5 folds: heads refitted on 4/5, predict 1/5);
  valid      the selection split (only where it is not the reported split: the simulator);
  valid_cf   the selection split with 5-fold cross-fitting: each valid fold is predicted by a consensus
             fitted on the other 4 folds; the reported number is over these held-out predictions
             (on MOSI, where valid is also the reported split, this is the only honest use of valid
             labels beyond early stopping). Test labels never train, select or tune anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MOSI = ROOT.parent / "shared" / "data" / "mosi-utterance" / "mosi_utterance_trainval.pkl"
MODS = ("text", "audio", "vision")


# ---------------------------------------------------------------------------------------- data

POOL = {"mode": "masked"}


def pooled(split, m: str) -> np.ndarray:
    """Masked mean over each sample's true length: (N, L, D) -> (N, D). Padding never enters.
    With POOL["mode"] == "full" (the faithful CMC's mean): the mean over all L steps, padding included."""
    x = split.features(m)
    _n, steps, _ = x.shape
    if POOL["mode"] == "full":
        return x.mean(1)
    lens = np.clip(split.lengths(m), 1, steps)
    mask = (np.arange(steps)[None, :] < lens[:, None]).astype(np.float32)
    return (x * mask[..., None]).sum(1) / lens[:, None]


def load_mosi(text: str, cache: Path):
    from affectus.data.load import open_data

    ds, preset = open_data(str(MOSI), "mosi-utterance")
    if text in ("minilm", "minilm+file", "minilm|file"):
        f = cache / "mosi_minilm_sentence.npz"
        if not f.exists():
            from affectus.features.text import reencode_dataset, text_encoder_from_spec

            enc = reencode_dataset(ds, text_encoder_from_spec(None), text="sentence")
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(f, **{s: enc[s].text[:, 0] for s in ("train", "valid")})
        emb = np.load(f)
    feats = {}
    for s in ("train", "valid"):
        sp = ds[s]
        d = {m: pooled(sp, m) for m in MODS}
        if text == "minilm":
            d["text"] = emb[s]
        elif text == "minilm|file":  # one text branch reading both, concatenated
            d["text"] = np.concatenate([emb[s], d["text"]], axis=1)
        elif text == "minilm+file":  # MiniLM is the text branch; the file's text-CNN feature a 4th branch
            d["text_file"] = d["text"]
            d["text"] = emb[s]
        feats[s] = d
    return ds, preset, feats


def make_sim(seed: int, mislead: float, seq_scale: float, scale: float):
    from affectus.data.presets import load_preset
    from affectus.data.synthetic import generate_dataset

    ds = generate_dataset("sims", scale=scale, seq_scale=seq_scale, seed=seed, inconsistency=0.5,
                          text_misleading=mislead)
    feats = {s: {m: pooled(ds[s], m) for m in MODS} for s in ("train", "valid", "test")}
    return ds, load_preset("sims"), feats


# ------------------------------------------------------------------------------------ metrics

def score(logits: np.ndarray, split, rows: np.ndarray | None = None) -> dict:
    """Scheme metrics; with unimodal labels also D_msi (masks from the split's unimodal labels)."""
    from affectus.evaluation.metrics import compute_metrics

    rows = np.arange(len(split)) if rows is None else rows
    y = split.labels[rows]
    if split.unimodal_labels is not None:
        uni = {m: split.unimodal_labels[m][rows] for m in MODS}
        m = compute_metrics("sims", logits=logits, scores=y, unimodal_scores=uni)
        return {"d_test_acc2": m["d_test"]["acc2"], "d_test_f1": m["d_test"]["f1"],
                "d_msi_acc2": m["d_msi"]["acc2"], "d_msc_acc2": m["d_msc"]["acc2"], "acc3": m["d_test"]["acc3"]}
    m = compute_metrics("mosi", logits=logits, scores=y)
    return {k: m[k] for k in ("has0_acc2", "has0_f1", "non0_acc2", "acc3")}


def classes(labels: np.ndarray) -> np.ndarray:
    from affectus.data.types import to_classes

    return to_classes(labels)


# ------------------------------------------------------------------------------ stage 1: heads

class Head(nn.Module):
    """Standardised pooled features -> MLP (or linear) -> 3-class logits. Standardisation uses the
    training rows' statistics (BatchNorm's job in LF-DNN, fixed here so eval equals train)."""

    def __init__(self, dim: int, hidden: int, dropout: float, in_dropout: float) -> None:
        super().__init__()
        self.net = (nn.Sequential(nn.Dropout(in_dropout), nn.Linear(dim, 3)) if hidden == 0 else
                    nn.Sequential(nn.Dropout(in_dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_head(xtr, ytr, xsel, ysel, seed: int, hidden=64, dropout=0.3, in_dropout=0.1, wd=1e-3, lr=1e-3,
             epochs=150, patience=15, batch=64, label_smoothing=0.0):
    """Train one unimodal head; keep the epoch with the lowest CE on the selection rows (fixed labels).
    Returns predict(x) -> logits (numpy)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    norm = lambda x: torch.as_tensor((x - mu) / sd, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Head(xtr.shape[1], hidden, dropout, in_dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    xt, yt = norm(xtr), torch.as_tensor(ytr)
    xs, ys = norm(xsel), torch.as_tensor(ysel)
    best, best_state, bad = float("inf"), None, 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            ce = F.cross_entropy(model(xs), ys).item()
        if ce < best - 1e-4:
            best, best_state, bad = ce, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()

    def predict(x):
        with torch.no_grad():
            return model(norm(x)).numpy()
    return predict


# ------------------------------------------------------------------------- stage 2: consensus

def log_probs(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    return torch.log_softmax(torch.as_tensor(z / t, dtype=torch.float32), -1).numpy()


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling: the T minimising NLL of softmax(z / T) on the fitting rows."""
    zt, yt = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 121))
    nll = [F.cross_entropy(zt / t, yt).item() for t in grid]
    return float(grid[int(np.argmin(nll))])


def evidence(lp: np.ndarray) -> np.ndarray:
    """Per-sample evidence for the router from calibrated log-probs lp (N, K, 3): the log-probs, each
    modality's entropy, and each pair's agreement sum_c p_i p_j -> (N, 3K + K + K(K-1)/2)."""
    p = np.exp(lp)
    ent = -(p * lp).sum(-1)  # (N, K)
    k = lp.shape[1]
    agree = [(p[:, i] * p[:, j]).sum(-1) for i in range(k) for j in range(i + 1, k)]
    return np.concatenate([lp.reshape(len(lp), -1), ent, np.stack(agree, 1)], 1).astype(np.float32)


class EvidenceRouter(nn.Module):
    """w = softmax(MLP(evidence)) (N, K); final = sum_k w_k * scale_k * lp_k + b. With hidden = 0 the
    weights are global (one learned weight per modality: a log-linear pool, i.e. stacking)."""

    def __init__(self, k: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, k)) if hidden else None
        self.global_w = nn.Parameter(torch.zeros(k))
        self.scale = nn.Parameter(torch.ones(k) * k)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, lp: torch.Tensor, ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits_w = self.global_w.expand(len(lp), -1)
        if self.mlp is not None:
            logits_w = logits_w + self.mlp(ev)
        w = torch.softmax(logits_w, -1) * self.scale  # (N, K): the effective weight of each modality
        return (w[..., None] * lp).sum(1) + self.bias, w


def fit_router(lp: np.ndarray, y: np.ndarray, seed: int, hidden: int, moddrop: float, wd: float = 1e-2,
               steps: int = 300, aux2: float = 0.0, y2: np.ndarray | None = None):
    """Full-batch Adam on CE. Modality dropout: each sample hides one modality with prob `moddrop`
    (its log-probs become uniform), so the consensus must work from the other two. aux2 > 0 adds the
    scheme's Acc2 rule as a loss: BCE on logit_pos - logit_neg against the binary truth y2 (where the
    neutral class belongs differs: MOSI Has0 counts it non-negative, CH-SIMS non-positive)."""
    torch.manual_seed(seed)
    k = lp.shape[1]
    r = EvidenceRouter(k, evidence(lp[:1]).shape[1], hidden)
    opt = torch.optim.Adam(r.parameters(), lr=0.02, weight_decay=0.0)
    lpt, yt = torch.as_tensor(lp), torch.as_tensor(y)
    y2t = None if y2 is None else torch.as_tensor(y2, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    uniform = float(np.log(1 / 3))
    for _ in range(steps):
        x = lpt
        if moddrop > 0:
            hide = (torch.rand(len(x), generator=g) < moddrop)
            which = torch.randint(0, k, (len(x),), generator=g)
            m = torch.zeros(len(x), k, dtype=torch.bool)
            m[hide, which[hide]] = True
            x = torch.where(m[..., None], torch.full_like(x, uniform), x)
        ev = torch.as_tensor(evidence(x.numpy()))
        out, _ = r(x, ev)
        loss = F.cross_entropy(out, yt) + wd * sum((p ** 2).sum() for n, p in r.named_parameters() if "mlp" in n)
        if aux2 > 0:
            loss = loss + aux2 * F.binary_cross_entropy_with_logits(out[:, 2] - out[:, 0], y2t)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(lp_new):
        with torch.no_grad():
            x = torch.as_tensor(lp_new)
            out, w = r(x, torch.as_tensor(evidence(lp_new)))
            return out.numpy(), w.numpy()
    return predict


def consensus(kind: str, zfit: np.ndarray, yfit: np.ndarray, seed: int, moddrop: float, aux2: float = 0.0,
              neutral_positive: bool = True):
    """Fit a consensus on per-modality logits zfit (N, K, 3); returns predict(z) -> (logits, weights)."""
    k = zfit.shape[1]
    temps = [fit_temperature(zfit[:, i], yfit) for i in range(k)] if kind != "mean" else [1.0] * k
    cal = lambda z: np.stack([log_probs(z[:, i], temps[i]) for i in range(k)], 1)
    if kind in ("mean", "ts_sum"):
        def predict(z):
            lp = cal(z) if kind == "ts_sum" else z
            return lp.sum(1), np.full((len(z), k), 1 / k)
        return predict, temps
    hidden = {"global": 0, "router": 16}[kind]
    y2 = (yfit >= 1) if neutral_positive else (yfit == 2)
    r = fit_router(cal(zfit), yfit, seed, hidden, moddrop, aux2=aux2, y2=y2)
    return (lambda z: r(cal(z))), temps


# ---------------------------------------------------------------------------------- prototype

def heads_predict(feats_tr, ytr, feats_sel, ysel, targets_tr, seed, hp, mods=MODS):
    """Fit one head per modality; returns predict(feats) -> (N, K, 3)."""
    preds = []
    for i, m in enumerate(mods):
        yt = ytr if targets_tr is None else targets_tr[m]
        preds.append(fit_head(feats_tr[m], yt, feats_sel[m], ysel, seed + 17 * i, **hp.get(m, hp["all"])))
    return lambda f: np.stack([p(f[m]) for p, m in zip(preds, mods)], 1)  # (N, K, 3)


def run_cmc_plus(args, feats, ds, plan_eval: str, seed: int) -> dict:
    tr, sel = feats["train"], feats["valid"]
    ytr, ysel = classes(ds["train"].labels), classes(ds["valid"].labels)
    uni = None
    if args.targets == "gt":
        uni = {m: classes(ds["train"].unimodal_labels[m]) for m in MODS}
    hp = {"all": {"hidden": args.hidden, "dropout": args.dropout, "in_dropout": args.in_dropout, "wd": args.wd,
                      "lr": args.lr, "label_smoothing": args.smooth}}
    mods = tuple(m for m in (*MODS, "text_file") if m in tr and m in args.branches.split(","))
    heads = heads_predict(tr, ytr, sel, ysel, uni, seed, hp, mods)
    ev_split = ds[plan_eval]
    npos = ev_split.unimodal_labels is None  # Acc2 truth: MOSI Has0 (neutral >= 0) vs CH-SIMS (neutral <= 0)
    z_eval = heads(feats[plan_eval])
    out = {"heads": {m: score(z_eval[:, i], ev_split) for i, m in enumerate(mods)}}
    t0 = time.perf_counter()
    if args.fit == "valid_cf":
        assert plan_eval == "valid"
        z_sel = heads(sel)
        n = len(ysel)
        rng = np.random.default_rng(seed)
        folds = np.array_split(rng.permutation(n), 5)
        logits = np.zeros((n, 3), np.float32)
        weights = np.zeros((n, len(mods)), np.float32)
        for f in folds:
            fit_rows = np.setdiff1d(np.arange(n), f)
            pred, _ = consensus(args.consensus, z_sel[fit_rows], ysel[fit_rows], seed, args.moddrop, args.aux2, npos)
            logits[f], weights[f] = pred(z_sel[f])
        out["final"] = score(logits, ev_split)
        out["router_mean"] = weights.mean(0).round(3).tolist()
        return out
    if args.fit == "train":
        zfit, yfit = heads(tr), ytr
    elif args.fit == "valid":
        assert plan_eval != "valid", "valid is the reported split here: use valid_cf"
        zfit, yfit = heads(sel), ysel
    elif args.fit == "oof":
        n = len(ytr)
        rng = np.random.default_rng(seed)
        zfit = np.zeros((n, len(mods), 3), np.float32)
        for f in np.array_split(rng.permutation(n), 5):
            rows = np.setdiff1d(np.arange(n), f)
            sub = {m: tr[m][rows] for m in mods}
            u = None if uni is None else {m: uni[m][rows] for m in mods}
            h = heads_predict(sub, ytr[rows], sel, ysel, u, seed, hp, mods)
            zfit[f] = h({m: tr[m][f] for m in mods})
        yfit = ytr
    else:
        raise SystemExit(f"unknown --fit {args.fit}")
    pred, temps = consensus(args.consensus, zfit, yfit, seed, args.moddrop, args.aux2, npos)
    logits, w = pred(z_eval)
    out["final"] = score(logits, ev_split)
    out["temperatures"] = [round(t, 3) for t in temps]
    out["router_mean"] = w.mean(0).round(3).tolist()
    if ev_split.unimodal_labels is not None:  # router weights where text contradicts the label vs consistent
        yc = classes(ev_split.labels)
        text_wrong = classes(ev_split.unimodal_labels["text"]) != yc
        out["router_text_weight"] = {"text_contradicts": round(float(w[text_wrong, 0].mean()), 3),
                                     "text_agrees": round(float(w[~text_wrong, 0].mean()), 3)}
        pred = logits.argmax(1)
        out["by_group"] = {g: {"n": int(rows.sum()), "weights": w[rows].mean(0).round(3).tolist(),
                               "acc3": round(100 * float((pred[rows] == yc[rows]).mean()), 2)}
                           for g, rows in (("text_contradicts", text_wrong), ("text_agrees", ~text_wrong))}
    out["consensus_s"] = round(time.perf_counter() - t0, 1)
    return out


# ---------------------------------------------------------------------------------- baselines

# the --text choices as the trainer's text inputs, and the logreg --mods names as the linear model's views
TEXT_INPUTS = {"file": "file", "minilm": "sentence", "minilm|file": "sentence+file", "minilm+file": "sentence+file"}


def logreg_views(text: str, mods: list[str]) -> str:
    """--mods as `model.views` of the registered `linear` model: with minilm+file the text branch is the
    transcript view and text_file the file's view; with minilm|file, text is both views concatenated."""
    names = {"text": "text:transcript" if text == "minilm+file" else "text", "text_file": "text:file"}
    return "[" + ",".join(names.get(m, m) for m in mods) + "]"


def run_affectus_model(ds, preset, plan, model: str, variant, seed: int, sets: list[str], threads: int) -> dict:
    """A registered model trained by affectus's own trainer (faithful CMC, LF-DNN)."""
    from affectus.training.config import parse_set, resolve_config
    from affectus.training.trainer import train_run

    overrides = {**parse_set(sets), "train.seed": seed, "train.threads": threads}
    cfg = resolve_config(model, variant, preset, None, overrides)
    with tempfile.TemporaryDirectory(prefix="explore-cmcplus-") as d:
        m = train_run(ds, cfg, Path(d) / "run", plan)
    if "d_test" in m:
        return {"final": {"d_test_acc2": m["d_test"]["acc2"], "d_test_f1": m["d_test"]["f1"],
                          "d_msi_acc2": m["d_msi"]["acc2"], "d_msc_acc2": m["d_msc"]["acc2"],
                          "acc3": m["d_test"]["acc3"]}}
    return {"final": {k: m[k] for k in ("has0_acc2", "has0_f1", "non0_acc2", "acc3")}}


# --------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", choices=("mosi", "sim"))
    ap.add_argument("--exp", required=True, help="label for the table")
    ap.add_argument("--method", default="cmc_plus", choices=("cmc_plus", "logreg", "affectus"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--text", default="file", choices=("file", "minilm", "minilm+file", "minilm|file"), help="mosi text input")
    ap.add_argument("--mods", default="text,audio,vision", help="logreg: modalities to concatenate (masked pooling)")
    ap.add_argument("--task", default="binary", choices=("binary", "3class"), help="logreg target")
    ap.add_argument("--model", default="cmc", help="affectus: registered model")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--mislead", type=float, default=1 / 3, help="sim: text_misleading")
    ap.add_argument("--seq-scale", type=float, default=0.25)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--branches", default="text,audio,vision,text_file",
                    help="cmc_plus: branches to use (text_file exists with --text minilm+file)")
    ap.add_argument("--targets", default="multimodal", choices=("multimodal", "gt"))
    ap.add_argument("--fit", default="oof", choices=("train", "oof", "valid", "valid_cf"))
    ap.add_argument("--consensus", default="router", choices=("mean", "ts_sum", "global", "router"))
    ap.add_argument("--moddrop", type=float, default=0.0)
    ap.add_argument("--aux2", type=float, default=0.0, help="consensus: weight of the Acc2-rule BCE")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--in-dropout", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--smooth", type=float, default=0.0)
    ap.add_argument("--pool", default="masked", choices=("masked", "full"), help="mean over true steps or all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/cmcplus")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    POOL["mode"] = args.pool
    from affectus.training.trainer import plan_for
    from affectus.utils.threads import enable_flush_denormal

    enable_flush_denormal()
    runs = []
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        if args.data == "mosi":
            if seed == 1:
                ds, preset, feats = load_mosi(args.text, Path(args.cache))
        else:
            ds, preset, feats = make_sim(seed, args.mislead, args.seq_scale, args.scale)
        plan = plan_for(ds, preset)
        ts = time.perf_counter()
        if args.method == "cmc_plus":
            r = run_cmc_plus(args, feats, ds, plan.eval, seed)
        else:
            # the registered models read the text the trainer makes from --text (the preset's inputs: block
            # would otherwise decide); logreg is the registered `linear` model
            sets = ([f"train.text_inputs={TEXT_INPUTS[args.text]}"] if args.data == "mosi" else []) + args.sets
            model, variant = args.model, args.variant
            if args.method == "logreg":
                model, variant = "linear", "linear_acc2" if args.task == "binary" else "linear"
                sets = sets + [f"model.views={logreg_views(args.text, args.mods.split(','))}", "recipe.max_iter=3000"]
            r = run_affectus_model(ds, preset, plan, model, variant, seed, sets, args.threads)
        r["seed"], r["seconds"] = seed, round(time.perf_counter() - ts, 1)
        runs.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    keys = list(runs[0]["final"])
    agg = {k: {"mean": round(statistics.mean(r["final"][k] for r in runs), 2),
               "std": round(statistics.stdev(r["final"][k] for r in runs), 2) if len(runs) > 1 else 0.0}
           for k in keys}
    print(json.dumps({"exp": args.exp, "argv": sys.argv[1:], "data": args.data, "eval_split":
                      "valid" if args.data == "mosi" else "test", "mean_std": agg,
                      "wall_s": round(time.perf_counter() - t0, 1), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
