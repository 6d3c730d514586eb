"""CLI: one-line user errors, YAML validation with dotted overrides, every subcommand."""


import pytest

from speculators_kit.cli import main
from speculators_kit.core.errors import SpecKitError


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def generate_yaml(tmp_path):
    path = tmp_path / "configs" / "generate" / "demo.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("draft: {path: runs/d}\nprompts: [hi]\nsampling: {temperature: 0.0}\n")
    return path


def test_valid_yaml(generate_yaml, capsys):
    assert run(["validate", str(generate_yaml)], capsys)[0] == 0


def test_unknown_yaml_key_names_file_key_and_allowed(generate_yaml, capsys):
    generate_yaml.write_text(generate_yaml.read_text() + "samplin: {}\n")
    code, _, err = run(["validate", str(generate_yaml)], capsys)
    assert code == 1
    assert str(generate_yaml) in err and "'samplin'" in err and "sampling" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_set_path(generate_yaml, capsys):
    code, _, err = run(["validate", str(generate_yaml), "--set", "sampling.temprature=0.5"], capsys)
    assert code == 1 and "sampling.temprature" in err and "temperature" in err
    code, _, err = run(["validate", str(generate_yaml), "--set", "prompts.x=1"], capsys)
    assert code == 1 and "prompts" in err


def test_set_value_is_revalidated(generate_yaml, capsys):
    code, _, err = run(["validate", str(generate_yaml), "--set", "sampling.top_p=2"], capsys)
    assert code == 1 and "sampling.top_p" in err


def test_every_shipped_yaml_validates():
    from pathlib import Path

    from speculators_kit.schema import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert configs, "configs/ ships at least one YAML"
    for path in configs:
        load_config(path)


def test_missing_draft_dir_one_line(tmp_path, capsys):
    code, _, err = run(["validate", str(tmp_path)], capsys)
    assert code == 1 and "config.json is missing" in err and err.count("\n") == 1


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(SpecKitError):
        main(["--debug", "validate", str(tmp_path)])


def test_help_for_every_subcommand():
    from speculators_kit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ["target", "draft", "generate", "datagen", "train", "convert", "eval", "quickstart",
                 "inspect", "validate"]:
        assert name in sub.choices
        assert sub.choices[name].format_help()


@pytest.mark.parametrize("arch", ["eagle3", "eagle", "hass", "eagle3-moe"])
def test_draft_init_writes_a_loadable_draft(tiny_llama, tmp_path, arch, capsys):
    from speculators_kit.core.format import load_draft

    out = tmp_path / arch
    code, stdout, _ = run(["draft", "init", "--target", str(tiny_llama), "--arch", arch, "--layers", "2",
                           "--init", "target-last-layer", "--out", str(out)], capsys)
    assert code == 0 and stdout.strip() == str(out)
    head = load_draft(out, target_dir=tiny_llama)
    assert len(head.layers) == 2
    assert (head.config.speculators_kit.moe.num_experts > 0) == (arch == "eagle3-moe")
    code, _, err = run(["draft", "init", "--target", str(tiny_llama), "--out", str(out)], capsys)
    assert code == 1 and "already exists" in err  # never overwritten silently


def test_draft_vocab_larger_than_target_is_refused(tiny_llama, tmp_path, capsys):
    code, _, err = run(["draft", "init", "--target", str(tiny_llama), "--draft-vocab-size", "999",
                        "--out", str(tmp_path / "d")], capsys)
    assert code == 1 and "draft_vocab_size 999 exceeds the target vocab 256" in err
    assert not (tmp_path / "d").exists()


def test_config_kind_from_folder_or_name(tmp_path, capsys):
    """The quickstart writes OUT/configs/train.yaml and datagen-lead-ins.yaml: their names say the
    kind; a file whose folder and name say nothing gets one line naming both ways."""
    body = "draft: {path: runs/d}\nprompts: [hi]\n"
    for name in ("generate.yaml", "generate-short.yaml"):
        (tmp_path / name).write_text(body)
        assert run(["validate", str(tmp_path / name)], capsys)[0] == 0
    (tmp_path / "train.yaml").write_text(body)  # a generate config named train: train's schema
    code, _, err = run(["validate", str(tmp_path / "train.yaml")], capsys)
    assert code == 1 and "unknown key 'prompts'" in err
    (tmp_path / "mine.yaml").write_text(body)
    code, _, err = run(["validate", str(tmp_path / "mine.yaml")], capsys)
    assert code == 1 and "configs/<kind>/" in err and "<kind>.yaml" in err and err.count("\n") == 1
    assert "--kind" in err and run(["validate", str(tmp_path / "mine.yaml"), "--kind", "generate"], capsys)[0] == 0
