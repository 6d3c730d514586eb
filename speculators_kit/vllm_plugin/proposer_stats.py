"""Early-exit and budget counters: a log line every `interval` seconds, Prometheus counters
(/metrics shows them when PROMETHEUS_MULTIPROC_DIR is set, which `speckit serve` does: only
then does vLLM's API server merge other processes' metrics), and with SPECKIT_PROPOSER_STATS=FILE a JSON file rewritten after
every engine step (tests and benchmarks read it)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from vllm.logger import init_logger

# Under "vllm." so the line goes through vLLM's own handler and format (worker prefix included).
logger = init_logger("vllm.speculators_kit.proposer")
_prometheus: dict | None = None


@dataclass
class Counts:
    steps: int = 0               # engine steps that drafted
    drafts: int = 0              # (request, step) pairs that drafted
    drafts_cut_short: int = 0    # ... that proposed fewer than k tokens
    drafts_empty: int = 0        # ... that proposed none (vLLM's num_drafts does not count these)
    draft_passes: int = 0        # draft forward passes run
    draft_passes_skipped: int = 0  # passes the loop did not need to run (all requests done)
    tokens_proposed: int = 0
    tokens_saved_early_exit: int = 0  # of k per draft, not proposed because confidence fell
    tokens_saved_budget: int = 0      # not proposed because of a token or request budget
    max_tokens_in_step: int = 0
    max_passes_in_step: int = 0
    propose_s: float = 0.0


def _counters() -> dict:
    """Created once per process (prometheus_client refuses a second registration)."""
    global _prometheus
    if _prometheus is None:
        from prometheus_client import Counter

        _prometheus = {
            "cut": Counter("speckit:drafts_cut_short", "Drafts proposing fewer than k tokens"),
            "saved": Counter("speckit:draft_tokens_saved", "Draft tokens not proposed", ["reason"]),
            "skipped": Counter("speckit:draft_passes_skipped", "Draft forward passes not run"),
        }
    return _prometheus


class ProposerStats:
    def __init__(self, interval_s: float):
        self.counts = Counts()
        self.interval_s = interval_s
        self.last_log = time.monotonic()
        self.path = os.environ.get("SPECKIT_PROPOSER_STATS")

    def record(self, k: int, passes: int, lengths: torch.Tensor, exit_lengths: torch.Tensor,
               seconds: float) -> None:
        c, batch = self.counts, lengths.shape[0]
        proposed, exit_kept = int(lengths.sum()), int(exit_lengths.clamp(max=k).sum())
        cut, empty = int((lengths < k).sum()), int((lengths == 0).sum())
        saved_exit, saved_budget = batch * k - exit_kept, exit_kept - proposed
        c.steps += 1
        c.drafts += batch
        c.drafts_cut_short += cut
        c.drafts_empty += empty
        c.draft_passes += passes
        c.draft_passes_skipped += k - passes
        c.tokens_proposed += proposed
        c.tokens_saved_early_exit += saved_exit
        c.tokens_saved_budget += saved_budget
        c.max_tokens_in_step = max(c.max_tokens_in_step, proposed)
        c.max_passes_in_step = max(c.max_passes_in_step, passes)
        c.propose_s += seconds
        prom = _counters()
        prom["cut"].inc(cut)
        prom["saved"].labels(reason="early_exit").inc(saved_exit)
        prom["saved"].labels(reason="budget").inc(saved_budget)
        prom["skipped"].inc(k - passes)
        if self.path:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(asdict(c), f)
            os.replace(tmp, self.path)
        if time.monotonic() - self.last_log >= self.interval_s:
            self.last_log = time.monotonic()
            self.log()

    def log(self) -> None:
        c = self.counts
        logger.info("speculators_kit proposer: %d drafts, %d cut short (%.0f%%), %d tokens proposed, "
                    "saved %d by early exit + %d by budget, %d of %d draft passes skipped",
                    c.drafts, c.drafts_cut_short, 100 * c.drafts_cut_short / max(c.drafts, 1),
                    c.tokens_proposed, c.tokens_saved_early_exit, c.tokens_saved_budget,
                    c.draft_passes_skipped, c.draft_passes + c.draft_passes_skipped)
