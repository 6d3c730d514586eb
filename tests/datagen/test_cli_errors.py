"""Each bad datagen input: exit 1, one line naming the thing and the fix, nothing written."""

import json
import shutil

import pytest
import yaml

from speculators_kit.cli import main


@pytest.fixture()
def write_config(tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"what is {i} plus {i}?"}) + "\n" for i in range(6)))

    def write(name="datagen.yaml", **sections):
        cfg = {"target": {"path": str(tiny_llama)},
               "data": {"source": "jsonl", "path": str(prompts), "prompt_field": "question"},
               "regenerate": {"enabled": True, "max_new_tokens": 4},
               "capture": {"backend": "hf", "layers": [1, 2], "dtype": "fp32"},
               "output": {"dir": str(tmp_path / "store")}}
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


def run_fails(capsys, config, *extra):
    assert main(["datagen", str(config), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("sections, expected", [
    ({"data": {"path": "/nope/missing.jsonl"}}, "data.path /nope/missing.jsonl does not exist"),
    ({"data": {"prompt_field": "prompt"}}, "no field 'prompt' .*set data.prompt_field"),
    ({"capture": {"layers": [1, 9]}}, r"capture.layers \[9\] out of range.*0 \(embeddings\) to 4"),
    ({"capture": {"layers": [2, 2]}}, r"capture.layers \[2, 2\] lists \[2\] more than once"),
    ({"capture": {"dtpye": "fp8"}}, "unknown key 'capture.dtpye' \\(allowed here: .*dtype"),
    ({"capture": {"dtype": "int4"}}, "capture.dtype"),
    ({"data": {"source": "self", "limit": 3}, "regenerate": {"enabled": False}}, "regenerate.enabled: true"),
    ({"data": {"max_length": 4096}}, (r"data.max_length 4096 is longer than the target's context "
                                     r"\(max_position_embeddings 2048 .*set data.max_length to 2048")),
])
def test_bad_input_names_the_fix_and_writes_nothing(write_config, capsys, tmp_path, sections, expected):
    import re

    line = run_fails(capsys, write_config(**sections))
    assert re.search(expected, line), line
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("value, shown", [(None, "null"), (5, "int 5"), ("  ", "empty")])
def test_a_prompt_that_is_not_text_is_named_by_its_record(write_config, capsys, tmp_path, value, shown):
    # before, str() turned these into the prompts "None", "5" and an empty user turn
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "fine"}) + "\n" + json.dumps({"question": value}) + "\n")
    line = run_fails(capsys, write_config(data={"path": str(bad)}))
    assert f"record 2: data.prompt_field 'question' is {shown}, not text" in line, line
    assert not (tmp_path / "store").exists()


def test_target_without_tokenizer(write_config, capsys, tmp_path, tiny_llama):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    line = run_fails(capsys, write_config(target={"path": str(bare)}))
    assert "tokenizer" in line and not (tmp_path / "store").exists()


def test_offline_hf_dataset_is_a_clear_error(write_config, capsys, tmp_path):
    line = run_fails(capsys, write_config(data={"source": "hf", "path": "speckit/not-a-dataset"}))
    assert "cannot load the Hugging Face dataset 'speckit/not-a-dataset'" in line
    assert "data.source: jsonl" in line and not (tmp_path / "store").exists()


def test_adding_to_a_store_from_another_target(write_config, capsys, tmp_path, tiny_targets):
    config = write_config()
    assert main(["datagen", str(config)]) == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").iterdir())
    capsys.readouterr()
    line = run_fails(capsys, write_config("other.yaml", target={"path": str(tiny_targets["qwen3"])}))
    assert "another setup (target_fingerprint" in line and "--overwrite" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").iterdir()) == before
    # other answer settings: every prompt is in the store already, so it would keep the old answers
    line = run_fails(capsys, write_config("longer.yaml", regenerate={"max_new_tokens": 8}))
    assert "another setup (regenerate.max_new_tokens: store has 4, config asks 8)" in line, line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").iterdir()) == before
    # another dataset: it would be mixed in under the first one's provenance
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "a question from elsewhere"}) + "\n")
    line = run_fails(capsys, write_config("mixed.yaml", data={"path": str(other), "prompt_field": "text"}))
    assert f"data.path: store has '{tmp_path / 'prompts.jsonl'}', config asks '{other}'" in line, line
    assert "data.prompt_field: store has 'question', config asks 'text'" in line and "data.stores" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").iterdir()) == before
    # a higher data.limit grows the store: the same data, more of it
    assert main(["datagen", str(write_config("grow.yaml", data={"limit": 100})), "--json"]) == 0
    # the same command again adds nothing: every input is already in the store
    assert main(["datagen", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 0


def test_self_made_conversations_are_seeded_and_unique(write_config, tmp_path, tiny_llama):
    """`source: self` (Magpie): the target writes user turns from its template's user prefix,
    then answers them; the same seed gives the same samples, duplicates are dropped."""
    from speculators_kit.core.store import StoreReader
    from speculators_kit.datagen.prepare import load_tokenizer

    stores = []
    for name in ("a", "b"):
        cfg = write_config(f"{name}.yaml", data={"source": "self", "limit": 5, "seed": 3},
                           output={"dir": str(tmp_path / name)})
        assert main(["datagen", str(cfg)]) == 0
        stores.append(StoreReader(tmp_path / name))
    assert stores[0].sample_ids() == stores[1].sample_ids()
    assert len(set(stores[0].sample_ids())) == 5
    text = load_tokenizer(tiny_llama).decode(stores[0][0]["token_ids"])
    assert text.startswith("<|im_start|>user\n") and "<|im_end|>\n<|im_start|>assistant\n" in text


def test_self_conversations_go_on_with_the_targets_own_follow_ups(write_config, tmp_path, tiny_llama, capsys):
    """`data.turns: 2`: each answered question comes back with its answer and a follow-up user
    turn the target wrote, and the answer to that is the new sample's only loss; a re-run
    reuses the saved questions and adds nothing."""
    from speculators_kit.core.store import StoreReader
    from speculators_kit.datagen.prepare import load_tokenizer

    cfg = write_config("turns.yaml", data={"source": "self", "limit": 4, "seed": 3, "turns": 2},
                       output={"dir": str(tmp_path / "chats")})
    assert main(["datagen", str(cfg)]) == 0
    tok, reader = load_tokenizer(tiny_llama), StoreReader(tmp_path / "chats")
    texts = [tok.decode(reader.token_ids(i)) for i in range(len(reader))]
    first = [t for t in texts if t.count("<|im_start|>user") == 1]
    second = [i for i, t in enumerate(texts) if t.count("<|im_start|>user") == 2]
    assert len(first) == 4 and 1 <= len(second) <= 4
    for i in second:
        ids, mask = reader.token_ids(i), reader.loss_mask(i)
        question = texts[i].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        assert sum(question in t for t in first) == 1  # continues one turn-1 conversation
        answer_start = len(tok.decode(ids[: int(mask.nonzero()[0])]))
        assert texts[i][:answer_start].endswith("<|im_start|>assistant\n")
        assert texts[i][:answer_start].count("<|im_start|>assistant") == 2  # only the last answer is loss
    assert (tmp_path / "chats" / ".self_prompts.turn2.json").is_file()
    err = capsys.readouterr().err  # writing a store's questions takes minutes: each turn shows a bar
    assert "questions, turn 1: 100%" in err and "questions, turn 2: 100%" in err
    assert main(["datagen", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 0


def test_turns_belong_to_self_made_conversations(write_config, capsys):
    line = run_fails(capsys, write_config(data={"turns": 2}))
    assert "data.turns is for source self" in line


def test_lead_ins_open_the_self_made_questions(write_config, tmp_path, tiny_llama, capsys):
    """`data.lead_ins`: the questions open with the given words, taken in turn ("" leaves one
    free), and the target writes the rest; other lead-ins make other questions, in another store."""
    leads = ["", "Write a Python function that", "Solve this:"]
    out = tmp_path / "led"
    cfg = write_config("led.yaml", data={"source": "self", "limit": 6, "seed": 3, "lead_ins": leads},
                       output={"dir": str(out)})
    assert main(["datagen", str(cfg)]) == 0
    questions = [r["messages"][0]["content"]
                 for r in json.loads((out / ".self_prompts.json").read_text())["records"]]
    assert len(questions) == 6
    for lead in leads[1:]:
        opened = [q for q in questions if q.startswith(lead)]
        assert 1 <= len(opened) <= 2 and all(len(q) >= len(lead) + 8 for q in opened)
    # without lead-ins: other questions, which the store of these is not for
    capsys.readouterr()
    line = run_fails(capsys, write_config("free.yaml", data={"source": "self", "limit": 6, "seed": 3},
                                          output={"dir": str(out)}))
    assert f"data.lead_ins: store has {leads!r}, config asks []" in line, line
    free = write_config("free.yaml", data={"source": "self", "limit": 6, "seed": 3},
                        output={"dir": str(tmp_path / "free")})
    assert main(["datagen", str(free)]) == 0
    again = [r["messages"][0]["content"]
             for r in json.loads((tmp_path / "free" / ".self_prompts.json").read_text())["records"]]
    assert len(again) == 6 and not any(q.startswith(tuple(leads[1:])) for q in again)
    general = write_config("general.yaml", data={"source": "self", "limit": 3, "seed": 3, "lead_ins": "general"},
                           output={"dir": str(tmp_path / "general")})
    assert main(["datagen", str(general)]) == 0
    made = json.loads((tmp_path / "general" / ".self_prompts.json").read_text())["records"]
    assert made[1]["messages"][0]["content"].startswith("Write a Python function that")


def test_lead_ins_belong_to_self_made_conversations(write_config, capsys):
    line = run_fails(capsys, write_config(data={"lead_ins": ["Explain"]}))
    assert "data.lead_ins opens the questions of source self" in line


def test_inputs_left_out_before_capture_are_said(write_config, capsys, tmp_path):
    prompts = tmp_path / "mixed.jsonl"
    rows = [{"question": "what is 1 plus 1?"}, {"question": "what is 1 plus 1?"}, {"question": "x" * 300},
            {"question": "what is 2 plus 2?"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["datagen", str(write_config(data={"path": str(prompts), "max_length": 200}))]) == 0
    said = capsys.readouterr()
    assert ("datagen: left out 1 duplicate(s) of an earlier input; 1 too long for data.max_length 200"
            in said.out + said.err)
