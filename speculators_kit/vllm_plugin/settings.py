"""Where the proposer's early-exit and budget settings come from.

Defaults: the draft's config.json, `speculators_kit.proposer`. Serve-time overrides: vLLM's own
`--additional-config` (`LLM(additional_config=...)` offline), under our key:

    --additional-config '{"speculators_kit": {"early_exit_threshold": 0.3, "token_budget": 16}}'

`--speculative-config` cannot carry them: vLLM rejects keys it does not know there. One request
can set its own threshold with `SamplingParams(extra_args={"speckit_early_exit_threshold": x})`
(`"vllm_xargs"` in an OpenAI request body).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from speculators_kit.core.config import ProposerSettings

KEY = "speculators_kit"
REQUEST_THRESHOLD_KEY = "speckit_early_exit_threshold"


def draft_defaults(draft_path: str | None) -> dict:
    config = Path(str(draft_path)) / "config.json"
    if not draft_path or not config.is_file():
        return {}
    return dict((json.loads(config.read_text()).get(KEY) or {}).get("proposer") or {})


def merged_settings(draft_path: str | None, override: dict) -> ProposerSettings:
    """The draft's config.json defaults under the serve-time overrides (pydantic errors pass through)."""
    return ProposerSettings(**{**draft_defaults(draft_path), **override})


def resolve_settings(vllm_config) -> ProposerSettings:
    """The settings for this engine; a ValueError naming the bad key and where it came from."""
    spec = vllm_config.speculative_config
    extra = vllm_config.additional_config if isinstance(vllm_config.additional_config, dict) else {}
    override = extra.get(KEY) or {}
    if not isinstance(override, dict):
        msg = (f"speculators_kit: --additional-config's {KEY!r} must be an object like "
               f'{{"early_exit_threshold": 0.3}}, got {override!r}')
        raise ValueError(msg)  # noqa: TRY004 (ValueError, as for every other bad setting)
    try:
        return merged_settings(spec.model if spec is not None else None, override)
    except ValidationError as e:
        where = "--additional-config" if override else f"{spec.model}/config.json ({KEY}.proposer)"
        fields = ", ".join(ProposerSettings.model_fields)
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"speculators_kit: bad proposer settings in {where}: {problems} "
                         f"(known settings: {fields})") from None


def request_threshold_problem(extra_args: dict | None) -> str | None:
    """Checked in the front end (a bad value is the request's 400, never the engine's crash)."""
    value = (extra_args or {}).get(REQUEST_THRESHOLD_KEY)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        return None
    return f"extra_args {REQUEST_THRESHOLD_KEY} must be a number in [0, 1) (0 turns early exit off), got {value!r}"


def request_threshold(sampling_params, default: float | None) -> float | None:
    extra = getattr(sampling_params, "extra_args", None) or {}
    value = extra.get(REQUEST_THRESHOLD_KEY, default)
    return None if not value else float(value)
