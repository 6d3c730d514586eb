"""The allocator and OpenMP runtime speckit preloads into its own processes and vLLM's on CPU."""

import os
import subprocess
import sys

import pytest

from speculators_kit.cpu_runtime import find_iomp, find_tcmalloc, reexec_argv, with_fast_runtime
from speculators_kit.vllm_env import CPU_ENV, set_cpu_defaults

TC, IOMP = "/lib/libtcmalloc_minimal.so.4", "/env/lib/libiomp5.so"


def test_both_are_put_first_and_the_users_entries_kept():
    assert with_fast_runtime("", TC, IOMP) == f"{TC}:{IOMP}"
    assert with_fast_runtime("/x/libfoo.so", TC, IOMP) == f"{TC}:{IOMP}:/x/libfoo.so"
    assert with_fast_runtime("/x/libfoo.so /y/libbar.so", None, None) == "/x/libfoo.so:/y/libbar.so"


@pytest.mark.parametrize("user", ["/t/libgomp-a34b3233.so.1", "/opt/intel/libiomp5.so", "/llvm/libomp.so"])
def test_a_users_openmp_runtime_stays_alone(user):
    # vLLM asserts that GNU and Intel OpenMP are never preloaded together
    assert with_fast_runtime(user, TC, IOMP) == f"{TC}:{user}"


@pytest.mark.parametrize("user", ["/usr/lib/libjemalloc.so.2", "/opt/libtcmalloc.so.4"])
def test_a_users_allocator_stays_alone(user):
    assert with_fast_runtime(user, TC, IOMP) == f"{IOMP}:{user}"


def test_switched_off_leaves_ld_preload_alone(monkeypatch):
    for key in (*CPU_ENV, "HF_HUB_OFFLINE"):  # put back as they were after the test
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SPECKIT_CPU_PRELOAD", "0")
    monkeypatch.setenv("LD_PRELOAD", "/x/libfoo.so")
    set_cpu_defaults()
    assert os.environ["LD_PRELOAD"] == "/x/libfoo.so"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_switched_on_adds_what_the_machine_has(monkeypatch):
    for key in (*CPU_ENV, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("SPECKIT_CPU_PRELOAD", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/x/libfoo.so")
    set_cpu_defaults()
    expected = with_fast_runtime("/x/libfoo.so", find_tcmalloc(), find_iomp())
    assert os.environ["LD_PRELOAD"] == expected


def test_speckit_starts_again_with_the_preload_once(monkeypatch):
    if find_iomp() is None:
        pytest.skip("no Intel OpenMP here (x86 only)")
    monkeypatch.delenv("SPECKIT_CPU_PRELOAD", raising=False)
    monkeypatch.setattr(sys, "argv", ["/bin/speckit", "train", "x.yaml"])
    monkeypatch.setenv("LD_PRELOAD", "")
    argv, env = reexec_argv()
    assert argv == [sys.executable, "-m", "speculators_kit.cli", "train", "x.yaml"]
    assert env["LD_PRELOAD"] == with_fast_runtime("", find_tcmalloc(), find_iomp())
    monkeypatch.setenv("LD_PRELOAD", env["LD_PRELOAD"])
    assert reexec_argv() is None  # the second start finds it set: no loop
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("SPECKIT_CPU_PRELOAD", "0")
    assert reexec_argv() is None


def test_a_process_started_with_the_preload_maps_both_and_computes_the_same():
    tcmalloc, iomp = find_tcmalloc(), find_iomp()
    if tcmalloc is None or iomp is None:
        pytest.skip("no tcmalloc (install.sh installs libtcmalloc-minimal4) or no Intel OpenMP (x86 only)")
    code = ("import torch; g = torch.Generator().manual_seed(0); a = torch.randn(512, 512, generator=g);"
            "maps = open('/proc/self/maps').read();"
            "print(repr((a @ a).sum().item()), 'libtcmalloc' in maps, 'libiomp5' in maps)")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["OMP_NUM_THREADS"] = "1"  # one thread in both: the same kernel, so the same sum
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env["LD_PRELOAD"] = with_fast_runtime("", tcmalloc, iomp)
    fast = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split()[1:] == ["False", "False"]
    assert fast.stdout.split()[1:] == ["True", "True"], fast.stderr[-2000:]
    assert fast.stdout.split()[0] == plain.stdout.split()[0]
