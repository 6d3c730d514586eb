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


def test_a_draft_written_to_a_full_disk_is_one_error_and_leaves_nothing(tiny_llama, tmp_path, capsys):
    """Before, safetensors' own error for a full disk came out as a traceback (draft init,
    convert and training's draft all write through save_draft)."""
    from tests.helpers import fill_disk, small_disk

    with small_disk(tmp_path / "disk", 1024) as disk:
        ballast = fill_disk(disk, 16 << 10)
        code, _, err = run(["draft", "init", "--target", str(tiny_llama), "--out", str(disk / "d")], capsys)
        said = (f"error: writing the draft {disk / 'd'} failed: the disk holding {disk} is full: "
                f"free space there (`df -h {disk}`), then run the same command again")
        assert code == 1 and err.strip().splitlines() == [said], err
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]
        ballast.unlink()
        assert run(["draft", "init", "--target", str(tiny_llama), "--out", str(disk / "d")], capsys)[0] == 0


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


@pytest.mark.parametrize("argv, flag", [
    (["draft", "init", "--layers", "0"], "--layers"),
    (["draft", "init", "--draft-vocab-size", "0"], "--draft-vocab-size"),
    (["draft", "init", "--arch", "eagle3-moe", "--experts", "0"], "--experts"),
    (["draft", "init", "--aux-layers", "-1", "2", "3"], "--aux-layers"),
    (["draft", "init", "--k", "0"], "--k"),
    (["generate", "--draft", "d", "--prompt", "hi", "--k", "0"], "--k"),
    (["generate", "--draft", "d", "--prompt", "hi", "--temperature", "-0.5"], "--temperature"),
    (["eval", "--draft", "d", "--k", "0"], "--k"),
    (["eval", "--draft", "d", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "--draft", "d", "--num-prompts", "0"], "--num-prompts"),
    (["eval", "--draft", "d", "--concurrency", "0"], "--concurrency"),
    (["eval", "--draft", "d", "--temperature", "-1"], "--temperature"),
    (["eval", "--draft", "d", "--k", "three"], "--k"),
    (["inspect", "store", "--show", "-1"], "--show"),
])
def test_an_out_of_range_number_fails_at_once_naming_the_flag(argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(argv + ([] if argv[0] == "inspect" else ["--out", str(out)]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}" in err
    assert "must be at least" in err or "is not an integer" in err
    assert not out.exists()


@pytest.mark.parametrize("spelling, vllm_name, short_name", [
    ("bf16", "bfloat16", "bf16"), ("bfloat16", "bfloat16", "bf16"), ("BF16", "bfloat16", "bf16"),
    ("fp32", "float32", "fp32"), ("float32", "float32", "fp32")])
def test_every_dtype_flag_takes_both_spellings(spelling, vllm_name, short_name):
    from speculators_kit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["eval", "--out", "o", "--dtype", spelling]).dtype == vllm_name
    assert parser.parse_args(["convert", "s", "o", "--dtype", spelling]).dtype == short_name


@pytest.mark.parametrize("argv", [["eval", "--out", "o"], ["convert", "s", "o"]])
def test_a_wrong_dtype_names_the_flag_and_both_spellings(argv, capsys):
    from speculators_kit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv + ["--dtype", "half"])
    err = capsys.readouterr().err
    assert "argument --dtype: 'half' is not a dtype: use float32 (fp32) or bfloat16 (bf16)" in err


def test_draft_init_refuses_a_shape_the_target_cannot_serve(tiny_llama, tmp_path, capsys):
    def init(*flags):
        return run(["draft", "init", "--target", str(tiny_llama), "--out", str(tmp_path / "d"), *flags], capsys)

    code, _, err = init("--aux-layers", "1", "2", "99")
    assert code == 1 and "aux layer 99 does not exist: the target has" in err
    code, _, err = init("--arch", "eagle3-moe", "--experts", "4", "--top-k", "9")
    assert code == 1 and "moe.top_k 9 exceeds moe.num_experts 4" in err and "Traceback" not in err
    code, _, err = init("--top-k", "1")  # not an MoE draft: the flag would do nothing
    assert code == 1 and "--top-k is for MoE drafts" in err
    assert not (tmp_path / "d").exists()
    code, _, _ = init("--arch", "eagle3-moe", "--top-k", "1")  # was ignored without --experts
    assert code == 0 and read_moe(tmp_path / "d") == (4, 1)


def read_moe(draft):
    from speculators_kit.core.format import read_config

    moe = read_config(draft).speculators_kit.moe
    return moe.num_experts, moe.top_k


def test_an_output_path_under_a_file_is_one_line(tiny_llama, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    argv = ["draft", "init", "--target", str(tiny_llama), "--out", str(tmp_path / "afile" / "d")]
    code, _, err = run(argv, capsys)
    assert code == 1 and err.startswith("error: ") and str(tmp_path / "afile") in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(OSError):
        main(["--debug", *argv])


@pytest.mark.parametrize("dtype, args, kept", [
    ("float32", [], True),
    ("float32", ["--dtype", "bfloat16"], False),  # asked for: vLLM's own choice stands
    ("float32", ["--dtype=auto"], False),
    ("bfloat16", [], False),  # the target's own dtype already
])
def test_serve_keeps_a_float32_target_in_float32_with_a_draft(tmp_path, capsys, dtype, args, kept):
    """vLLM downcasts a float32 target to bfloat16 on CPU, where speculative outputs stopped
    matching the target's alone (6 of 8 MT-bench conversations, benchmarks/results/serve_dtype.*)."""
    import json

    from speculators_kit.serve import keep_float32

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"dtype": dtype}))
    spec = ["--speculative-config", '{"method": "eagle3", "model": "d", "num_speculative_tokens": 3}']
    argv = [str(tmp_path / "t"), *spec, *args]
    assert keep_float32(argv) == (argv + ["--dtype", "float32"] if kept else argv)
    assert ("--dtype float32, the target's own" in capsys.readouterr().err) == kept
    short = [str(tmp_path / "t"), "-sc", spec[1], *args]  # vLLM's alias
    assert keep_float32(short) == (short + ["--dtype", "float32"] if kept else short)
    assert keep_float32([str(tmp_path / "t"), *args]) == [str(tmp_path / "t"), *args]  # no draft: vLLM's default
    assert keep_float32(["HuggingFaceTB/SmolLM2-135M-Instruct", *spec]) == ["HuggingFaceTB/SmolLM2-135M-Instruct", *spec]


@pytest.mark.parametrize("spelling", ["--speculative-config", "--speculative-config=", "-sc"])
def test_serve_refuses_a_draft_for_another_target_before_vllm_starts(tiny_targets, tmp_path, capsys, spelling):
    import json

    from tests.helpers import make_draft

    make_draft(tiny_targets["llama"], tmp_path / "draft")
    config = json.dumps({"method": "eagle3", "model": str(tmp_path / "draft"), "num_speculative_tokens": 3})
    flag = [spelling + config] if spelling.endswith("=") else [spelling, config]
    code, _, err = run(["serve", str(tiny_targets["qwen3"]), *flag, "--port", "1"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    # one line at once, not vLLM's traceback after its ~20 s of imports
    assert err.startswith(f"error: draft {tmp_path / 'draft'} does not fit target") and "made for another target" in err


def test_ctrl_c_says_one_line_not_a_traceback(tmp_path, tiny_llama):
    """Ctrl-C where stopping at once loses nothing (here: `speckit eval` while its vLLM runner
    starts) printed Python's traceback of wherever speckit was waiting."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    argv = ["eval", "--target", str(tiny_llama), "--prompts", str(tmp_path / "p.jsonl"), "--max-new-tokens", "2",
            "--out", str(tmp_path / "eval")]
    # A terminal's Ctrl-C: a test run as a background job inherits SIGINT ignored, and Python
    # then leaves it ignored
    proc = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from speculators_kit.cli import main\n"
        f"sys.exit(main({argv!r}))\n")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any("speculators_kit.eval.vllm_runner" in c.cmdline() for c in psutil.Process(proc.pid).children()):
        assert time.monotonic() < deadline and proc.poll() is None, "no runner started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == ("speckit eval: interrupted; the same command goes "
                                                                 "on from what it finished"), err[-3000:]
    assert "Traceback" not in err
