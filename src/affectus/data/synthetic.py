"""Conflict simulator: synthetic MER data whose modalities disagree at a controlled rate.

A test bed for code and for behaviour under modality conflict, not evidence about real-world
accuracy. It writes the MMSA pickle layout (see `docs/simulator.md`), with a real dataset's feature
shapes when built from a preset, so every part of affectus can run without the real data.

The generative story, per sample (all draws from numpy Generators seeded by `SynthConfig.seed`):

1. Multimodal class c_m: neutral with `neutral_rate`, otherwise positive with `positive_rate`.
2. Conflict pattern: with probability `inconsistency` the sample is inconsistent (lands in D_msi,
   paper footnote 3). Then either text contradicts c_m (probability `text_misleading`) while audio
   and vision agree, or exactly one of audio / vision contradicts it while the other two agree.
   A contradicting modality takes the opposite polarity (60%) or neutral (40%); if c_m is neutral,
   positive or negative. So c_m is always held by at least two modalities: it is the weighted vote
   of the unimodal classes with text weighing more than audio or vision alone (e.g. 1.5 / 1 / 1) but
   less than both together. A multimodal label is a *consensus*, and when text disagrees with audio
   and vision the label follows audio and vision: what CMC's router (MCR, eq. 13-14) can exploit.
3. Scores: |y_m| = bound * u, u ~ U(0, 1], quantised to multiples of a per-sample step drawn from
   `label_steps` (0.2 as for averaged annotator ratings: CH-SIMS and mostly MOSI), never rounding a
   non-neutral score to 0; neutral scores are exactly 0. Agreeing modalities jitter u by N(0, 0.2);
   contradicting ones draw a fresh u. So y_m and every y_k share a sign class exactly when agreeing.
4. Features of modality k, shape (L_k, D_k): every true time step is
       x_t = strength_k * (D_k / 32) ** 0.25 / sqrt(L_k) * (e_k[c_k] + (y_k / bound) * d_k)
             + noise * N(0, I)
   where e_k[0..2] (one per class) and d_k (intensity) are fixed orthonormal random directions
   (one set per seed). Dividing by sqrt(L_k) makes the signal-to-noise ratio of the mean-pooled
   full-length feature along e_k independent of the sequence length. The (D_k / 32) ** 0.25 factor
   keeps a modality about as *learnable* whatever its width: a linear probe fitted on N samples
   separates two classes at distance s in D dims about as well as s^2 / sqrt(s^2 + 4 D / N), so s^2
   must grow like sqrt(D) to stay put. At D = 32, `strength_k / noise` is exactly the pooled SNR.
   Text is the strongest signal (it encodes y_t, which misleads when text contradicts c_m); audio
   and vision are weaker but informative.
5. True lengths uniform in [ceil(min_length_fraction * L_k), L_k]; zeros after the true length (text
   is padded only when `text_bert` is written, since its mask is where loaders read text lengths).
   A fraction `audio_neg_inf_rate` of the true audio values is -inf, as in real MMSA audio.

Categorical presets (a scheme with named classes, e.g. `iemocap`) tell the same story with N emotion
classes instead of the sentiment sign: the multimodal class c_m is drawn from the preset's class
prior (its preset's `synth.class_counts`, else uniform), the same conflict pattern decides who contradicts it, and a
contradicting modality takes one of the other N - 1 classes uniformly. Each modality has N class
directions and one intensity direction; the intensity fraction u plays the role of |y| / bound.
Labels are class indices: `classification_labels` (int64) and, for readers that need it,
`regression_labels` (float32, the same indices); unimodal labels (when asked) are class indices too.
The raw text names the text modality's emotion ("i feel really furious").

Memory: features are float32, (N * sum_k L_k * D_k * 4) bytes; see `SynthConfig.estimate_bytes`.
CH-SIMS at full scale is ~0.75 GB, CH-SIMS v2 ~1.8 GB, CMU-MOSI ~0.44 GB, CMU-MOSEI ~8.5 GB:
use `scale` for MOSEI (`generate_dataset` and the CLI refuse more than 4 GB unless told). Features
are filled in chunks of ~32 MB, so peak memory is about the size of the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from affectus.data.mmsa import dataset_from_raw
from affectus.data.presets import SIMULATED_SPLITS
from affectus.data.schemes import LabelScheme
from affectus.data.types import MODALITIES, UNIMODAL_KEYS, MERDataset, to_classes
from affectus.errors import AffectusError

SPLITS = SIMULATED_SPLITS
NEG, NEU, POS = 0, 1, 2
ANNOTATIONS = ("Negative", "Neutral", "Positive")
DEFAULT_MAX_GB = 4.0  # features held in memory; pickling adds about one array's worth on top
_CHUNK_VALUES = 1 << 23  # ~8M float32 = 32 MB per chunk bounds temporary memory
_MAG_JITTER = 0.2  # std of the jitter of an agreeing modality's intensity (fraction of the bound)
_REF_DIM = 32  # feature width at which `strength` is exactly the pooled SNR (see _features)
_OPPOSITE_SHARE = 0.6  # a contradicting modality flips polarity (else goes neutral)

@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset; the same config + seed gives identical bytes."""

    name: str = "synth"
    seed: int = 1111
    n_train: int = 64
    n_valid: int = 16
    n_test: int = 16
    seq_lens: dict[str, int] = field(default_factory=lambda: {"text": 8, "audio": 16, "vision": 12})
    dims: dict[str, int] = field(default_factory=lambda: {"text": 32, "audio": 8, "vision": 12})
    label_range: tuple[float, float] = (-1.0, 1.0)
    label_steps: tuple[float, ...] = (0.2,)  # quantisation step(s) of the scores
    label_step_probs: tuple[float, ...] | None = None  # per-sample step choice; None = uniform
    neutral_rate: float = 0.15  # share of multimodal scores that are exactly 0
    positive_rate: float = 0.5  # share of positives among the non-neutral multimodal scores
    inconsistency: float = 0.5  # share of samples in D_msi (some y_k contradicts y_m's class)
    text_misleading: float = 1 / 3  # among D_msi samples: share where text is the one that contradicts
    text_strength: float = 4.0  # pooled SNR of each modality's class signal at D = 32 (story step 4)
    audio_strength: float = 1.75
    vision_strength: float = 1.75
    noise: float = 1.0  # std of the per-value Gaussian noise
    audio_neg_inf_rate: float = 1e-4  # share of true (non-padding) audio values that are -inf
    min_length_fraction: float = 0.5  # true lengths are uniform in [ceil(f * L), L]
    with_unimodal_labels: bool = True  # write regression_labels_T/A/V
    with_raw_text: bool = True
    with_text_bert: bool = False  # write text_bert (N, 3, Lt): ids < 100, mask, zeros
    # The categorical story (see the module docstring): N >= 2 class names, labels are class indices;
    # () tells the sentiment story. `class_probs`: prior of the multimodal class, None = uniform.
    class_names: tuple[str, ...] = ()
    class_probs: tuple[float, ...] | None = None

    @classmethod
    def from_preset(cls, name: str, scale: float = 1.0, seq_scale: float = 1.0, **overrides) -> SynthConfig:
        """A config with preset `name`'s shapes and the real dataset's split sizes (its `synth.sizes`)
        times `scale`, sequence lengths times `seq_scale` (each at least 1; a split the dataset lacks
        stays empty). `overrides` set any field (e.g. n_train=..., inconsistency=...)."""
        from affectus.data.presets import load_preset

        if not scale > 0 or not seq_scale > 0:
            raise AffectusError(f"synth: scale and seq_scale must be > 0 (got {scale}, {seq_scale})")
        preset = load_preset(name)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AffectusError(f"synth: unknown config field(s) {sorted(unknown)}")
        facts = preset.synth  # the dataset's facts for the simulator, in its preset YAML
        if not facts.sizes and not all(f"n_{s}" in overrides for s in SPLITS):
            raise AffectusError(
                f"synth: no split sizes known for preset {preset.name!r}; give n_train, n_valid and n_test"
            )
        sizes = {s: int(facts.sizes.get(s, 0)) for s in SPLITS}
        scheme = preset.scheme
        if scheme.scores:  # sentiment scores: the scheme's label steps and class rates (defaults without)
            story = dict(scheme.synth_story)
        else:  # named classes: the categorical story
            prior = facts.class_counts
            story = {"class_names": tuple(scheme.class_names),
                     "class_probs": None if prior is None else tuple(c / sum(prior) for c in prior)}
        # D_msi share: Table I where a dataset has unimodal labels; MOSI / MOSEI have none, so 0.5 is a guess
        story["inconsistency"] = 0.5 if facts.inconsistency is None else facts.inconsistency
        config = cls(
            name=preset.name,
            **{f"n_{s}": (max(1, round(n * scale)) if n else 0) for s, n in sizes.items()},
            seq_lens={m: max(1, round(int(preset.seq_lens[m]) * seq_scale)) for m in MODALITIES},
            dims={m: int(preset.dims[m]) for m in MODALITIES},
            label_range=(float(preset.label_range[0]), float(preset.label_range[1])),
            with_unimodal_labels=bool(preset.unimodal_labels),
            with_text_bert=facts.text_bert,
            **story,
        )
        config = dataclasses.replace(config, **overrides)
        config.validate()
        return config

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}

    def estimate_bytes(self) -> int:
        """Bytes of the float32 feature arrays of all splits (the bulk of the data)."""
        per_sample = sum(self.seq_lens[m] * self.dims[m] for m in MODALITIES) * 4
        return per_sample * sum(self.sizes.values())

    def validate(self) -> None:
        """Raise AffectusError (one line) on any value the generator cannot honour."""

        def bad(msg: str) -> AffectusError:
            return AffectusError(f"synth config: {msg}")

        for s, n in self.sizes.items():
            if not isinstance(n, (int, np.integer)) or n < 0:
                raise bad(f"n_{s} must be an integer >= 0 (got {n!r})")
        if self.n_train < 1:
            raise bad("n_train must be >= 1")
        for what in ("seq_lens", "dims"):
            d = getattr(self, what)
            if set(d) != set(MODALITIES) or any(
                not isinstance(v, (int, np.integer)) or v < 1 for v in d.values()
            ):
                raise bad(f"{what} must map text/audio/vision to integers >= 1 (got {d})")
        if self.class_names:
            self._validate_classes(bad)
        else:
            self._validate_scores(bad)
        for name in (
            "neutral_rate",
            "positive_rate",
            "inconsistency",
            "text_misleading",
            "audio_neg_inf_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if not 0.0 < self.min_length_fraction <= 1.0:
            raise bad(f"min_length_fraction must be in (0, 1] (got {self.min_length_fraction})")
        for name in ("text_strength", "audio_strength", "vision_strength", "noise"):
            if not getattr(self, name) >= 0.0:
                raise bad(f"{name} must be >= 0 (got {getattr(self, name)})")

    def _validate_scores(self, bad: Callable[[str], AffectusError]) -> None:
        lo, hi = self.label_range
        if not lo < 0 < hi:
            raise bad(f"label_range must satisfy lo < 0 < hi (got {self.label_range})")
        if not self.label_steps or any(not 0 < s <= min(-lo, hi) for s in self.label_steps):
            raise bad(f"label_steps must be in (0, {min(-lo, hi)}] (got {self.label_steps})")
        if self.label_step_probs is not None and (
            len(self.label_step_probs) != len(self.label_steps)
            or not math.isclose(sum(self.label_step_probs), 1.0)
        ):
            raise bad("label_step_probs must match label_steps and sum to 1")

    def _validate_classes(self, bad: Callable[[str], AffectusError]) -> None:
        names = self.class_names
        if len(names) < 2 or len(set(names)) != len(names):
            raise bad(f"class_names must hold at least 2 distinct names (got {list(names)})")
        probs = self.class_probs
        if probs is not None and (len(probs) != len(names) or min(probs) < 0 or not math.isclose(sum(probs), 1.0)):
            raise bad(f"class_probs must give {len(names)} non-negative shares summing to 1 (got {probs})")


Progress = Callable[[int], None]  # called with the number of feature values just generated


def generate(config: SynthConfig, progress: Progress | None = None) -> dict:
    """The raw MMSA dict {'train'|'valid'|'test': {key: array}} (empty splits left out).

    Keys per split (N samples): id, raw_text (lists of str), text (N, Lt, Dt), audio, vision
    (float32), audio_lengths, vision_lengths (N,) int64, regression_labels (N,) float32,
    regression_labels_T/A/V (with unimodal labels), classification_labels (N,) int64,
    annotations (list of str), text_bert (N, 3, Lt) int64 (when asked).
    """
    config.validate()
    # Independent streams: the world (signal directions) and each split; within a split, labels,
    # words and each modality. Changing one split's size or one modality's shape leaves the rest alone.
    world_seq, *split_seqs = np.random.SeedSequence(config.seed).spawn(1 + len(SPLITS))
    world = _make_world(config, world_seq)
    raw: dict[str, dict] = {}
    for split, seq in zip(SPLITS, split_seqs):
        if config.sizes[split] > 0:
            raw[split] = _generate_split(config, split, world, seq, progress)
    return raw


def generate_dataset(
    config: SynthConfig | str,
    *,
    scale: float = 1.0,
    seq_scale: float = 1.0,
    max_gb: float | None = DEFAULT_MAX_GB,
    progress: Progress | None = None,
    source: str | None = None,
    **overrides,
) -> MERDataset:
    """Generate and validate in memory: a `SynthConfig`, or a preset name (+ scale, overrides).

    Goes through the same validation as a file (`dataset_from_raw`), so the -inf audio values come
    back as zeros counted in `MERDataset.sanitised`. Refuses configs above `max_gb` of features.
    `source` names the data (default `synth:NAME`; `open_data` passes the full `synth:NAME?options`)."""
    if isinstance(config, str):
        config = SynthConfig.from_preset(config, scale=scale, seq_scale=seq_scale, **overrides)
    elif overrides or scale != 1.0 or seq_scale != 1.0:
        raise AffectusError("synth: scale / seq_scale / overrides apply to a preset name, not a SynthConfig")
    check_size(config, max_gb)
    return dataset_from_raw(generate(config, progress), source=source or f"synth:{config.name}")


def check_size(config: SynthConfig, max_gb: float | None = DEFAULT_MAX_GB) -> None:
    """Raise AffectusError if the features would exceed `max_gb` GB (None: no limit)."""
    # exact integers: `scale=1e300` gives a byte count no float holds (compare, then format, as ints)
    size = config.estimate_bytes()
    if max_gb is None or size >= 2**63:  # past what numpy can index, whatever the limit says
        max_gb = min(max_gb if max_gb is not None else math.inf, 2**63 / 1e9)
    if size > max_gb * 1e9:
        shown = f"{size / 1e9:.2f} GB" if size < 10**15 else f"about 10^{len(str(size)) - 10} GB"
        factor = f"{size / (max_gb * 1e9):.2g}x" if size < 10**300 else f"about 10^{len(str(size)) - 10}x"
        raise AffectusError(
            f"synth: {config.name} would hold {shown} of features (limit {max_gb:g} GB); "
            f"shrink it at least {factor} (scale / seq_scale / n per split) or raise the limit"
        )


def total_values(config: SynthConfig) -> int:
    """Number of feature values `generate` produces (the unit of its progress callback)."""
    return config.estimate_bytes() // 4


def consistent_mask(split: dict, scheme: LabelScheme) -> np.ndarray:
    """(N,) bool of a raw split: True for D_msc, False for D_msi, by the label scheme's one rule
    (`LabelScheme.consistency_masks`: y_m and every y_k fall in one of the scheme's classes)."""
    unimodal = {m: split[UNIMODAL_KEYS[m]] for m in MODALITIES}
    return scheme.consistency_masks(split["regression_labels"], unimodal)[0]


def summarise(raw: dict, scheme: LabelScheme) -> dict:
    """Sizes, shapes, D_msc / D_msi counts under `scheme` (when unimodal labels are present), -inf counts."""
    first = next(iter(raw.values()))
    out: dict = {
        "sizes": {s: len(d["regression_labels"]) for s, d in raw.items()},
        "seq_lens": {m: int(first[m].shape[1]) for m in MODALITIES},
        "dims": {m: int(first[m].shape[2]) for m in MODALITIES},
        "audio_neg_inf": int(sum(np.isneginf(d["audio"]).sum() for d in raw.values())),
    }
    if all(UNIMODAL_KEYS["text"] in d for d in raw.values()):
        msc = [int(consistent_mask(d, scheme).sum()) for d in raw.values()]
        out["msc"] = sum(msc)
        out["msi"] = sum(out["sizes"].values()) - out["msc"]
    return out


# ----------------------------------------------------------------------------------------------
# labels


def _make_world(config: SynthConfig, seq: np.random.SeedSequence) -> dict[str, np.ndarray]:
    """Per modality a (K + 1, D) matrix: rows 0..K-1 the class directions (K = 3 sentiment classes, or
    the categorical story's N), row K the intensity direction.

    Orthonormal when D >= K + 1 (QR of a Gaussian matrix), so classes are equally far apart; else
    random unit vectors (classes then overlap, as they would in so few dimensions)."""
    rows = (len(config.class_names) or 3) + 1
    world = {}
    for m, mseq in zip(MODALITIES, seq.spawn(len(MODALITIES))):  # one stream per modality
        d = config.dims[m]
        g = np.random.default_rng(mseq).standard_normal((d, rows))
        if d >= rows:
            q, _ = np.linalg.qr(g)
            dirs = q.T
        else:
            dirs = (g / np.linalg.norm(g, axis=0, keepdims=True)).T
        world[m] = dirs.astype(np.float32)
    return world


def _contradict(cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A class different from `cls`: polar opposite (60%) or neutral; for neutral, +/- at random."""
    n = cls.shape[0]
    flip = np.where(rng.random(n) < _OPPOSITE_SHARE, 2 - cls, NEU)
    return np.where(cls == NEU, np.where(rng.random(n) < 0.5, NEG, POS), flip)


def _scores(cls: np.ndarray, frac: np.ndarray, step: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Class + intensity fraction in [0, 1] -> a score quantised to multiples of `step`, float32.

    Non-neutral scores are at least one step away from 0 so the quantised score keeps its class."""
    bound = np.where(cls == POS, hi, -lo)
    k_max = np.floor(bound / step + 1e-6)
    k = np.clip(np.rint(frac * bound / step), 1, k_max)
    sign = cls.astype(np.float64) - 1.0  # -1, 0, +1
    return (sign * k * step).astype(np.float32)


def _conflict_pattern(config: SynthConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Step 2 of the story: per modality, (N,) bool, whether it contradicts the multimodal class."""
    inconsistent = rng.random(n) < config.inconsistency
    text_wrong = inconsistent & (rng.random(n) < config.text_misleading)
    audio_pick = rng.random(n) < 0.5
    return {
        "text": text_wrong,
        "audio": inconsistent & ~text_wrong & audio_pick,
        "vision": inconsistent & ~text_wrong & ~audio_pick,
    }


def _categorical_labels(config: SynthConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The categorical story: class indices (N,) int64 keyed 'm', 'text', 'audio', 'vision', and each
    one's intensity fraction in (0, 1] keyed 'u_m', 'u_text', ..."""
    k = len(config.class_names)
    cls_m = rng.choice(k, size=n, p=config.class_probs)
    frac_m = 1.0 - rng.random(n)  # (0, 1]
    wrong = _conflict_pattern(config, n, rng)
    out = {"m": cls_m.astype(np.int64), "u_m": frac_m}
    for m in MODALITIES:  # every draw for every sample, as in the sentiment story
        other = (cls_m + rng.integers(1, k, size=n)) % k  # one of the other k - 1 classes, uniformly
        jitter = np.clip(frac_m + rng.normal(0.0, _MAG_JITTER, n), 0.0, 1.0)
        fresh = 1.0 - rng.random(n)
        out[m] = np.where(wrong[m], other, cls_m).astype(np.int64)
        out[f"u_{m}"] = np.where(wrong[m], fresh, jitter)
    return out


def _labels(config: SynthConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Multimodal and unimodal scores (N,) float32, keyed 'm', 'text', 'audio', 'vision'."""
    lo, hi = config.label_range
    p_pos = (1 - config.neutral_rate) * config.positive_rate
    cls_m = rng.choice(3, size=n, p=[1 - config.neutral_rate - p_pos, config.neutral_rate, p_pos])
    step = rng.choice(np.asarray(config.label_steps), size=n, p=config.label_step_probs)
    frac_m = 1.0 - rng.random(n)  # (0, 1]
    wrong = _conflict_pattern(config, n, rng)

    out = {"m": _scores(cls_m, frac_m, step, lo, hi)}
    for m in MODALITIES:  # every draw happens for every sample, so patterns do not shift the streams
        other_cls = _contradict(cls_m, rng)
        jitter = np.clip(frac_m + rng.normal(0.0, _MAG_JITTER, n), 0.0, 1.0)
        fresh = 1.0 - rng.random(n)
        cls_k = np.where(wrong[m], other_cls, cls_m)
        out[m] = _scores(cls_k, np.where(wrong[m], fresh, jitter), step, lo, hi)
    return out


# ----------------------------------------------------------------------------------------------
# features


def _lengths(config: SynthConfig, m: str, n: int, rng: np.random.Generator) -> np.ndarray:
    full = config.seq_lens[m]
    if m == "text" and not config.with_text_bert:
        return np.full(n, full, dtype=np.int64)
    low = max(1, math.ceil(config.min_length_fraction * full))
    return rng.integers(low, full + 1, size=n, dtype=np.int64)


def _features(
    config: SynthConfig,
    m: str,
    classes: np.ndarray,
    intensity: np.ndarray,
    lengths: np.ndarray,
    direction: np.ndarray,
    rng: np.random.Generator,
    progress: Progress | None,
) -> np.ndarray:
    """(N, L, D) float32 per step 4 and 5 of the story, filled chunk by chunk. classes (N,) int,
    intensity (N,) float32 (y / bound, or the categorical story's fraction), direction (K + 1, D)."""
    n, seq_len, dim = classes.shape[0], config.seq_lens[m], config.dims[m]
    strength = getattr(config, f"{m}_strength")
    # (N, D) per-sample signal: class direction + intensity along d_k, scaled so that the mean over
    # L steps has norm strength * (D / 32) ** 0.25 along e_k (step 4 of the story says why).
    signal = direction[classes] + intensity[:, None] * direction[-1]
    signal *= np.float32(strength * (dim / _REF_DIM) ** 0.25 / math.sqrt(seq_len))
    out = np.empty((n, seq_len, dim), dtype=np.float32)
    chunk = max(1, _CHUNK_VALUES // (seq_len * dim))
    steps = np.arange(seq_len)
    neg_inf_rate = config.audio_neg_inf_rate if m == "audio" else 0.0
    for start in range(0, n, chunk):
        view = out[start : start + chunk]  # contiguous slice of the output: no extra copy
        rng.standard_normal(dtype=np.float32, out=view)
        view *= np.float32(config.noise)
        view += signal[start : start + chunk, None, :]
        view[steps[None, :] >= lengths[start : start + chunk, None]] = 0.0  # zero padding, as in MMSA
        if neg_inf_rate > 0:
            # Bernoulli(rate) per value, drawn sparsely: a binomial count of uniform positions; those
            # falling into padding are dropped, so the rate holds per true value.
            count = rng.binomial(view.size, neg_inf_rate)
            i, t, d = np.unravel_index(rng.integers(0, view.size, count), view.shape)
            keep = t < lengths[start : start + chunk][i]
            view[i[keep], t[keep], d[keep]] = -np.inf
        if progress is not None:
            progress(view.size)
    return out


# ----------------------------------------------------------------------------------------------
# raw text and BERT-style ids (the text carries y_t, like the text features)

_OPENERS = ("", "honestly", "i think", "to me", "well", "overall")
_SUBJECTS = (
    "the film",
    "the story",
    "the music",
    "the acting",
    "the ending",
    "the plot",
    "this show",
    "the dialogue",
    "the cast",
    "the scene",
)
_VERBS = ("was", "felt", "seemed", "is", "looked")
_ADVERBS = {
    "strong": ("really", "truly", "very", "so"),
    "mild": ("rather", "somewhat", "quite", "fairly"),
    "neutral": ("just", "pretty"),
}
_ADJECTIVES = {
    (POS, "strong"): ("great", "wonderful", "amazing", "brilliant", "superb", "fantastic"),
    (POS, "mild"): ("nice", "good", "pleasant", "decent", "fine", "sweet"),
    (NEU, "neutral"): ("okay", "ordinary", "average", "plain", "normal", "usual"),
    (NEG, "mild"): ("dull", "weak", "slow", "messy", "boring", "flat"),
    (NEG, "strong"): ("terrible", "awful", "horrible", "dreadful", "painful", "hopeless"),
}
_PAD, _CLS, _SEP = 0, 1, 2
_VOCAB = sorted(
    {
        w
        for group in (_OPENERS, _SUBJECTS, _VERBS, *_ADVERBS.values(), *_ADJECTIVES.values())
        for phrase in group
        for w in phrase.split()
    }
)
_WORD_ID = {w: i + 3 for i, w in enumerate(_VOCAB)}  # ids 3.. (< 100: a toy vocabulary, not BERT's)


def _sentences(scores: np.ndarray, bound: float, rng: np.random.Generator) -> list[str]:
    """One short sentence per text score: polarity from the class, strong words if |y| > bound / 2."""
    cls = to_classes(scores)
    picks = rng.integers(0, 1 << 30, size=(len(scores), 4))
    out = []
    for c, y, (a, b, v, w) in zip(cls, scores, picks):
        level = "neutral" if c == NEU else ("strong" if abs(y) > bound / 2 else "mild")
        words = [
            _OPENERS[a % len(_OPENERS)],
            _SUBJECTS[b % len(_SUBJECTS)],
            _VERBS[v % len(_VERBS)],
            _ADVERBS[level][w % len(_ADVERBS[level])],
            _ADJECTIVES[(int(c), level)][(w >> 8) % len(_ADJECTIVES[(int(c), level)])],
        ]
        out.append(" ".join(x for x in words if x))
    return out


# The categorical story's words: per emotion (mild, strong) adjectives; an unknown class name is its own word.
_EMOTION_WORDS = {
    "happy": (("glad", "pleased", "cheerful"), ("thrilled", "delighted", "overjoyed")),
    "sad": (("down", "low", "gloomy"), ("heartbroken", "miserable", "devastated")),
    "angry": (("annoyed", "irritated", "cross"), ("furious", "enraged", "livid")),
    "neutral": (("fine", "okay", "calm"), ("fine", "okay", "calm")),
    "excited": (("eager", "keen", "lively"), ("ecstatic", "electrified", "pumped")),
    "frustrated": (("bothered", "stuck", "tired"), ("exasperated", "defeated", "thwarted")),
}
_EMOTION_OPENERS = ("", "honestly", "well", "right now", "today")
_EMOTION_VERBS = ("feel", "felt", "am", "was")
_EMOTION_ADVERBS = (("rather", "somewhat", "quite"), ("really", "so", "very"))
_EMOTION_VOCAB = sorted(
    (
        {w for mild, strong in _EMOTION_WORDS.values() for w in (*mild, *strong)}
        | {w for p in (*_EMOTION_OPENERS, *_EMOTION_VERBS) for w in p.split()}
        | {w for group in _EMOTION_ADVERBS for w in group}
        | {"i"}
    )
    - set(_WORD_ID)
)
# ids after the sentiment vocabulary's, so sentiment files keep theirs; 1 more for unknown words
_EMOTION_ID = {w: 3 + len(_VOCAB) + i for i, w in enumerate(_EMOTION_VOCAB)}
_UNKNOWN_ID = 3 + len(_VOCAB) + len(_EMOTION_VOCAB)


def _emotion_sentences(classes: np.ndarray, intensity: np.ndarray, names: tuple[str, ...],
                       rng: np.random.Generator) -> list[str]:
    """One short sentence per text class: the emotion's word, strong if its intensity is above 1/2."""
    picks = rng.integers(0, 1 << 30, size=(len(classes), 4))
    out = []
    for c, u, (a, v, w, j) in zip(classes, intensity, picks):
        strong = int(u > 0.5)
        name = names[int(c)]
        words = _EMOTION_WORDS.get(name.lower(), ((name,), (name,)))[strong]
        parts = [_EMOTION_OPENERS[a % len(_EMOTION_OPENERS)], "i", _EMOTION_VERBS[v % len(_EMOTION_VERBS)],
                 _EMOTION_ADVERBS[strong][w % 3], words[j % len(words)]]
        out.append(" ".join(x for x in parts if x))
    return out


def _word_id(word: str) -> int:
    return _WORD_ID.get(word) or _EMOTION_ID.get(word, _UNKNOWN_ID)


def _text_bert(
    sentences: list[str], lengths: np.ndarray, seq_len: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, 3, Lt) int64: [CLS] word ids (random filler ids past the sentence) [SEP], mask, zeros."""
    out = np.zeros((len(sentences), 3, seq_len), dtype=np.int64)
    filler = rng.integers(3, 3 + len(_VOCAB), size=(len(sentences), seq_len))
    for i, (sentence, length) in enumerate(zip(sentences, lengths)):
        ids = filler[i, :length].copy()
        words = [_word_id(w) for w in sentence.split()][: max(0, length - 2)]
        ids[1 : 1 + len(words)] = words
        ids[0] = _CLS
        if length > 1:
            ids[length - 1] = _SEP
        out[i, 0, :length] = ids
        out[i, 1, :length] = 1
    return out


def _generate_split(
    config: SynthConfig,
    split: str,
    world: dict[str, np.ndarray],
    seq: np.random.SeedSequence,
    progress: Progress | None,
) -> dict:
    n = config.sizes[split]
    label_seq, word_seq, *mod_seqs = seq.spawn(2 + len(MODALITIES))
    categorical = bool(config.class_names)
    label_rng = np.random.default_rng(label_seq)
    labels = _categorical_labels(config, n, label_rng) if categorical else _labels(config, n, label_rng)
    data: dict = {"id": [f"{config.name}-{split}-{i:05d}" for i in range(n)]}
    lengths = {}
    for m, mseq in zip(MODALITIES, mod_seqs):
        rng = np.random.default_rng(mseq)
        lengths[m] = _lengths(config, m, n, rng)
        if categorical:
            classes, intensity = labels[m], labels[f"u_{m}"].astype(np.float32)
        else:
            scores = labels[m]
            bound = np.where(scores > 0, config.label_range[1], -config.label_range[0]).astype(np.float32)
            classes, intensity = to_classes(scores), scores / bound
        data[m] = _features(config, m, classes, intensity, lengths[m], world[m], rng, progress)
    data["audio_lengths"] = lengths["audio"]
    data["vision_lengths"] = lengths["vision"]
    if config.with_raw_text or config.with_text_bert:
        word_rng = np.random.default_rng(word_seq)
        if categorical:
            sentences = _emotion_sentences(labels["text"], labels["u_text"], config.class_names, word_rng)
        else:
            sentences = _sentences(labels["text"], max(-config.label_range[0], config.label_range[1]), word_rng)
        if config.with_raw_text:
            data["raw_text"] = sentences
        if config.with_text_bert:
            data["text_bert"] = _text_bert(sentences, lengths["text"], config.seq_lens["text"], word_rng)
    if categorical:  # class indices: int64 for classification_labels, float32 for MMSA's regression key
        data["regression_labels"] = labels["m"].astype(np.float32)
        if config.with_unimodal_labels:
            for m in MODALITIES:
                data[UNIMODAL_KEYS[m]] = labels[m].astype(np.float32)
        data["classification_labels"] = labels["m"]
        data["annotations"] = [config.class_names[c].capitalize() for c in labels["m"]]
        return data
    data["regression_labels"] = labels["m"]
    if config.with_unimodal_labels:
        for m in MODALITIES:
            data[UNIMODAL_KEYS[m]] = labels[m]
    data["classification_labels"] = to_classes(labels["m"])
    data["annotations"] = [ANNOTATIONS[c] for c in data["classification_labels"]]
    return data
