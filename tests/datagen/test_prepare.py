"""Loss masks and sample preparation on real chat templates (no engine needed)."""

from types import SimpleNamespace

import pytest

from speculators_kit.core.errors import SpecKitError
from speculators_kit.datagen.prepare import (
    load_tokenizer,
    prepare,
    read_records,
    render_with_mask,
    user_prefix_ids,
)

# A Qwen3-style template: earlier assistant turns lose their <think> block, the last keeps it.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last and '</think>' in m['content'] %}"
    "{{ m['content'].split('</think>')[-1].lstrip() }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def data(**kw):
    base = {"format": "chat", "prompt_field": "prompt", "response_field": None, "limit": None, "max_length": 4096}
    return SimpleNamespace(**{**base, **kw})


def masked_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m])


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello you"},
    {"role": "user", "content": "add 2 and 3"},
    {"role": "assistant", "content": "it is 5"},
]


def test_multi_turn_mask_covers_each_answer_and_its_end_token(tok):
    ids, mask = render_with_mask(tok, CHAT)
    assert masked_text(tok, ids, mask).replace(" ", "") == "helloyou<|im_end|>itis5<|im_end|>"
    # nothing from the system prompt or the user turns is trained on
    assert "brief" not in masked_text(tok, ids, mask) and "add" not in masked_text(tok, ids, mask)


def test_template_that_rewrites_history_still_masks_the_right_tokens(tok):
    original, tok.chat_template = tok.chat_template, THINK_TEMPLATE
    try:
        chat = [{"role": "user", "content": "q one"},
                {"role": "assistant", "content": "<think>hmm</think> a one"},
                {"role": "user", "content": "q two"},
                {"role": "assistant", "content": "<think>ok</think> a two"}]
        ids, mask = render_with_mask(tok, chat)
        text = masked_text(tok, ids, mask).replace(" ", "")
        assert text == "aone<|im_end|><think>ok</think>atwo<|im_end|>"
    finally:
        tok.chat_template = original


def test_sharegpt_records_dedup_and_truncation(tok):
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    records = [sharegpt, sharegpt, {"messages": CHAT}]
    items, dropped = prepare(records, tok, data(), regenerate=False)
    assert len(items) == 2 and dropped["duplicates"] == 1
    assert len({i.source_id for i in items}) == 2
    short, dropped = prepare([{"messages": CHAT}], tok, data(max_length=20), regenerate=False)
    assert dropped["no_loss_tokens"] == 1 and not short  # cut before the first answer


def test_regenerate_prompts_end_with_the_assistant_prefix(tok):
    items, _ = prepare([{"messages": CHAT}], tok, data(), regenerate=True)
    text = tok.decode(items[0].token_ids)
    assert text.endswith("<|im_start|>assistant\n") and "it is 5" not in text  # last answer dropped


def test_prompt_format_names_the_missing_field(tok):
    with pytest.raises(SpecKitError, match="no field 'question'.*set data.prompt_field"):
        prepare([{"q": "x"}], tok, data(format="prompt", prompt_field="question"), regenerate=True)


def test_magpie_prefix_is_the_user_turn_opening(tok):
    assert tok.decode(user_prefix_ids(tok)) == "<|im_start|>user\n"


@pytest.mark.parametrize("bad, says", [("{\"prompt\": ", "d.jsonl:2 is not valid JSON"),
                                       ("[1, 2]", "d.jsonl:2 is a JSON list, not an object")])
def test_jsonl_source_names_the_bad_line(tmp_path, bad, says):
    (tmp_path / "d.jsonl").write_text('{"prompt": "ok"}\n' + bad + "\n\n")
    with pytest.raises(SpecKitError, match=says):
        read_records(data(source="jsonl", path=str(tmp_path / "d.jsonl")), tmp_path)
    (tmp_path / "d.jsonl").write_text('{"prompt": "ok"}\n\n{"prompt": "too"}\n')
    assert read_records(data(source="jsonl", path=str(tmp_path / "d.jsonl")), tmp_path) == [
        {"prompt": "ok"}, {"prompt": "too"}]
