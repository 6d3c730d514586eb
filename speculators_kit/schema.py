"""YAML configs: one strict pydantic model per kind, dotted `--set` overrides re-validated.

Errors name the file, the dotted key and what is allowed; the CLI prints them as one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from speculators_kit.core.config import ProposerSettings
from speculators_kit.core.errors import SpecKitError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSection(Strict):
    path: str = "smollm2-135m-instruct"


class DraftRef(Strict):
    path: str


class SamplingSection(Strict):
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(128, ge=1)
    num_speculative_tokens: int = Field(5, ge=1, le=16)
    seed: int = 0


class GenerateConfig(Strict):
    """`speckit generate --config FILE`: the reference speculative loop on a list of prompts."""

    target: TargetSection = Field(default_factory=TargetSection)
    draft: DraftRef
    prompts: list[str] = Field(min_length=1)
    sampling: SamplingSection = Field(default_factory=SamplingSection)


class DataSection(Strict):
    source: Literal["jsonl", "parquet", "hf", "self"] = "jsonl"
    path: str | None = None  # file for jsonl/parquet, dataset name for hf
    subset: str | None = None
    split: str = "train"
    format: Literal["prompt", "chat", "tokens"] = "prompt"
    prompt_field: str = "prompt"
    response_field: str | None = None  # with regenerate off: the dataset's answer
    limit: int | None = Field(None, ge=1)
    max_length: int = Field(1024, ge=8)
    seed: int = 0  # `source: self` sampling
    # `source: self`: user turns per conversation; turn t continues turn t-1's conversation
    # (the answer included) with the target's own follow-up question. Each turn is a sample.
    turns: int = Field(1, ge=1, le=8)
    # `source: self`: openings the first questions start with, taken in turn (question i opens
    # with lead_ins[i % len]); the target writes the rest. "" leaves a question free. Broadens
    # what a small target asks itself (it rarely asks for code or maths unprompted). `general`:
    # the built-in list (datagen/self_chat.py GENERAL_LEAD_INS).
    lead_ins: list[str] | Literal["general"] = Field(default_factory=list)

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source != "self" and not self.path:
            raise ValueError(f"data.path is required for source {self.source}")
        if self.source == "self" and not self.limit:
            raise ValueError("source self needs data.limit (how many conversations to make)")
        if self.source != "self" and self.turns > 1:
            raise ValueError(f"data.turns is for source self (the target writes the follow-up "
                             f"questions); a {self.source} dataset brings its own turns: drop data.turns")
        if self.source != "self" and self.lead_ins:
            raise ValueError(f"data.lead_ins opens the questions of source self; a {self.source} "
                             f"dataset brings its own questions: drop data.lead_ins")
        return self


class RegenerateSection(Strict):
    enabled: bool = False
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)


class CaptureSection(Strict):
    backend: Literal["vllm", "hf"] = "vllm"
    layers: Literal["auto"] | list[int] = "auto"
    dtype: Literal["bf16", "fp16", "fp32", "fp8"] = "bf16"
    batch_size: int = Field(64, ge=1)
    # the target's compute dtype; auto: bfloat16 where the CPU has bf16 instructions (AMX, AVX512-BF16)
    # or a GPU runs it, else float32
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _layers_once(self):
        if self.layers != "auto":  # a repeat is most likely a typo for another layer
            twice = sorted({i for i in self.layers if self.layers.count(i) > 1})
            if twice:
                raise ValueError(f"capture.layers {self.layers} lists {twice} more than once: "
                                 f"give each layer id once")
        return self


class StoreOutput(Strict):
    dir: str
    shard_samples: int = Field(256, ge=1)


class DatagenConfig(Strict):
    """`speckit datagen FILE`: run the target over a dataset, store its hidden states."""

    target: TargetSection = Field(default_factory=TargetSection)
    data: DataSection
    regenerate: RegenerateSection = Field(default_factory=RegenerateSection)
    capture: CaptureSection = Field(default_factory=CaptureSection)
    output: StoreOutput

    @model_validator(mode="after")
    def _self_needs_regenerate(self):
        if self.data.source == "self" and not self.regenerate.enabled:
            raise ValueError("data.source self makes prompts only; set regenerate.enabled: true "
                             "so the target answers them")
        return self


class TrainData(Strict):
    stores: list[str] = Field(min_length=1)
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(1024, ge=8)
    seed: int = 0
    # Several samples per row of min(max_length, micro_batch_tokens) tokens, attention kept
    # within each sample: a micro-batch carries real tokens where it would carry padding
    # (1929 vs 1726 of 2048 on the quickstart's full store), at the same cost per real token.
    packing: bool = True


class MoESection(Strict):
    experts: int = Field(0, ge=0)
    top_k: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.experts and self.top_k > self.experts:
            raise ValueError(f"draft.moe.top_k {self.top_k} > draft.moe.experts {self.experts}")
        return self


NORM_KEYS = ("norm_before_fc", "fc_norm", "norm_before_residual", "norm_output")


def eagle3_norms(draft) -> dict[str, bool]:
    """The draft section's norm flags with the unset ones resolved (see DraftSection)."""
    fc_norm = bool(draft.fc_norm)
    defaults = {"norm_before_fc": not fc_norm, "fc_norm": fc_norm, "norm_before_residual": True,
                "norm_output": True}
    return {key: defaults[key] if getattr(draft, key) is None else getattr(draft, key) for key in NORM_KEYS}


class DraftSection(Strict):
    arch: Literal["eagle3", "eagle", "hass"] = "eagle3"
    num_layers: int = Field(1, ge=1, le=8)
    draft_vocab_size: int | None = Field(None, ge=1)  # None: the target's whole vocabulary
    # random: the `--budget full` draft's held-out τ(k=5) at step 1500 was 3.10 against 2.88 from
    # target-last-layer (which leads early: 1.99 vs 1.89 at step 375, so short runs keep it).
    init: Literal["random", "target-last-layer"] = "random"
    moe: MoESection = Field(default_factory=MoESection)
    num_speculative_tokens: int = Field(5, ge=1, le=16)  # written into the draft's config
    # EAGLE-3 norm placement, the speculators-format keys of the same names (eagle3 only).
    # Unset: norm_before_fc, norm_before_residual and norm_output on (as the speculators
    # trainer does), fc_norm off. With them on, the `--budget full` draft's held-out τ(k=5) at
    # step 750 was 2.50 instead of 2.13, and acceptance rose with the position instead of falling.
    norm_before_fc: bool | None = None  # one RMSNorm over the concatenated aux hidden states
    fc_norm: bool | None = None  # one RMSNorm per aux hidden state (EAGLE-3.1)
    norm_before_residual: bool | None = None  # the first layer's residual is the normed hidden state
    norm_output: bool | None = None  # the normed output is what the next draft step reads
    train_lm_head: bool = False  # eagle3: train the lm_head (starts as the target's rows)

    @model_validator(mode="after")
    def _eagle3_only_keys(self):
        set_keys = [n for n in (*NORM_KEYS, "train_lm_head") if getattr(self, n)]
        if set_keys and self.arch != "eagle3":
            raise ValueError(f"draft.{set_keys[0]} applies to draft.arch eagle3 only; remove it "
                             f"for {self.arch}")
        if self.norm_before_fc and self.fc_norm:
            raise ValueError("draft.norm_before_fc and draft.fc_norm are two ways to norm the fc "
                             "input; set one of them")
        return self


class LossSection(Strict):
    kind: Literal["kl", "ce", "tv"] = "kl"
    ttt_steps: int = Field(3, ge=1, le=16)
    step_weights: Literal["decay", "uniform"] | list[float] = "uniform"
    # whose target distributions train the draft: the answers' (what it drafts when serving) or
    # every stored token's, prompts too; the held-out eval scores answers either way
    tokens: Literal["answer", "all"] = "answer"
    # EAGLE-1's augmentation: in training, each input feature gets uniform noise of up to this share
    # of its layer's RMS (per token), so the draft learns to read the slightly-off features it
    # meets when serving; 0 = off
    feature_noise: float = Field(0.0, ge=0, le=1)
    # in training, this share of each draft layer's attention and MLP outputs is zeroed (residual
    # dropout, the rest scaled up to match); 0 = off
    dropout: float = Field(0.0, ge=0, lt=1)
    # token-alignable training (GRIFFIN, arXiv 2502.11018): a step > 0 trains only the positions
    # whose chain the draft kept, i.e. every earlier step's draft had the token fed next among its
    # top `align` tokens (1: what a greedy chain needs); the others are states serving never
    # reaches. 0 = off (every position trains every step)
    align: int = Field(0, ge=0, le=64)
    # feature alignment (EAGLE-1's regression, as HASS keeps it beside the distillation): in
    # training, adds this weight times the squared error of each step's vector for the lm_head
    # (the draft's normed output), relative to the squared norm of the target's normed last layer
    # at the predicted position. The two share the lm_head, so this matches the target's logits
    # over the whole vocabulary, not only the draft vocabulary's probabilities. 0 = off
    feature_weight: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _weights_per_step(self):
        if isinstance(self.step_weights, list) and len(self.step_weights) != self.ttt_steps:
            raise ValueError(f"loss.step_weights has {len(self.step_weights)} entries for "
                             f"ttt_steps {self.ttt_steps}")
        return self


def _default(section: BaseModel, key: str):
    return type(section).model_fields[key].default


class OptimSection(Strict):
    # muon: Muon (momentum, then orthogonalized updates) on the draft's weight matrices, AdamW at
    # `lr` on the rest (norms, biases); DeepSpeed builds it, as ZeRO splits the matrices it needs whole
    kind: Literal["adamw", "muon"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    muon_lr: float = Field(0.02, gt=0)  # in spectral norm per update, as Muon's authors use it
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine decay floor
    # > 0: evaluations and saved drafts use an exponential moving average of the weights with this
    # decay per step (bias-corrected, as Adam's moments); the optimizer steps the raw ones
    ema: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _muon_keys_need_muon(self):
        # by value, not by which keys were written: a resolved config (every key) must validate again
        unused = [k for k in ("muon_lr", "muon_momentum") if getattr(self, k) != _default(self, k)]
        if unused and self.kind != "muon":
            raise ValueError(f"optim.{unused[0]} applies to optim.kind muon only; set optim.kind: muon "
                             f"or remove it")
        if self.kind == "muon" and self.grad_clip != _default(self, "grad_clip"):
            # ZeRO 1/2 clip Muon's orthogonalized update, not the gradient: at 1.0 that shrank the
            # update ~20x on a 1-layer draft, while ZeRO 0 clipped the gradient before Muon
            raise ValueError("optim.grad_clip does not apply to optim.kind muon (its updates are "
                             "normalized, and DeepSpeed's ZeRO 1/2 would clip the update itself); remove it")
        return self


class TrainLoop(Strict):
    max_steps: int = Field(2000, ge=1)
    micro_batch_tokens: int = Field(4096, ge=16)
    grad_accum: int = Field(1, ge=1)
    eval_every: int = Field(200, ge=1)
    save_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    eval_samples: int = Field(64, ge=1)  # held-out samples per evaluation (at most)
    log_every: int = Field(10, ge=1)


DERIVED_DS_KEYS = {
    "train_batch_size": "from train.micro_batch_tokens, grad_accum and --nproc",
    "train_micro_batch_size_per_gpu": "from train.micro_batch_tokens",
    "gradient_accumulation_steps": "from train.grad_accum",
    "gradient_clipping": "from optim.grad_clip",
    "bf16": "from precision", "fp16": "from precision", "amp": "from precision",
    "optimizer": "from the optim section", "scheduler": "from optim.warmup_steps and train.max_steps",
}


class DeepSpeedSection(BaseModel):
    """`zero_stage` plus any extra DeepSpeed keys; keys the schema derives are refused."""

    model_config = ConfigDict(extra="allow")
    zero_stage: int = Field(2, ge=0, le=2)

    @model_validator(mode="after")
    def _no_derived_keys(self):
        for key, value in (self.model_extra or {}).items():
            if key in DERIVED_DS_KEYS:
                raise ValueError(f"deepspeed.{key} is derived ({DERIVED_DS_KEYS[key]}); remove it")
            if key == "zero_optimization" and isinstance(value, dict) and "stage" in value:
                raise ValueError("deepspeed.zero_optimization.stage is set by deepspeed.zero_stage")
        return self


class TrainOutput(Strict):
    dir: str


class LoggingSection(Strict):
    tensorboard: bool = True


class TrainConfig(Strict):
    """`speckit train FILE`: fit a draft head on hidden-state stores with DeepSpeed."""

    target: TargetSection = Field(default_factory=TargetSection)
    data: TrainData
    draft: DraftSection = Field(default_factory=DraftSection)
    loss: LossSection = Field(default_factory=LossSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainLoop = Field(default_factory=TrainLoop)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    # auto: bf16 where the hardware computes it natively (CUDA, AVX512-BF16/AMX CPUs), else fp32;
    # an AVX2-only CPU emulates bf16 matmuls and trains ~20x slower in bf16 than in fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    output: TrainOutput
    logging: LoggingSection = Field(default_factory=LoggingSection)
    # Serving defaults written into every draft this run saves (config.json, speculators_kit.proposer):
    # what vLLM with our plugin uses unless --additional-config overrides it.
    proposer: ProposerSettings = Field(default_factory=ProposerSettings)


KINDS: dict[str, type[Strict]] = {"generate": GenerateConfig, "datagen": DatagenConfig,
                                  "train": TrainConfig}


def kind_of(path: Path, data: dict[str, Any]) -> str:
    """The schema kind: the file's folder under configs/ (configs/<kind>/x.yaml), else the start of
    its name, as in the configs `speckit quickstart` writes (OUT/configs/train.yaml, datagen-lead-ins.yaml)."""
    for kind in (path.parent.name, re.split(r"[-_.]", path.name)[0]):
        if kind in KINDS:
            return kind
    raise SpecKitError(
        f"{path}: cannot tell the config kind from its folder {path.parent.name!r} or its name; pass "
        f"--kind, put it under configs/<kind>/ or name it <kind>.yaml / <kind>-*.yaml, with kind one of: "
        f"{', '.join(KINDS)}"
    )


def apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    """`a.b=c`: c is parsed as YAML (numbers, bools, lists). The path must exist in the schema;
    that is checked when the result is validated."""
    import yaml

    if "=" not in assignment:
        raise SpecKitError(f"--set {assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecKitError(f"--set {assignment!r}: empty key segment in {key!r}")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecKitError(
                f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section ({source})"
            )
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path, kind: str | None = None, overrides: list[str] = ()) -> Strict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecKitError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecKitError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SpecKitError(f"{path}: the top level must be a mapping of sections")
    for assignment in overrides:
        apply_override(data, assignment, str(path))
    kind = kind or kind_of(path, data)
    return validate(KINDS[kind], data, str(path))


def validate(schema: type[Strict], data: dict[str, Any], source: str) -> Strict:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise SpecKitError(f"{source}: {describe(schema, err)}") from err


def describe(schema: type[BaseModel], err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, e["loc"][:-1])
            parts.append(f"unknown key {key!r} (allowed here: {', '.join(allowed)})")
        elif e["type"] == "missing":
            parts.append(f"missing required key {key!r}")
        elif e["type"] == "value_error":  # our own validators: the message says it all
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(msg if not key or msg.startswith(key + ".") else f"{key}: {msg}")
        else:
            parts.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


def _allowed_keys(schema: type[BaseModel], loc) -> list[str]:
    model = schema
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)
