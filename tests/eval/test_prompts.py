import json
from collections import Counter

import pytest

from speculators_kit.core.errors import SpecKitError
from speculators_kit.eval.prompts import load_prompts


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_fields_turns_messages_prompt(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [
        json.dumps({"turns": ["a", "b"], "category": "chat"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "c"},
                                 {"role": "assistant", "content": "x"}, {"role": "user", "content": "d"}]}),
        json.dumps({"prompt": "e", "system": "you are terse"}),
    ])
    prompts = load_prompts(str(path))
    assert [(p.category, p.turns, p.system) for p in prompts] == [
        ("chat", ["a", "b"], None), ("mine", ["c", "d"], "be brief"), ("mine", ["e"], "you are terse")]


@pytest.mark.parametrize("line, says", [
    ('{"prompt": "a"', "mine.jsonl:2 is not valid JSON"),
    ('["a"]', "mine.jsonl:2 is a JSON list"),
    ('{"question": "a"}', "mine.jsonl:2 has none of the fields"),
    ('{"turns": []}', "mine.jsonl:2: needs at least one user turn"),
    ('{"turns": "a"}', "mine.jsonl:2: needs at least one user turn"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "mine.jsonl:2: needs at least one user turn"),
    ('{"messages": 3}', "mine.jsonl:2: needs at least one user turn"),
    ('{"prompt": "a", "system": 3}', "mine.jsonl:2: the system message must be a non-empty string"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, says):
    path = write_lines(tmp_path / "mine.jsonl", [json.dumps({"prompt": "ok"}), line])
    with pytest.raises(SpecKitError, match=says):
        load_prompts(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecKitError, match="not a known set"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_mt_bench_from_the_package_spreads_over_categories():
    everything = load_prompts("mt-bench")
    assert len(everything) == 80 and all(len(p.turns) == 2 for p in everything)
    assert set(Counter(p.category for p in everything).values()) == {10}
    first = load_prompts("mt-bench", limit=16)
    # 16 prompts over 8 categories: two of each, in the package's order within a category
    assert Counter(p.category for p in first) == {c: 2 for c in Counter(p.category for p in everything)}
    roleplay = [p for p in everything if p.category == "roleplay"]
    assert [p for p in first if p.category == "roleplay"] == roleplay[:2]


def test_humaneval_from_the_package():
    prompts = load_prompts("humaneval", limit=3)
    assert len(prompts) == 3
    assert all(p.turns[0].startswith("Complete this Python function") and "```python\n" in p.turns[0]
               for p in prompts)
    assert len(load_prompts("humaneval")) == 164


def test_gsm8k_from_a_local_file(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "test.jsonl", [json.dumps({"question": f"q{i}", "answer": "#### 1"})
                                                 for i in range(5)])
    monkeypatch.setenv("SPECKIT_GSM8K_TEST", str(path))
    assert [p.turns for p in load_prompts("gsm8k", limit=2)] == [["q0"], ["q1"]]


def test_gsm8k_from_a_path_that_is_not_there_is_refused(tmp_path, monkeypatch):
    # the shared data folder beside the repo holds GSM8K test too: it must not be used instead
    monkeypatch.setenv("SPECKIT_GSM8K_TEST", str(tmp_path / "tset.jsonl"))
    with pytest.raises(SpecKitError, match=r"SPECKIT_GSM8K_TEST=.*tset.jsonl is not a file"):
        load_prompts("gsm8k")
