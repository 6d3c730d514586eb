"""A vLLM KV connector that writes captured hidden states synchronously, one file per request.

vLLM's `extract_hidden_states` method caches the chosen layers' hidden states in a cache-only
KV layer; a connector copies them out when a request finishes. The stock
`ExampleHiddenStatesConnector` copies through CUDA streams into pinned memory, which fails on
CPU. This subclass keeps its scheduler side and replaces the copy with a plain synchronous
read, written under a temp name and renamed, into the store's staging folder as
`<speckit_key>.safetensors` (`speckit_key` comes from the request's kv_transfer_params).
Requests marked `speckit_skip` (e.g. Magpie user turns) are not saved.

Loaded by vLLM in the engine process via `kv_connector_module_path`; imports vLLM freely.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
)


class _Done:
    """Stands in for the CUDA event the base class polls: our writes finish before we return."""

    @staticmethod
    def query() -> bool:
        return True


class SpeckitHiddenStatesConnector(ExampleHiddenStatesConnector):
    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        self.use_lock = False  # files appear by atomic rename; readers need no lock

    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        params = request.kv_transfer_params or {}
        self._request_filenames.pop(request.request_id, None)
        if params.get("speckit_skip") or "speckit_key" not in params:
            return False, None
        if params.get("include_output_tokens"):
            # The last token was sampled, never fed back: it has no hidden state.
            token_ids = torch.tensor(list(request.all_token_ids)[:-1])
        else:
            token_ids = torch.tensor(list(request.prompt_token_ids))
        filename = os.path.join(self._storage_path, f"{params['speckit_key']}.safetensors")
        self._pending_saves[request.request_id] = PendingSave(
            req_id=request.request_id, filename=filename, token_ids=token_ids,
            block_ids=list(block_ids))
        return True, {"hidden_states_path": filename}

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        blocks = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(self._block_size, dtype=torch.long)
        slots = (offsets[None] + blocks[:, None] * self._block_size).flatten()
        num_tokens = pending.token_ids.shape[0]
        hidden = extract_from_kv_cache(self._kv_cache, slots, num_tokens).clone()
        tmp = pending.filename + ".tmp"
        save_file({"hidden_states": hidden, "token_ids": pending.token_ids.clone()}, tmp)
        os.replace(tmp, pending.filename)
        self._req_copy_events[pending.req_id] = _Done()
