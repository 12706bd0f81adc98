"""CMC+'s recipe (docs/cmc_plus.md): independent experts, temperature scaling, then the evidence router.

Stage 1, experts: each expert (models/cmc_plus.py) trains alone on its modality's pooled inputs, on the
multimodal class (or, with `targets=ground_truth`, its modality's own labels from the training split),
and keeps the epoch with the lowest cross-entropy against the selection split's *fixed* multimodal
labels. Experts share no parameters, so they train side by side in one loop with one optimiser
(AdamW is per-parameter: the same as training them one by one) while each keeps its own best epoch.

Stage 2, consensus: the rows the temperatures and the router are fitted on (`consensus_fit`):
- `oof` (default): out-of-fold expert predictions on the training split. Experts refitted on 4/5 of
  train predict the other 1/5; the final experts are the ones fitted on all of train. No label beyond
  train's and the experts' early stopping is read.
- `select`: the selection split's predictions and labels. For data whose training features encode
  their training labels (the shared MOSI utterance set: its extractors were trained on train), where
  no train-side fit can tell which expert generalises. On a preset whose selection split is also the
  reported one, the run's own scores on it are then in-sample for the consensus (run.json says so);
  `benchmarks/bench_cmc_plus.py` cross-fits instead.
- `train`: in-sample predictions on train (an ablation: over-confident where features leak).

The fallback (`fallback`, after the consensus's fitting rows are known): the consensus may lose to its own
best expert on unseen videos (issue 16: on held-out CMU-MOSI videos it scored below a logistic regression on
the MiniLM transcript vectors). So the verdict is (1 - lambda) * consensus + lambda * (best expert alone, with
its own scale and bias), and `fallback=cv` picks lambda in {0, 1/4, 1/2, 3/4, 1} by cross-fitting over the
fitting rows with folds grouped by video (`video_groups`: clips of one video are correlated): every fold's
consensus, and every single expert, are fitted on the other folds and scored on it by the router's own loss.
The best expert is the one of lowest held-out loss; lambda starts at 1 (the simpler model) and moves to a
smaller one only where that lowers the held-out loss by more than `fallback_margin` standard errors of the
per-video paired difference. The choice and every candidate's held-out loss and Acc2 go to run.json
(`stages.consensus.fallback`). `fallback=none` is the consensus alone (CMC+ before the fallback);
`fallback=expert` the best expert alone. Only the fitting rows' labels are read.

Training inputs are pooled once (the experts read utterance vectors), so the whole recipe runs on
in-memory tensors. Every expert fit is a task of the generic loop (`ExpertsTask` in `training/loop.py`'s
`run_loop`) and a stage of its own for resume: stage 1 fits the experts on all of train, stage 1 + f the
experts of cross-fitting fold f. Each epoch's resume state carries what the later stages need from the
earlier ones (the final experts, stage 1's summary, the out-of-fold logits so far), so an interrupted run
resumes inside the fit it was in. The consensus (temperatures, router, fallback) takes seconds and has no
resume state of its own: interrupted there, a run resumes after the last expert fit (docs/cmc_plus.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.missing import hide_one_modality
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.training.loop import logger, run_loop
from affectus.training.recipes.base import RecipeContext, RecipeResult

_CHOICES = {"targets": ("multimodal", "ground_truth"), "consensus_fit": ("oof", "select", "train"),
            "fallback": ("cv", "none", "expert")}
_SHRINK = (0.0, 0.25, 0.5, 0.75, 1.0)  # the lambdas `fallback=cv` chooses from (0: consensus, 1: best expert)
_TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(50.0), 121))  # the temperature-scaling grid
# Small data (issue 21: 40 clips): out-of-fold logits that happen to separate a few fitting rows drive the
# NLL's minimum to the grid's sharpest T, and probabilities print 1.0 / 0.0. A floor bounds the sharpening
# (T >= 0.25: at most 4x the expert's own logits), and a log-normal prior on T centred on 1, worth 30 rows
# of evidence (it weighs 30/n against the mean NLL of n rows), pulls a fit on a few dozen rows towards T = 1
# while leaving one on hundreds of rows to the data (tests/test_ready.py shows both).
TEMPERATURE_FLOOR = 0.25
TEMPERATURE_PRIOR_ROWS = 30
# resume stages (module docstring): the experts on all of train; cross-fitting fold f is EXPERTS_STAGE + f
EXPERTS_STAGE = 1


@dataclass
class CMCPlusRecipeConfig:
    # a saved config without these keys was trained before they existed, i.e. with this behaviour
    # (training/config.py `_section`): a run from before the fallback is the consensus alone, so an
    # experiment does not count it as a run of today's default
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"fallback": "none"}
    # train.* keys this recipe does not read, and what it reads instead: setting one says so (training/config.py)
    REPLACES: ClassVar[dict[str, str]] = {"train.epochs": "recipe.expert_epochs",
                                          "train.patience": "recipe.expert_patience"}

    targets: str = "multimodal"  # what experts learn: multimodal | ground_truth (unimodal labels, train split only)
    expert_epochs: int = 150
    expert_patience: int = 15  # epochs without a lower validation CE before an expert's best epoch is final
    expert_weight_decay: float = 1e-3  # AdamW; the learning rate and batch size are train.lr / train.batch_size
    consensus_fit: str = "oof"  # oof | select | train (module docstring)
    folds: int = 5  # for consensus_fit=oof
    calibrate: bool = True  # temperature scaling per expert; False: T = 1
    router_steps: int = 300  # full-batch Adam steps on the fitting rows
    router_lr: float = 0.02
    router_weight_decay: float = 1e-2  # L2 on the evidence MLP
    # weight of the label scheme's Acc2 rule as a loss on the verdict: BCE on logit_pos - logit_neg against
    # the binary truth, so the neutral class lands on the scheme's side of the cut (0: off; no effect on
    # schemes without an Acc2 rule)
    acc2_loss: float = 1.0
    # learn the verdict's class bias b on the fitting rows; False keeps b = 0, so the class prior is the
    # experts' (the training split's), not that of the fitting rows (with `select`: the selection split's)
    fit_bias: bool = True
    # while fitting the router, each sample hides one expert's modality with this probability
    modality_dropout: float = 0.0
    # the fallback to the best single expert (module docstring): cv (lambda chosen on held-out videos of
    # the fitting rows) | none (the consensus alone: CMC+ before the fallback) | expert (the best expert alone)
    fallback: str = "cv"
    fallback_folds: int = 5  # inner folds over the fitting rows' videos
    # a larger lambda is kept unless a smaller one lowers the held-out loss by more than this many standard
    # errors of the per-video paired difference: the simpler model wins unless the consensus clearly helps
    fallback_margin: float = 1.0

    def validate(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise SettingError(f"recipe.{key}", getattr(self, key), f"one of {', '.join(allowed)}")
        for key in ("expert_epochs", "expert_patience", "router_steps"):
            if getattr(self, key) < 1:
                raise SettingError(f"recipe.{key}", getattr(self, key), "at least 1")
        if self.folds < 2:
            raise SettingError("recipe.folds", self.folds, "at least 2")
        if self.fallback_folds < 2:
            raise SettingError("recipe.fallback_folds", self.fallback_folds, "at least 2")
        if not (np.isfinite(self.fallback_margin) and self.fallback_margin >= 0):
            raise SettingError("recipe.fallback_margin", self.fallback_margin, "a finite number >= 0")
        for key in ("expert_weight_decay", "router_lr", "router_weight_decay", "acc2_loss"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value >= 0):
                raise SettingError(f"recipe.{key}", value, "a finite number >= 0")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise SettingError("recipe.modality_dropout", self.modality_dropout, "a value in [0, 1)")


@dataclass
class _Inputs:
    """Pooled expert inputs of some rows: a whole split, or one training batch of the experts' loop (which
    needs `.to(device)` and `len()` of a batch)."""

    x: list[torch.Tensor]  # per expert (N, D_k)
    y: torch.Tensor  # (N,) multimodal class
    targets: torch.Tensor  # (N, K) what each expert learns

    def rows(self, idx: torch.Tensor) -> _Inputs:
        return _Inputs([v[idx] for v in self.x], self.y[idx], self.targets[idx])

    def to(self, device) -> _Inputs:
        return _Inputs([v.to(device) for v in self.x], self.y.to(device), self.targets.to(device))

    def __len__(self) -> int:
        return len(self.y)


class ExpertsTask:
    """Stage 1 as a task of the generic loop: every expert trains on `train` (the sum of the experts' CEs
    against their own targets: they share no parameters, so one AdamW over all of them is the same as
    training them one by one), and each keeps its epoch of lowest CE on `select`'s fixed multimodal labels.

    Per-expert early stopping: an expert that has waited `patience` epochs without a lower CE (by more
    than 1e-4) is final; it may keep moving with the others, its best state does not. `end_epoch` reports
    an improvement when any expert that is not final improved, so the loop's own patience counter (epochs
    since the last improvement) reaches `patience` exactly when every expert has waited `patience`: the
    loop ends the stage where CMC+'s own loop did.

    The shuffling generator and dropout's torch seed are set once per fit (as CMC+ always did, so the
    numbers did not move when the loop became generic); the task's resume state carries both generators'
    states, so a resumed fit draws what an uninterrupted one would."""

    name = "experts"

    def __init__(self, experts: torch.nn.ModuleList, names: list[str], train: _Inputs, select: _Inputs,
                 batch_size: int, patience: int, rng: np.random.Generator, device: torch.device) -> None:
        self.names, self.train, self.select = names, train, select
        self.batch_size, self.patience, self.rng, self.device = batch_size, patience, rng, device
        k = len(experts)
        self.best = [float("inf")] * k
        self.best_epoch = [0] * k
        self.best_state = [copy.deepcopy(e.state_dict()) for e in experts]
        self.waited = [0] * k

    def batches(self, epoch: int):
        """The loop's `batches`: the training rows in a fresh random order, `batch_size` at a time."""
        n = len(self.train)
        order = torch.from_numpy(self.rng.permutation(n)).to(self.device)
        for start in range(0, n, self.batch_size):
            yield self.train.rows(order[start:start + self.batch_size])

    def start_epoch(self, epoch: int) -> None:
        pass

    def loss(self, experts, batch: _Inputs):
        loss = sum(F.cross_entropy(e(x), batch.targets[:, j]) for j, (e, x) in enumerate(zip(experts, batch.x)))
        return loss, {"loss": loss.detach() / len(experts)}  # the experts' mean CE

    def after_step(self, experts) -> None:
        pass

    def validate(self, experts) -> dict[str, float]:
        # stacked: one device sync for all experts
        ce = torch.stack([F.cross_entropy(e(x), self.select.y) for e, x in zip(experts, self.select.x)])
        return dict(zip(self.names, ce.tolist()))

    def end_epoch(self, epoch: int, experts, val: dict[str, float]) -> bool:
        improved = False
        for j, name in enumerate(self.names):
            if self.waited[j] >= self.patience:
                continue  # this expert's best epoch is final; it may keep moving, its best state does not
            if val[name] < self.best[j] - 1e-4:
                self.best[j], self.best_epoch[j], self.waited[j], improved = val[name], epoch, 0, True
                self.best_state[j] = copy.deepcopy(experts[j].state_dict())
            else:
                self.waited[j] += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "best_epoch": list(self.best_epoch), "best_state": self.best_state,
                "waited": list(self.waited), "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.waited = list(state["best"]), list(state["best_epoch"]), list(state["waited"])
        self.best_state = [{k: v.to(self.device) for k, v in s.items()} for s in state["best_state"]]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


class CMCPlusRecipe:
    config_cls = CMCPlusRecipeConfig

    @staticmethod
    def needs_unimodal_labels(rc: CMCPlusRecipeConfig) -> bool:
        return rc.targets == "ground_truth"

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model, tc = ctx.recipe, ctx.model, ctx.train
        train, select = self._inputs(ctx, ctx.train_split, rc.targets), self._inputs(ctx, ctx.select_split, None)
        for k, expert in enumerate(model.experts):  # standardisation: the training split's statistics
            expert.mean.copy_(train.x[k].mean(0))
            expert.std.copy_(train.x[k].std(0, unbiased=False) + 1e-6)
        initial = copy.deepcopy(model.experts.state_dict())

        # ---- stage 1: the experts, on all of train (resumed, or done before the fold being resumed) ----
        resumed = ctx.saved.get("stage", 0) if ctx.saved is not None else 0
        if resumed <= EXPERTS_STAGE:
            experts_summary = self._fit_experts(ctx, train, select, fold=0)
            final_experts = copy.deepcopy(model.experts.state_dict())
        else:
            experts_summary, final_experts = ctx.saved["experts_summary"], ctx.saved["final_experts"]
        names = model.names
        logger.info("experts: best epochs " + ", ".join(f"{n} {e}" for n, e in
                                                        zip(names, experts_summary["best_epoch"])))

        # ---- the consensus's fitting rows ----
        if rc.consensus_fit == "oof":
            n = len(train.y)
            order = torch.from_numpy(np.random.default_rng([tc.seed, 4242]).permutation(n))
            z_fit = torch.zeros(n, len(names), ctx.scheme.num_classes, device=ctx.device)
            if resumed > EXPERTS_STAGE:  # the folds finished before the interruption
                z_fit.copy_(ctx.saved["z_fit"])
            for f, held in enumerate(torch.tensor_split(order, rc.folds), start=1):
                if EXPERTS_STAGE + f < resumed:
                    continue  # its held-out rows are in z_fit already
                keep = torch.from_numpy(np.setdiff1d(np.arange(n), held.numpy())).to(ctx.device)
                held = held.to(ctx.device)
                model.experts.load_state_dict(initial)
                # what the later stages need from the earlier ones, saved with every epoch of this fold
                extra = {"experts_summary": experts_summary, "final_experts": final_experts, "z_fit": z_fit}
                self._fit_experts(ctx, train.rows(keep), select, fold=f, extra=extra)
                z_fit[held] = self._logits(model, train.rows(held))
            model.experts.load_state_dict(final_experts)
            y_fit = train.y
        else:
            fit = select if rc.consensus_fit == "select" else train
            z_fit, y_fit = self._logits(model, fit), fit.y

        fit_split = ctx.select_split if rc.consensus_fit == "select" else ctx.train_split
        groups = video_groups(fit_split.ids)

        # ---- the fallback: lambda and the best expert, on held-out videos of the fitting rows ----
        router0 = copy.deepcopy(model.router.state_dict())
        fallback = self._choose_fallback(ctx, z_fit, y_fit, groups, router0) if rc.fallback != "none" else None

        # ---- stage 2: temperatures, then the router (and the solo expert the fallback leans on) ----
        if fallback is not None and fallback["shrink"] > 0:
            best = names.index(fallback["expert"])
            self._fit_consensus(ctx, z_fit, y_fit, _only(len(names), best, ctx.device), router0)
            solo_w, solo_b = self._solo(model, best)
        temps, router_summary = self._fit_consensus(ctx, z_fit, y_fit, None, router0)
        if fallback is not None and fallback["shrink"] > 0:
            model.solo_weights.copy_(solo_w)
            model.solo_bias.copy_(solo_b)
            model.shrink.fill_(fallback["shrink"])
            fallback["solo_weight"], fallback["solo_bias"] = round(float(solo_w.sum()), 4), \
                [round(float(v), 4) for v in solo_b]
        summary = {
            "experts": {"names": names, **experts_summary},
            "consensus": {"fit": rc.consensus_fit, "rows": len(y_fit),
                          "temperatures": dict(zip(names, [round(t, 4) for t in temps])), **router_summary,
                          "fallback": fallback if fallback is not None else {"mode": "none", "shrink": 0.0}},
        }
        if rc.consensus_fit == "select":
            summary["consensus"]["note"] = (f"temperatures and router fitted on split '{ctx.select_split.name}' "
                                            f"labels: scores on that split are in-sample for the consensus")
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # what learned from which split, beyond the experts' weights and early stopping (run.json `fitted_on`)
        where = "select" if rc.consensus_fit == "select" else "train"
        fitted = {"scaler": "train", "temperatures": where if rc.calibrate else None,
                  "consensus": where if model.config.use_router else None,
                  # lambda, the expert chosen and its scale and bias: fitted on the same rows as the consensus
                  "fallback": where if rc.fallback != "none" else None}
        return RecipeResult(state, summary, fitted_on=fitted)

    # -- pieces ---------------------------------------------------------------------------------------
    @staticmethod
    def _inputs(ctx: RecipeContext, split, targets: str | None) -> _Inputs:
        """Pooled expert inputs for a whole split (in split order) with its classes and expert targets."""
        model, scheme = ctx.model, ctx.scheme
        parts: list[list[torch.Tensor]] = []
        model.eval()
        with torch.no_grad():
            for batch in ctx.eval_batches(split)():
                parts.append(model.pooled(batch.to(ctx.device)))
        x = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        y = torch.from_numpy(scheme.to_classes(split.labels)).long().to(ctx.device)
        modality = model.modality.cpu().tolist()
        if targets == "ground_truth":
            if split.unimodal_labels is None:
                raise AffectusError("recipe.targets=ground_truth needs unimodal labels (regression_labels_T/A/V) in "
                                    "the training split, which this data lacks")
            own = [torch.from_numpy(scheme.to_classes(split.unimodal_labels[m])).long() for m in MODALITIES]
            t = torch.stack([own[i] for i in modality], 1).to(ctx.device)
        else:
            t = y[:, None].repeat(1, len(modality))
        return _Inputs(x, y, t)

    @staticmethod
    def _logits(model, data: _Inputs) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model.expert_logits(data.x)

    def _fit_experts(self, ctx: RecipeContext, train: _Inputs, select: _Inputs, fold: int,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train every expert on `train` in the generic loop (`ExpertsTask`) as stage EXPERTS_STAGE + fold,
        resuming it when the saved state is that stage's; each expert keeps its epoch of lowest CE on
        `select`'s fixed labels. Fold 0 (all of train) is the observed stage (epoch lines, progress,
        TensorBoard); the cross-fitting folds run quietly. `extra` goes with every epoch's resume state."""
        rc, tc, model = ctx.recipe, ctx.train, ctx.model
        experts = model.experts
        torch.manual_seed(tc.seed * 1_000_003 + 7919 * fold)  # dropout
        rng = np.random.default_rng([tc.seed, fold, 11])  # shuffling
        opt = torch.optim.AdamW(experts.parameters(), lr=tc.lr, weight_decay=rc.expert_weight_decay)
        task = ExpertsTask(experts, model.names, train, select, tc.batch_size, rc.expert_patience, rng, ctx.device)
        stage, observe = EXPERTS_STAGE + fold, fold == 0
        loop = run_loop(task, experts, opt, task.batches, rc.expert_epochs, rc.expert_patience, ctx.device,
                        state=ctx.resume_state(stage, task, opt), save_state=ctx.state_saver(stage, task, opt, extra),
                        on_epoch=ctx.on_epoch if observe else None, log=observe)
        for e, s in zip(experts, task.best_state):
            e.load_state_dict(s)
        summary = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_ce": [round(b, 5) for b in task.best]}
        return {**summary, "history": loop.history} if observe else summary

    def _fit_consensus(self, ctx: RecipeContext, z: torch.Tensor, y: torch.Tensor, experts: torch.Tensor | None,
                       router0: dict) -> tuple[list[float], dict[str, Any]]:
        """Temperatures, then the router from its initial state `router0`, on rows (z, y); `experts` (K,) bool
        limits the pool to some experts (None: all)."""
        rc, model = ctx.recipe, ctx.model
        model.router.load_state_dict(router0)
        model.shrink.zero_()  # fitting and scoring candidates see the consensus alone
        temps = [_temperature(z[:, k], y) if rc.calibrate else 1.0 for k in range(z.shape[1])]
        model.temperature.copy_(torch.tensor(temps, dtype=model.temperature.dtype))
        return temps, (self._fit_router(ctx, z, y, experts) if model.config.use_router else {})

    @staticmethod
    def _solo(model, best: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted single-expert pool's weights (nonzero at `best` only) and class bias."""
        k = len(model.names)
        if not model.config.use_router:
            return _only(k, best, model.temperature.device).to(model.temperature.dtype), \
                torch.zeros_like(model.solo_bias)
        with torch.no_grad():
            _, w = model.router(torch.zeros(1, k, model.config.num_classes, device=model.temperature.device),
                                _only(k, best, model.temperature.device)[None])
        return w[0].detach().clone(), model.router.bias.detach().clone()

    @staticmethod
    def _predict(model, z: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """Verdict logits of the pool of `experts` ((K,) bool; None: all) on raw expert logits z."""
        present = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        if experts is not None:
            present = present & experts[None, :]
        model.eval()
        with torch.no_grad():
            return model.consensus(z, present)[0]

    def _row_loss(self, ctx: RecipeContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per row: the router's own objective (CE on the verdict + acc2_loss * the Acc2 rule's BCE)."""
        loss = F.cross_entropy(logits, y, reduction="none")
        binary = self._binary(ctx, y)
        if binary is not None and ctx.recipe.acc2_loss > 0:
            loss = loss + ctx.recipe.acc2_loss * F.binary_cross_entropy_with_logits(
                logits[:, 2] - logits[:, 0], binary.float(), reduction="none")
        return loss

    @staticmethod
    def _binary(ctx: RecipeContext, y: torch.Tensor) -> torch.Tensor | None:
        scheme = ctx.scheme
        return scheme.binary_targets(y) if scheme.binary_names and scheme.num_classes == 3 else None

    def _choose_fallback(self, ctx: RecipeContext, z: torch.Tensor, y: torch.Tensor, groups: np.ndarray,
                         router0: dict) -> dict[str, Any]:
        """Cross-fit the consensus and every single expert over the fitting rows, folds grouped by video
        (clips of one video are correlated); pick the best expert (lowest held-out loss) and lambda.

        lambda is the largest of `_SHRINK` (the simplest model) unless a smaller one lowers the held-out loss
        by more than `fallback_margin` standard errors of the per-video paired difference. `fallback=expert`
        fixes lambda = 1. Only the fitting rows' own labels are read, each fold's model never its own."""
        rc, model, names = ctx.recipe, ctx.model, ctx.model.names
        k, n = len(names), len(y)
        videos, video_of = np.unique(groups, return_inverse=True)
        record: dict[str, Any] = {"mode": rc.fallback, "videos": len(videos)}
        folds = min(rc.fallback_folds, len(videos))
        if folds < 2:  # one video: nothing to hold out
            record.update(shrink=0.0 if rc.fallback == "cv" else 1.0, expert=names[0],
                          note="fewer than 2 videos in the fitting rows: no cross-fit")
            return record
        order = np.random.default_rng([ctx.train.seed, 9173]).permutation(len(videos))
        fold_of_video = np.empty(len(videos), np.int64)
        for f, part in enumerate(np.array_split(order, folds)):
            fold_of_video[part] = f
        fold = torch.from_numpy(fold_of_video[video_of]).to(z.device)
        cons = torch.zeros(n, z.shape[-1], device=z.device)
        solo = torch.zeros(k, n, z.shape[-1], device=z.device)
        saved = {"temperature": model.temperature.clone()}
        for f in range(folds):
            held, keep = fold == f, fold != f
            self._fit_consensus(ctx, z[keep], y[keep], None, router0)
            cons[held] = self._predict(model, z[held])
            for j in range(k):
                only = _only(k, j, z.device)
                self._fit_consensus(ctx, z[keep], y[keep], only, router0)
                solo[j, held] = self._predict(model, z[held], only)
        model.temperature.copy_(saved["temperature"])
        solo_loss = [self._row_loss(ctx, solo[j], y) for j in range(k)]
        best = int(np.argmin([float(v.mean()) for v in solo_loss]))
        vid = torch.from_numpy(video_of).to(z.device)
        binary = self._binary(ctx, y)

        def scores(logits: torch.Tensor) -> dict[str, Any]:
            loss = self._row_loss(ctx, logits, y)
            per_video = torch.zeros(len(videos), device=z.device).index_add_(0, vid, loss) / \
                torch.bincount(vid, minlength=len(videos)).clamp(min=1)
            hit = (logits[:, 2] > logits[:, 0]).long() == binary if binary is not None else logits.argmax(1) == y
            return {"loss": float(loss.mean()), "acc": 100.0 * float(hit.float().mean()), "per_video": per_video}

        lambdas = _SHRINK if rc.fallback == "cv" else (1.0,)
        cand = {lam: scores((1 - lam) * cons + lam * solo[best]) for lam in lambdas}
        chosen = max(lambdas)
        for lam in sorted(lambdas, reverse=True)[1:]:  # a smaller lambda (more consensus) must beat the pick clearly
            diff = cand[chosen]["per_video"] - cand[lam]["per_video"]  # > 0: lam is better on that video
            se = float(diff.std(unbiased=True)) / np.sqrt(len(videos)) if len(videos) > 1 else float("inf")
            if float(cand[chosen]["loss"]) - float(cand[lam]["loss"]) > rc.fallback_margin * se:
                chosen = lam
        record.update(
            folds=folds, shrink=float(chosen), expert=names[best],
            experts_heldout={nm: {"loss": round(float(v.mean()), 5),
                                  "acc": round(scores(solo[j])["acc"], 2)} for j, (nm, v) in enumerate(zip(names, solo_loss))},
            heldout={str(lam): {"loss": round(c["loss"], 5), "acc": round(c["acc"], 2)} for lam, c in cand.items()},
            metric="acc2" if binary is not None else "acc")
        logger.info(f"fallback: lambda {chosen} towards {names[best]} (held-out loss "
                    + ", ".join(f"{lam}: {c['loss']:.4f}" for lam, c in cand.items()) + ")")
        return record

    def _fit_router(self, ctx: RecipeContext, z: torch.Tensor, y: torch.Tensor,
                    experts: torch.Tensor | None = None) -> dict[str, Any]:
        """Full-batch Adam on the router for `router_steps` steps: CE on the verdict (+ the scheme's Acc2 rule as
        a BCE). `experts`: (K,) bool, the experts in the pool (None: all). Not an epoch loop: no selection
        split, no early stopping, one step per pass (docs/cmc_plus.md, "How it trains")."""
        rc, model = ctx.recipe, ctx.model
        torch.manual_seed(ctx.train.seed * 1_000_003 + 31)
        gen = torch.Generator().manual_seed(ctx.train.seed)
        router = model.router
        params = [p for name, p in router.named_parameters() if rc.fit_bias or name != "bias"]
        opt = torch.optim.Adam(params, lr=rc.router_lr)
        binary = self._binary(ctx, y)
        present_all = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        if experts is not None:
            present_all = present_all & experts[None, :]
        router.train()
        for _ in range(rc.router_steps):
            present = present_all
            if rc.modality_dropout > 0 and experts is None:  # a pool cut to some experts hides none of them
                kept = torch.from_numpy(hide_one_modality(len(y), rc.modality_dropout, gen))  # (N, 3) modalities
                present = kept.to(z.device)[:, model.modality] & present_all
            logits, _, _ = model.consensus(z, present)
            loss = F.cross_entropy(logits, y)
            if binary is not None and rc.acc2_loss > 0:
                loss = loss + rc.acc2_loss * F.binary_cross_entropy_with_logits(logits[:, 2] - logits[:, 0],
                                                                                binary.float())
            if router.mlp is not None:
                loss = loss + rc.router_weight_decay * sum((p ** 2).sum() for p in router.mlp.parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not torch.isfinite(loss):  # checked once per fit (docs/cmc_plus.md: the router is not an epoch loop)
            raise AffectusError(f"router: loss became {loss.item()} after {rc.router_steps} steps; "
                                f"check the input features")
        router.eval()
        with torch.no_grad():
            _, _, w = model.consensus(z, present_all)
        return {"loss": round(float(loss.detach()), 5),
                "mean_weights": dict(zip(model.names, [round(float(v), 4) for v in w.mean(0)]))}


def video_groups(ids) -> np.ndarray:
    """Each clip's video: the id before MMSA's `$_$` or before its last `_` (`<video>_<segment>`); an id
    with neither is a group of its own."""
    out = []
    for i in ids:
        i = str(i)
        out.append(i.split("$_$")[0] if "$_$" in i else i.rsplit("_", 1)[0] if "_" in i else i)
    return np.asarray(out)


def _only(k: int, j: int, device) -> torch.Tensor:
    mask = torch.zeros(k, dtype=torch.bool, device=device)
    mask[j] = True
    return mask


def _temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """Temperature scaling: the T of the grid (from TEMPERATURE_FLOOR up) minimising the mean NLL of
    softmax(z / T) on the n fitting rows plus the prior's TEMPERATURE_PRIOR_ROWS * (log T)^2 / (2 n)."""
    grid = _TEMPERATURES[_TEMPERATURES >= TEMPERATURE_FLOOR]
    n = max(int(y.shape[0]), 1)
    with torch.no_grad():
        score = [float(F.cross_entropy(z / t, y)) + TEMPERATURE_PRIOR_ROWS * np.log(t) ** 2 / (2 * n)
                 for t in grid]
    return float(grid[int(np.argmin(score))])
