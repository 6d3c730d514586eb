"""Turn a dataset into token sequences with a loss mask over assistant tokens.

The mask is found in character space: the conversation is rendered once with the target's
chat template, each assistant message's span is located in the text, and tokens whose
characters overlap a span are masked in. This works for multi-turn chats, system prompts and
templates that rewrite earlier turns (e.g. dropping reasoning), where rendering prefixes
would not line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.jsonl import read_jsonl
from speculators_kit.core.store import sample_id

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant"}


@dataclass
class Prepared:
    """One input. With regeneration `token_ids` is the prompt and the target writes the rest."""

    source_id: str
    token_ids: list[int]
    loss_mask: list[bool] = field(default_factory=list)


def load_tokenizer(target_dir: Path):
    from transformers import AutoTokenizer

    if not (Path(target_dir) / "tokenizer.json").is_file() and not (
            Path(target_dir) / "tokenizer_config.json").is_file():
        raise SpecKitError(f"target {target_dir} has no tokenizer (tokenizer.json); copy the "
                           f"tokenizer files of the model into that folder")
    return AutoTokenizer.from_pretrained(str(target_dir))


def read_records(data, base: Path) -> list[dict]:
    """Records from data.source (jsonl | parquet | hf); `self` has none."""
    if data.source == "hf":
        return _read_hf(data)
    path = Path(data.path).expanduser()
    if not path.is_file() and not path.is_absolute() and (base / path).is_file():
        path = base / path
    if not path.is_file():
        raise SpecKitError(f"data.path {data.path} does not exist (looked in the working directory "
                           f"and in {base}); point data.path at a {data.source} file")
    if data.source == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [row for _, row in read_jsonl(path)]


def _read_hf(data) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(data.path, data.subset, split=data.split)
    except Exception as err:  # offline, unknown name, missing split: all end the run the same way
        raise SpecKitError(
            f"cannot load the Hugging Face dataset {data.path!r} (split {data.split!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Without "
            f"network access, save it as jsonl/parquet and use data.source: jsonl") from err
    return list(ds)


def to_messages(record: dict, data, n: int) -> list[dict]:
    if not isinstance(record, dict):
        raise SpecKitError(f"record {n}: expected a JSON object, got {type(record).__name__}")
    if data.format == "prompt":
        if data.prompt_field not in record:
            raise SpecKitError(f"record {n} has no field {data.prompt_field!r} (it has: "
                               f"{', '.join(record)}); set data.prompt_field")
        messages = [{"role": "user", "content": _text(record, data.prompt_field, n, "data.prompt_field")}]
        if data.response_field:
            if data.response_field not in record:
                raise SpecKitError(f"record {n} has no field {data.response_field!r}; set "
                                   f"data.response_field (or null)")
            messages.append({"role": "assistant",
                             "content": _text(record, data.response_field, n, "data.response_field")})
        return messages
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise SpecKitError(f"record {n} has no `messages` or `conversations` list (it has: "
                           f"{', '.join(record)})")
    messages = []
    for turn in turns:
        role = turn.get("role", SHAREGPT_ROLES.get(str(turn.get("from", "")).lower()))
        content = turn.get("content", turn.get("value"))
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise SpecKitError(f"record {n}: a turn needs role system|user|assistant (or ShareGPT "
                               f"from/value) and text content, got {turn!r:.120}")
        messages.append({"role": role, "content": content})
    return messages


def _text(record: dict, field: str, n: int, key: str) -> str:
    """The field's text; a null, number or empty value would otherwise become "None", "5" or an
    empty turn in the store without a word."""
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        shown = ("empty" if isinstance(value, str) else "null" if value is None
                 else f"{type(value).__name__} {value!r:.60}")
        raise SpecKitError(f"record {n}: {key} {field!r} is {shown}, not text; drop or fill such "
                           f"records, or point {key} at the text field")
    return value


def render_with_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and a mask that is True on assistant tokens."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            start, end = _assistant_span(tokenizer, messages[:i], text, cursor, msg["content"])
            spans.append((start, end))
            cursor = end
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), _extend_to_end_of_turn(enc["input_ids"], mask, tokenizer)


def _assistant_span(tokenizer, history, text, cursor, content) -> tuple[int, int]:
    """Where an assistant message sits in the rendered text. Templates may drop an earlier
    turn's reasoning block; then the visible remainder is what the model sees and is masked."""
    if history:
        prefix = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        if text.startswith(prefix):
            cursor = max(cursor, len(prefix))
    for candidate in (content, content.strip(), content.split("</think>")[-1].strip()):
        found = text.find(candidate, cursor) if candidate else -1
        if found >= 0:
            return found, found + len(candidate)
    raise SpecKitError("the chat template does not reproduce an assistant message; cannot place "
                       "the loss mask (use data.format: tokens with an explicit loss_mask)")


def _extend_to_end_of_turn(ids, mask, tokenizer) -> list[bool]:
    """The draft must also learn to predict the end-of-turn token right after an answer."""
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
           tokenizer.convert_tokens_to_ids("<|eot_id|>")} - {None, tokenizer.unk_token_id}
    out = list(mask)
    for i in range(1, len(ids)):
        if mask[i - 1] and not mask[i] and ids[i] in eos:
            out[i] = True
    return out


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation up to its last user turn, with the assistant prefix, for regeneration."""
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise SpecKitError("a conversation has no user turn to answer")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def user_prefix_ids(tokenizer, conversation: list[dict] = (), lead_in: str = "") -> list[int]:
    """Magpie's pre-query template: everything the chat template puts before the text of a
    user turn that follows `conversation` (none: the first turn), then `lead_in`, the text the
    user turn opens with (tokenized together, as the template would)."""
    sentinel = "\u2063SPECKIT\u2063"
    turns = list(conversation) + [{"role": "user", "content": sentinel}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    return tokenizer(text[: text.index(sentinel)] + lead_in, add_special_tokens=False)["input_ids"]


def prepare(records: list[dict], tokenizer, data, regenerate: bool) -> tuple[list[Prepared], dict]:
    """Prepared inputs in dataset order, duplicates dropped; also counts of what was dropped."""
    if tokenizer.chat_template is None and data.format != "tokens":
        raise SpecKitError("the target's tokenizer has no chat template; add chat_template.jinja "
                           "to the target folder or use data.format: tokens")
    out, seen, dropped = [], set(), {"duplicates": 0, "too_long": 0, "no_loss_tokens": 0}
    for n, record in enumerate(records, 1):
        if data.format == "tokens":
            ids, mask = _tokens_record(record, n)
        elif regenerate:
            ids, mask = prompt_ids(tokenizer, to_messages(record, data, n)), []
        else:
            ids, mask = render_with_mask(tokenizer, to_messages(record, data, n))
        if regenerate and len(ids) >= data.max_length - 1:
            dropped["too_long"] += 1
            continue
        ids, mask = ids[: data.max_length], mask[: data.max_length]
        if not regenerate and not any(mask):
            dropped["no_loss_tokens"] += 1
            continue
        sid = sample_id(ids)
        if sid in seen:
            dropped["duplicates"] += 1
            continue
        seen.add(sid)
        out.append(Prepared(sid, ids, mask))
        if data.limit and len(out) >= data.limit:
            break
    return out, dropped


def _tokens_record(record: dict, n: int) -> tuple[list[int], list[bool]]:
    ids = record.get("token_ids") if isinstance(record, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise SpecKitError(f"record {n}: format tokens needs a `token_ids` list of ints")
    mask = record.get("loss_mask", [1] * len(ids))
    if len(mask) != len(ids):
        raise SpecKitError(f"record {n}: loss_mask has {len(mask)} entries for {len(ids)} tokens")
    return ids, [bool(m) for m in mask]
