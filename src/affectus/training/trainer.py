"""Training runs end to end: data in, a self-describing run directory out.

CMC runs two stages (unimodal pretraining with PLGM, then multimodal finetuning); other models
run one supervised stage. Only the train and selection splits are handed to training; the
evaluation split reaches `evaluate_split` alone, with its labels used for scoring only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectus.data.batches import iterate_batches
from affectus.data.types import MODALITIES, MERDataset, Split, to_classes
from affectus.errors import AffectusError
from affectus.evaluation.evaluate import evaluate_split
from affectus.inference import checkpoints as ckpt
from affectus.models.registry import create_model, is_bert_parameter, make_config
from affectus.training.config import ResolvedConfig
from affectus.training.loop import LoopState, run_loop
from affectus.training.tasks import Stage1Task, Stage2Task, SupervisedTask
from affectus.utils.io import write_json_atomic


@dataclasses.dataclass
class DataPlan:
    """Which split trains, which selects (early stopping), which is reported; and the metric family."""

    train: str
    select: str
    eval: str
    family: str  # 'sims' (CH-SIMS family Acc2) or 'mosi' (Has0 / Non0)


def plan_for(dataset: MERDataset, preset=None) -> DataPlan:
    if preset is not None:
        sp = preset.splits
        plan = DataPlan(sp["train"], sp["select"], sp["eval"], preset.acc2)
    else:
        names = dataset.splits
        evaluate = "test" if "test" in names else "valid"
        lo, hi = min(float(s.labels.min()) for s in names.values()), max(float(s.labels.max()) for s in names.values())
        family = "sims" if dataset.has_unimodal_labels or (lo >= -1.0 and hi <= 1.0) else "mosi"
        plan = DataPlan("train", "valid", evaluate, family)
    for role in ("train", "select"):
        name = getattr(plan, role)
        if name not in dataset:
            raise AffectusError(f"{dataset.source}: split '{name}' is needed to {role} but the file has {', '.join(dataset.splits)}")
    return plan


def configure_torch(threads: int, device: str) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    # EMA updates drive weights into denormal range after ~10 epochs, which is ~20x slower on CPU
    torch.set_flush_denormal(True)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AffectusError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def build_model(cfg: ResolvedConfig, dataset: MERDataset):
    values = dict(cfg.model)
    values["dims"] = dataset.dims
    config = make_config(cfg.model_name, values)
    return create_model(cfg.model_name, config), config


def _optimizer(model: torch.nn.Module, cfg):
    """Adam over the trainable parameters; BERT weights get their own lr and decay (none on biases /
    LayerNorm), the rest lr 1e-3, no decay."""
    groups: dict[str, list] = {"main": [], "bert_decay": [], "bert_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_bert_parameter(name):
            no_decay = name.endswith("bias") or "LayerNorm" in name
            groups["bert_no_decay" if no_decay else "bert_decay"].append(p)
        else:
            groups["main"].append(p)
    params = [{"params": groups["main"], "lr": cfg.lr, "weight_decay": 0.0}]
    if groups["bert_decay"] or groups["bert_no_decay"]:
        params += [
            {"params": groups["bert_decay"], "lr": cfg.bert_lr, "weight_decay": cfg.bert_weight_decay},
            {"params": groups["bert_no_decay"], "lr": cfg.bert_lr, "weight_decay": 0.0},
        ]
    return torch.optim.Adam(params)


def _batches(split: Split, cfg, stage: int, model_cfg, with_labels: bool = True) -> Callable[[int], Any]:
    """Epoch -> batches. Shuffling and dropout are seeded from (seed, stage, epoch) so resuming is exact."""

    def make(epoch: int):
        torch.manual_seed(cfg.seed * 1_000_003 + stage * 1009 + epoch)
        rng = np.random.default_rng([cfg.seed, stage, epoch])
        order = _order(split, cfg, model_cfg, rng)
        return iterate_batches(split, cfg.batch_size, order=order, with_labels=with_labels)

    return make


def _order(split: Split, cfg, model_cfg, rng: np.random.Generator) -> np.ndarray:
    if cfg.bucket and getattr(model_cfg, "padding", "faithful") == "masked":
        from affectus.models.layers import bucket_order

        lengths = np.maximum.reduce([split.lengths(m) for m in MODALITIES])
        return bucket_order(lengths, cfg.batch_size, rng)
    perm = rng.permutation(len(split))
    # never leave a batch of one: BatchNorm in training mode cannot normalise a single sample
    if len(split) % cfg.batch_size == 1 and len(split) > 1:
        perm = perm[:-1]
    return perm


def _eval_batches(split: Split, batch_size: int, with_labels: bool = True):
    return lambda: iterate_batches(split, batch_size, with_labels=with_labels)


def train_run(
    dataset: MERDataset,
    cfg: ResolvedConfig,
    out_dir: str | Path,
    plan: DataPlan,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    data_source: str | None = None,
) -> dict[str, Any]:
    """Train (both stages for CMC), evaluate on the plan's eval split, write the run directory."""
    out = Path(out_dir)
    if (out / "run.json").exists() and not resume:
        raise AffectusError(f"{out}: already holds a finished run; choose another --out or delete it")
    if (out / "state.pt").exists() and not resume:
        raise AffectusError(f"{out}: holds an interrupted run; pass --resume to continue it, or choose another --out")
    if resume and (out / "run.json").exists():
        info = ckpt.read_run(out)
        return info.get("metrics", {})
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    device = configure_torch(tc.threads, tc.device)
    torch.manual_seed(tc.seed)
    train_split, select_split = dataset[plan.train], dataset[plan.select]
    if tc.consistent_retention < 1.0:
        train_split = retain_consistent(train_split, tc.consistent_retention, tc.seed)
    if len(train_split) < 2 or len(select_split) < 1:
        raise AffectusError(f"{dataset.source}: train split needs at least 2 samples and '{plan.select}' at least 1")
    model, model_cfg = build_model(cfg, dataset)
    model.to(device)
    write_json_atomic(out / "config.json", cfg.to_dict())

    state_path = out / "state.pt"
    saved = ckpt.load_state(state_path) if resume and state_path.exists() else None
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    bank_tensors: dict[str, torch.Tensor] = {}

    if cfg.model_name == "cmc":
        final_state, summary, bank_tensors = _train_cmc(model, cfg, train_split, select_split, plan, device, saved,
                                                        out, log)
    else:
        final_state, summary = _train_supervised(model, cfg, train_split, select_split, device, saved, state_path, log)
    model.load_state_dict(final_state)

    eval_split = dataset[plan.eval] if plan.eval in dataset else None
    metrics = evaluate_split(model, eval_split, plan.family, tc.batch_size, device) if eval_split is not None else {}
    # the selection split's scores: what sweeps and model choice may look at (never the test scores)
    same = plan.select == plan.eval and eval_split is not None  # e.g. mosi-utterance scores valid
    select_metrics = metrics if same else evaluate_split(model, select_split, plan.family, tc.batch_size, device)
    info = {
        "model_name": cfg.model_name,
        "variant": cfg.variant,
        "model_config": dataclasses.asdict(model_cfg),
        "config": cfg.to_dict(),
        "dims": dataset.dims,
        "seq_lens": dataset.seq_lens,
        "label_mapping": ckpt.LABEL_MAPPING,
        "family": plan.family,
        "plan": dataclasses.asdict(plan),
        "data": {"source": data_source or dataset.source},
        "stages": summary,
        "train_seconds": round(time.perf_counter() - started, 2),
        "metrics": metrics,
        "metrics_split": plan.eval,
        "select_metrics": select_metrics,
        "select_split": plan.select,
    }
    if bank_tensors:
        ckpt.save_tensors(out / "bank.safetensors", bank_tensors)
    bert = getattr(model, "bert", None)
    if bert is not None:
        # BERT's architecture beside its weights (in model.safetensors): loading needs no hub or path
        write_json_atomic(out / "bert_config.json", bert.config.to_dict())
    write_json_atomic(out / "metrics.json", {"split": plan.eval, **metrics})
    ckpt.write_run(out, info, {k: v for k, v in model.state_dict().items()})
    if state_path.exists():
        state_path.unlink()
    from affectus.evaluation.tensorboard import write_tensorboard

    write_tensorboard(out)  # per-epoch scalars as TensorBoard event files (OUT/tensorboard/)
    return metrics


def retain_consistent(split: Split, rate: float, seed: int) -> Split:
    """Keep a random share `rate` of the modality-consistent (D_msc) samples, all the others (Figs. 4-5)."""
    from affectus.evaluation.subsets import consistency_masks

    if split.unimodal_labels is None:
        raise AffectusError("train.consistent_retention needs unimodal labels in the training split")
    msc, _ = consistency_masks(split.labels, split.unimodal_labels)
    consistent = np.flatnonzero(msc)
    rng = np.random.default_rng([seed, 7919])
    keep = rng.choice(consistent, size=int(round(rate * len(consistent))), replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(~msc), keep]))
    return split.subset(rows)


def _loop_state(saved, stage: int) -> LoopState | None:
    if saved is None or saved.get("stage") != stage:
        return None
    d = saved["loop"]
    return LoopState(epoch=d["epoch"], since_improved=d["since_improved"], history=list(d["history"]), done=d["done"])


def _make_saver(state_path: Path, stage: int, model, optimizer, task, extra: dict[str, Any]):
    def save(state: LoopState) -> None:
        ckpt.save_state(state_path, {
            "stage": stage,
            "loop": dataclasses.asdict(state),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "task": task.state_dict(),
            **extra,
        })

    return save


def _train_cmc(model, cfg, train_split, select_split, plan, device, saved, out: Path, log):
    from affectus.training.plgm import PseudoLabelBank

    tc = cfg.train
    state_path = out / "state.pt"
    train_cls = torch.from_numpy(to_classes(train_split.labels))
    val_cls = torch.from_numpy(to_classes(select_split.labels))
    if tc.unimodal_labels == "ground_truth":
        # CMC-GT: the dataset's own unimodal labels replace PLGM in stage 1 (train and selection splits only)
        if train_split.unimodal_labels is None or select_split.unimodal_labels is None:
            raise AffectusError("variant cmc_gt needs unimodal labels (regression_labels_T/A/V), which this data lacks")
        init_train = torch.from_numpy(np.stack([to_classes(train_split.unimodal_labels[m]) for m in MODALITIES], 1))
        init_val = torch.from_numpy(np.stack([to_classes(select_split.unimodal_labels[m]) for m in MODALITIES], 1))
    else:
        init_train = train_cls[:, None].repeat(1, 3)  # eq. 19: one-hot multimodal class for every modality
        init_val = val_cls[:, None].repeat(1, 3)
    frozen = not tc.plgm or tc.unimodal_labels == "ground_truth"
    bank = PseudoLabelBank(init_train, frozen=frozen)
    val_bank = PseudoLabelBank(init_val, frozen=frozen or tc.selection == "fixed")
    val_batches = _eval_batches(select_split, tc.batch_size)
    summary: dict[str, Any] = {}

    # ---- stage 1: unimodal pretraining ----
    stage1 = Stage1Task(model, bank, val_bank, val_batches, tc, plan.family)
    if saved is None or saved["stage"] == 1:
        opt1 = _optimizer(model, tc)
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt1.load_state_dict(saved["optimizer"])
            stage1.load_state_dict(saved["task"])
        loop1 = run_loop(stage1, model, opt1, _batches(train_split, tc, 1, model.config), tc.epochs, tc.patience, device,
                         state=_loop_state(saved, 1), save_state=_make_saver(state_path, 1, model, opt1, stage1, {}),
                         log=log, amp=tc.amp)
        train_targets, val_targets = stage1.handover(model)
        stage1_summary = {
            "epochs": loop1.epoch,
            "best_epoch": dict(stage1.best_epoch),
            "best_val_ce": dict(stage1.best_loss),
            "flips": {m: int((train_targets[:, k] != init_train[:, k]).sum()) for k, m in enumerate(MODALITIES)},
            "history": loop1.history,
        }
        bank_tensors = {"initial": bank.initial.clone(), "soft": bank.soft.clone(), "stage2_targets": train_targets,
                        "flip_history": bank.state_dict()["flip_history"]}
        # which labels PLGM flipped, with ids and raw text (the paper's Fig. 6)
        bank.export(train_split.ids, train_split.raw_text, out / "pseudo_labels.csv")
        saved = None
    else:
        stage1_summary = saved["stage1_summary"]
        bank_tensors = saved["bank_tensors"]
        train_targets, val_targets = saved["train_targets"], saved["val_targets"]
    summary["stage1"] = stage1_summary
    if log:
        log(f"[stage1] done: best epochs {stage1_summary['best_epoch']}, pseudo-label flips {stage1_summary['flips']}")

    # ---- stage 2: multimodal finetuning ----
    stage2 = Stage2Task(train_targets, val_targets, val_batches, tc, plan.family)
    if tc.stage2_freeze_unimodal:  # CMC-variant trains the router alone
        model.branches.requires_grad_(False)
    opt2 = _optimizer(model, dataclasses.replace(tc, lr=tc.stage2_lr or tc.lr))
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt2.load_state_dict(saved["optimizer"])
        stage2.load_state_dict(saved["task"])
    extra = {"stage1_summary": stage1_summary, "bank_tensors": bank_tensors, "train_targets": train_targets,
             "val_targets": val_targets}
    frozen_eval = _FrozenEncoders(model) if tc.stage2_freeze_unimodal else None
    loop2 = run_loop(stage2, frozen_eval or model, opt2, _batches(train_split, tc, 2, model.config), tc.epochs,
                     tc.patience, device, state=_loop_state(saved, 2),
                     save_state=_make_saver(state_path, 2, model, opt2, stage2, extra), log=log, amp=tc.amp)
    summary["stage2"] = {"epochs": loop2.epoch, "best_epoch": stage2.best_epoch, "best_val_loss": stage2.best_loss,
                         "history": loop2.history}
    return stage2.best_state, summary, bank_tensors


class _FrozenEncoders(torch.nn.Module):
    """CMC-variant wrapper: the frozen unimodal models stay in eval mode (no dropout, fixed BN statistics)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        super().train(mode)  # the router (and the wrapped model) follow `mode`
        self.model.branches.eval()
        return self

    def forward(self, batch):
        return self.model(batch)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


def _train_supervised(model, cfg, train_split, select_split, device, saved, state_path, log):
    """One supervised stage. A model may bring its own task (`make_task`), e.g. Self-MM's label generation."""
    tc = cfg.train
    val_batches = _eval_batches(select_split, tc.batch_size)
    if hasattr(model, "make_task"):
        task = model.make_task(train_split, select_split, val_batches, tc)
    else:
        task = SupervisedTask(val_batches)
    opt = _optimizer(model, tc)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        task.load_state_dict(saved["task"])
    loop = run_loop(task, model, opt, _batches(train_split, tc, 1, getattr(model, "config", None)), tc.epochs,
                    tc.patience, device, state=_loop_state(saved, 1),
                    save_state=_make_saver(state_path, 1, model, opt, task, {}), log=log, amp=tc.amp)
    return task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                       "best_val_loss": task.best_loss, "history": loop.history}}
