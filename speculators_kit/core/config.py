"""The speculator config: what `config.json` of a draft directory holds.

The layout is the one stock vLLM 0.32 loads as a "speculators format" draft (top-level
`speculators_config`, no `model_type`), plus our own fields under one namespaced key,
`speculators_kit`. Unknown keys are kept (vLLM and other tools read them) but our own
section is strict.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from speculators_kit.core.errors import SpecKitError

FORMAT_VERSION = 1
ARCHES = ("eagle3", "eagle")  # speculators_model_type values we read and write
LAYER_TYPES = ("llama", "qwen3")


class ProposalMethod(BaseModel):
    model_config = ConfigDict(extra="allow")
    proposal_type: str = "greedy"
    speculative_tokens: int = Field(5, ge=1, le=64)


class Verifier(BaseModel):
    model_config = ConfigDict(extra="allow")
    name_or_path: str
    architectures: list[str] = Field(default_factory=list)


class SpeculatorsSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    algorithm: str
    proposal_methods: list[ProposalMethod]
    default_proposal_method: str = "greedy"
    verifier: Verifier

    @field_validator("proposal_methods")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("proposal_methods must hold at least one method")
        return v


class MoESpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_experts: int = Field(0, ge=0)
    top_k: int = Field(2, ge=1)
    intermediate_size: int | None = None  # per expert; defaults to the layer's intermediate_size

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.num_experts and self.top_k > self.num_experts:
            raise ValueError(f"moe.top_k {self.top_k} exceeds moe.num_experts {self.num_experts}")
        return self


class ProposerSettings(BaseModel):
    """Proposer features our vLLM plugin adds (see core/draft_budget.py). Defaults live in the
    draft's config.json (`speculators_kit.proposer`); `--additional-config` overrides them."""

    model_config = ConfigDict(extra="forbid")
    # A request stops drafting at the first token whose draft probability is below this; 0 turns
    # early exit off (so a serve-time override can turn off a draft's default, as a request can).
    early_exit_threshold: float | None = Field(None, ge=0, lt=1)
    # Draft tokens proposed per engine step, whole batch; the most confident are kept.
    token_budget: int | None = Field(None, ge=1)
    # Draft tokens proposed per request per engine step.
    request_budget: int | None = Field(None, ge=1)
    # Seconds between two log lines of the proposer's counters.
    log_interval_s: float = Field(30.0, gt=0)

    @property
    def active(self) -> bool:
        budgets = (self.token_budget, self.request_budget)
        return bool(self.early_exit_threshold) or any(v is not None for v in budgets)


class KitSection(BaseModel):
    """Our own fields. `target_fingerprint` ties the draft to exactly one target."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    target_fingerprint: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    moe: MoESpec = Field(default_factory=MoESpec)
    proposer: ProposerSettings = Field(default_factory=ProposerSettings)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v):
        if v > FORMAT_VERSION:
            raise ValueError(
                f"format_version {v} is newer than this speculators_kit understands "
                f"({FORMAT_VERSION}); upgrade speculators-kit"
            )
        return v


class LayerConfig(BaseModel):
    """`transformer_layer_config`: the decoder-layer hyper-parameters (HF names)."""

    model_config = ConfigDict(extra="allow")
    model_type: Literal["llama", "qwen3"] = "llama"
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    num_hidden_layers: int = Field(1, ge=1)
    rms_norm_eps: float = 1e-5
    vocab_size: int
    max_position_embeddings: int = 8192
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_parameters: dict[str, Any] | None = None
    rope_theta: float | None = None  # older transformers spelling, read only

    @model_validator(mode="after")
    def _fill(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta or 10000.0}
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        return self

    @property
    def rope_theta_value(self) -> float:
        return float(self.rope_parameters.get("rope_theta", self.rope_theta or 10000.0))


class SpeculatorConfig(BaseModel):
    """The whole config.json of a draft directory."""

    model_config = ConfigDict(extra="allow")
    speculators_model_type: Literal["eagle3", "eagle"]
    architectures: list[str] = Field(default_factory=list)
    speculators_config: SpeculatorsSection
    transformer_layer_config: LayerConfig
    draft_vocab_size: int = Field(ge=1)
    target_hidden_size: int | None = None
    eagle_aux_hidden_state_layer_ids: list[int] | None = None
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    fc_bias: bool = False  # EAGLE-1 / HASS checkpoints carry a bias on fc
    speculators_kit: KitSection = Field(default_factory=KitSection)

    @model_validator(mode="after")
    def _check(self):
        layer = self.transformer_layer_config
        if self.draft_vocab_size > layer.vocab_size:
            raise ValueError(
                f"draft_vocab_size {self.draft_vocab_size} exceeds the target vocab "
                f"{layer.vocab_size}"
            )
        aux = self.eagle_aux_hidden_state_layer_ids
        if self.speculators_model_type == "eagle3" and not aux:
            raise ValueError("eagle3 drafts need eagle_aux_hidden_state_layer_ids")
        if aux and (min(aux) < 0 or len(set(aux)) != len(aux)):
            raise ValueError(f"eagle_aux_hidden_state_layer_ids {aux} must be distinct target layer "
                             "indices >= 0")
        return self

    # Convenience accessors used by the heads.
    @property
    def arch(self) -> str:
        return self.speculators_model_type

    @property
    def layer(self) -> LayerConfig:
        return self.transformer_layer_config

    @property
    def num_speculative_tokens(self) -> int:
        return self.speculators_config.proposal_methods[0].speculative_tokens

    @property
    def fc_input_size(self) -> int:
        hidden = self.target_hidden_size or self.layer.hidden_size
        if self.arch == "eagle3":
            return hidden * len(self.eagle_aux_hidden_state_layer_ids)
        return hidden + self.layer.hidden_size

    @property
    def feature_size(self) -> int:
        """Width of the target features the draft reads per token (before fc)."""
        if self.arch == "eagle3":
            return self.fc_input_size
        return self.target_hidden_size or self.layer.hidden_size

    def to_json_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        out["transformer_layer_config"].pop("rope_theta", None)
        return out


def parse_config(data: dict[str, Any], source: str) -> SpeculatorConfig:
    """Validate a config.json dict; `source` names the file in errors."""
    if "speculators_config" not in data:
        hint = ""
        if "model_type" in data:
            hint = (
                f" (it is a plain '{data['model_type']}' model config: is this the target? "
                "For SafeAILab/EAGLE checkpoints run `speckit convert`)"
            )
        raise SpecKitError(f"{source} is not a speculator config: no 'speculators_config' key{hint}")
    kind = data.get("speculators_model_type")
    if kind not in ARCHES:
        raise SpecKitError(
            f"{source}: speculators_model_type {kind!r} is not supported; known: {', '.join(ARCHES)}"
        )
    try:
        return SpeculatorConfig.model_validate(data)
    except Exception as err:  # pydantic.ValidationError: reword into one line per problem
        raise SpecKitError(f"{source}: invalid speculator config: {one_line(err)}") from err


def one_line(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    parts = []
    for e in errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")  # our validators' messages name the keys
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
