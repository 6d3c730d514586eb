"""`data.source: self`: conversations the target writes itself (Magpie, arXiv 2406.08464).

Turn 1: the target completes its chat template's user-turn opening, which gives a question;
it answers it when the store is captured. `data.lead_ins` add the first words of the question
to that opening ("Write a Python function that"), which steers the topic and keeps the rest the
target's own words. Turn t > 1 (`data.turns`): the target continues
each turn t-1 conversation, answer included, with the next user turn (a follow-up question
such as "now make it shorter"), and answers that. Chat benchmarks like MT-bench ask exactly
such second turns, where answers reuse the first answer's words.

The questions of every turn are made once and kept beside the store (`.self_prompts*.json`),
so a resumed run answers the same questions instead of sampling new ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from speculators_kit.core.store import StoreReader, sample_id, write_json_atomic
from speculators_kit.datagen.prepare import prompt_ids, user_prefix_ids

SELF_PROMPTS = ".self_prompts.json"
QUESTION_TOKENS = 96
# `data.lead_ins: general`: task openings across what chat benchmarks ask (code, arithmetic,
# science, writing, role play, extraction, reasoning), written for this list, one left free.
GENERAL_LEAD_INS = [
    "",
    "Write a Python function that",
    "Explain how",
    "Solve this math problem:",
    "Write a short story about",
    "Imagine you are",
    "Summarize the following text:",
    "What is the difference between",
    "Write a program in",
    "A train leaves",
    "Describe the process of",
    "Write an email to",
    "Extract the",
    "Why does",
    "Write a SQL query that",
    "Calculate",
    "Write a poem about",
    "Compare",
    "What are the main causes of",
    "Implement a",
    "Rewrite the following paragraph",
    "Pretend to be",
    "What would happen if",
    "Explain the concept of",
    "Given the following data,",
    "Write a persuasive essay",
    "In physics,",
    "Write a JavaScript function",
    "If a rectangle",
    "Give me a list of",
    "How did",
    "Debug this code:",
]


def lead_ins(data) -> list[str]:
    return GENERAL_LEAD_INS if data.lead_ins == "general" else list(data.lead_ins)


def cache_name(turn: int) -> str:
    return SELF_PROMPTS if turn == 1 else f".self_prompts.turn{turn}.json"


def cached(out_dir: Path, turn: int, key: dict, make) -> list[dict]:
    """The turn's records from its cache file, or made and saved."""
    path = out_dir / cache_name(turn)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved["records"]
    records = make()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "records": records})
    return records


def _questions(backend, tokenizer, prefixes: list[list[int]], seed: int, progress: str) -> list[str | None]:
    """One sampled user turn per prefix (None when it came out too short to be a question)."""
    seeds = [seed * 1_000_003 + i for i in range(len(prefixes))]
    outs = backend.generate(prefixes, QUESTION_TOKENS, 1.0, seeds, progress=progress)
    texts = [tokenizer.decode(out, skip_special_tokens=True).strip() for out in outs]
    return [t if len(t) >= 8 else None for t in texts]


def first_questions(backend, tokenizer, data) -> list[dict]:
    """Turn 1: unique questions, seeded. Draw i opens with data.lead_ins[i % len] (if any)."""
    leads = lead_ins(data) or [""]
    prefixes = {lead: user_prefix_ids(tokenizer, lead_in=lead) for lead in leads}
    questions, seen, attempt = [], set(), 0
    while len(questions) < data.limit and attempt < 4:
        n = data.limit - len(questions)
        # a few spare draws per round: some come out empty or repeat an earlier question
        draws = [leads[i % len(leads)] for i in range(n + n // 8 + 4)]
        seeds = [data.seed * 1_000_003 + attempt * 100_000 + i for i in range(len(draws))]
        outs = backend.generate([prefixes[lead] for lead in draws], QUESTION_TOKENS, 1.0, seeds,
                                progress="questions, turn 1" + (f" (round {attempt + 1})" if attempt else ""))
        for lead, out in zip(draws, outs):
            written = tokenizer.decode(out, skip_special_tokens=True)
            text = (lead + written).strip()
            key = " ".join(text.lower().split())
            if len(written.strip()) >= 8 and key not in seen and len(questions) < data.limit:
                seen.add(key)
                questions.append({"messages": [{"role": "user", "content": text}]})
        attempt += 1
    return questions


def answered(records: list[dict], tokenizer, store_dir: Path) -> list[list[dict]]:
    """The conversations of `records` with the target's answer from the store appended
    (records whose sample is not in the store are left out)."""
    reader = StoreReader(store_dir)
    where = {src: i for i, src in enumerate(s for shard in reader.manifest.shards for s in shard.source_ids)}
    out = []
    for rec in records:
        prompt = prompt_ids(tokenizer, rec["messages"])
        index = where.get(sample_id(prompt))
        if index is None:
            continue
        answer = reader.token_ids(index)[len(prompt):].tolist()
        text = tokenizer.decode(answer, skip_special_tokens=True).strip()
        out.append(rec["messages"] + [{"role": "assistant", "content": text}])
    return out


def follow_ups(backend, tokenizer, conversations: list[list[dict]], data, turn: int) -> list[dict]:
    """Turn `turn`: each conversation continued with the target's own next user turn. Ones
    too long to leave room for a question and an answer within data.max_length are dropped."""
    prefixes, kept = [], []
    for conv in conversations:
        ids = user_prefix_ids(tokenizer, conv)
        if len(ids) + 2 * QUESTION_TOKENS < data.max_length:
            prefixes.append(ids)
            kept.append(conv)
    texts = (_questions(backend, tokenizer, prefixes, data.seed * 7919 + turn, f"questions, turn {turn}")
             if prefixes else [])
    return [{"messages": conv + [{"role": "user", "content": q}]} for conv, q in zip(kept, texts) if q]
