"""vLLM's EAGLE proposer with dynamic early exit, token budgets and a cheaper greedy draft step.

Installed in place of `EagleProposer` in vLLM's model runner (see `install`), so `method: eagle`
and `eagle3` drive it. What it changes:

- greedy draft tokens are the argmax of the draft's own (reduced) vocabulary, mapped through
  d2t, instead of vLLM's scatter into a full-vocabulary row of -inf first: same tokens (d2t is
  increasing, so the first maximum is the same one), one allocation and pass fewer per step;
- with early exit or a budget configured (settings.py), or in a step where one request sets its
  own early-exit threshold, it records the draft's confidence in each token, stops the draft loop
  as soon as no later step could be proposed (core/draft_budget.drafting_done), and hands the
  scheduler only the chosen prefix of each request's draft (core/draft_budget.draft_lengths).
  The scheduler verifies a shorter draft like any other, so outputs are unchanged.

vLLM's draft loop is one long method; rather than copy it, the loop is left early by raising
from the per-step sampling hook, which vLLM calls outside any forward context.
"""

from __future__ import annotations

import math
import time

import torch
from vllm.logger import init_logger
from vllm.v1.outputs import DraftTokenIds
from vllm.v1.spec_decode.eagle import EagleProposer

from speculators_kit.core.draft_budget import draft_lengths, drafting_done
from speculators_kit.vllm_plugin.proposer_stats import ProposerStats
from speculators_kit.vllm_plugin.settings import REQUEST_THRESHOLD_KEY, request_threshold, resolve_settings

logger = init_logger("vllm.speculators_kit.proposer")


class _DraftingDone(Exception):
    """No later draft step could be proposed: leave vLLM's loop."""


class _EagleFamily(type):
    """The runner's isinstance checks name `EagleProposer`, which `install` rebinds to our class;
    vLLM's other subclasses of the original (e.g. Step3p5MTPProposer) must still pass them."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, EagleProposer)


class SpeckitEagleProposer(EagleProposer, metaclass=_EagleFamily):
    def __init__(self, vllm_config, device, runner=None):
        super().__init__(vllm_config, device, runner)
        self.speckit_runner = runner  # request ids and sampling params of the batch rows
        self.speckit = resolve_settings(vllm_config)
        # Early exit and budgets cut a sequential draft; these vLLM modes draft another way.
        self.speckit_fixed_only = bool(self.use_local_argmax_reduction or self.use_heterogeneous_vocab
                                       or self.parallel_drafting)
        if self.speckit.active and self.speckit_fixed_only:
            raise ValueError("speculators_kit: early exit and token budgets need sequential drafting "
                             "without use_local_argmax_reduction / use_heterogeneous_vocab; drop one")
        self.speckit_stats = ProposerStats(self.speckit.log_interval_s)
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None
        self._thresholds: torch.Tensor | None = None
        self._last_conf: torch.Tensor | None = None
        self._proposal: tuple[list[str], list[int]] | None = None
        self._warned_fixed_only = False
        # Always: a request's own threshold can cut its draft even with no engine setting on.
        if runner is not None and not self.speckit_fixed_only:
            _hand_over_prefixes(runner, self)
        if self.speckit.active:
            logger.info("speculators_kit proposer: %s", self.speckit.model_dump(exclude_none=True))

    # -- cheap greedy step ------------------------------------------------------------------
    def _greedy_sample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        model = self.model
        d2t = getattr(model, "draft_id_to_target_id", None)
        if self.use_local_argmax_reduction or self.use_heterogeneous_vocab or not hasattr(model, "lm_head"):
            return super()._greedy_sample(hidden_states)
        if d2t is None:
            logits = model.compute_logits(hidden_states)
        else:
            logits = model.logits_processor(model.lm_head, hidden_states)
        ids = logits.argmax(dim=-1)
        if self._steps is not None:  # confidence = softmax probability of the argmax
            top = logits.gather(1, ids[:, None]).squeeze(1).float()
            self._last_conf = torch.exp(top - torch.logsumexp(logits.float(), dim=-1))
        return ids if d2t is None else ids + d2t[ids]

    # -- early exit / budgets ---------------------------------------------------------------
    def _sample_draft_tokens(self, hidden_states, sampling_metadata):
        ids, probs = super()._sample_draft_tokens(hidden_states, sampling_metadata)
        if self._steps is None:
            return ids, probs
        if probs is not None:  # sampled draft: confidence = probability of the sampled token
            conf = probs.gather(1, ids[:, None].long()).squeeze(1).float()
        else:
            conf = self._last_conf
        if self._thresholds is None:
            self._thresholds = self._request_thresholds(ids.shape[0])
        self._steps.append((ids, conf, probs))
        s = self.speckit
        if len(self._steps) < self.num_speculative_tokens and drafting_done(
                self._confidences(), self._thresholds, s.token_budget, s.request_budget,
                self.num_speculative_tokens):
            raise _DraftingDone
        return ids, probs

    def _confidences(self) -> torch.Tensor:
        return torch.stack([conf for _, conf, _ in self._steps], dim=1).cpu()

    def _request_ids(self, batch_size: int) -> list[str]:
        return list(self.speckit_runner.input_batch.req_ids[:batch_size])

    def _thresholds_of(self, req_ids, default: float | None) -> list[float | None]:
        """Each request's early-exit threshold (its own, else `default`); None: no early exit."""
        requests = self.speckit_runner.requests
        return [request_threshold(getattr(requests.get(r), "sampling_params", None), default)
                for r in req_ids]

    def _request_thresholds(self, batch_size: int) -> torch.Tensor:
        values = self._thresholds_of(self._request_ids(batch_size), self.speckit.early_exit_threshold)
        return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)

    def _a_request_asks(self) -> bool:
        """Does a request in the batch set its own early-exit threshold? Then this step drafts with
        early exit even though the engine has no setting on (requests without one draft k)."""
        if self.speckit_runner is None:
            return False
        asks = any(v is not None for v in self._thresholds_of(self.speckit_runner.input_batch.req_ids, None))
        if asks and self.speckit_fixed_only:
            if not self._warned_fixed_only:
                self._warned_fixed_only = True
                logger.warning("speculators_kit: a request set %s, but this engine drafts with "
                               "use_local_argmax_reduction / use_heterogeneous_vocab / parallel "
                               "drafting, which early exit cannot cut; drafting k tokens",
                               REQUEST_THRESHOLD_KEY)
            return False
        return asks

    def propose(self, num_speculative_tokens, *args, **kwargs):
        if not (self.speckit.active or self._a_request_asks()):
            return self._timed_fixed_k(num_speculative_tokens, *args, **kwargs)
        began = time.perf_counter()
        self._steps, self._thresholds = [], None
        try:
            try:
                drafts = super().propose(num_speculative_tokens, *args, **kwargs)
            except _DraftingDone:
                drafts = torch.stack([ids for ids, _, _ in self._steps], dim=1)
                if self._steps[0][2] is not None:
                    self._last_draft_probs = torch.stack([p for _, _, p in self._steps], dim=1).contiguous()
            if self._steps:
                self._choose_prefixes(num_speculative_tokens, began)
        finally:
            self._steps = None
        return drafts

    def _timed_fixed_k(self, k, *args, **kwargs):
        """Plain vLLM drafting; timed for the stats file when one is asked for (benchmarks)."""
        if not self.speckit_stats.path:
            return super().propose(k, *args, **kwargs)
        began = time.perf_counter()
        drafts = super().propose(k, *args, **kwargs)
        full = torch.full((drafts.shape[0],), drafts.shape[1])
        self.speckit_stats.record(k=k, passes=drafts.shape[1], lengths=full, exit_lengths=full,
                                  seconds=time.perf_counter() - began)
        return drafts

    def _choose_prefixes(self, k: int, began: float) -> None:
        s = self.speckit
        conf = self._confidences()
        lengths = draft_lengths(conf, self._thresholds, s.token_budget, s.request_budget)
        exit_only = draft_lengths(conf, self._thresholds, None, None)
        exit_only[exit_only == conf.shape[1]] = k  # still sure when the loop stopped: not exited
        self._proposal = (self._request_ids(conf.shape[0]), lengths.tolist())
        self.speckit_stats.record(k=k, passes=conf.shape[1], lengths=lengths, exit_lengths=exit_only,
                                  seconds=time.perf_counter() - began)


def _hand_over_prefixes(runner, proposer: SpeckitEagleProposer) -> None:
    """The runner hands the scheduler [batch, width] drafts; cut each to its chosen prefix."""
    take = runner.take_draft_token_ids

    def take_draft_token_ids():
        out = take()
        proposal, proposer._proposal = proposer._proposal, None
        if out is None or proposal is None:
            return out
        length = dict(zip(*proposal))
        return DraftTokenIds(out.req_ids, [ids[:length.get(r, len(ids))]
                                           for r, ids in zip(out.req_ids, out.draft_token_ids)])

    runner.take_draft_token_ids = take_draft_token_ids


def install(gpu_model_runner_module) -> None:
    """Make vLLM's model runner build our proposer for `method: eagle` / `eagle3`."""
    gpu_model_runner_module.EagleProposer = SpeckitEagleProposer
