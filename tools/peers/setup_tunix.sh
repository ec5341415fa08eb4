#!/usr/bin/env bash
# Builds the Tunix 0.1.7 peer venv that tools/benchmark.py and tools/benchmark_sampler.py use
# (--tunix_python, default /opt/tunix-venv/bin/python), reproducibly: a fresh venv and the
# exact versions of tools/peers/tunix-requirements.txt (`pip freeze` of `pip install
# google-tunix==0.1.7` on 2026-05, jax/jaxlib 0.10.2, flax 0.12.8, optax 0.2.8, grain 0.2.18,
# transformers 5.12.1, no torch; the resolution spec/BASELINES.md describes).
#
#   bash tools/peers/setup_tunix.sh [VENV_DIR]        # default /opt/tunix-venv; ~2-4 min
#
# Tunix 0.1.7's llama3 ignores ModelConfig.rope_theta (always 1e6); the peer scripts
# (tools/peers/tunix_sampler.py, tunix_grpo.py) patch llama3 apply_rope at import with the
# model's theta (SmolLM2: 100000), so nothing in the venv is modified.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-/opt/tunix-venv}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import tunix' 2>/dev/null; then
  echo "Tunix venv already at $venv"; exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --no-deps -r "$here/tunix-requirements.txt"
"$venv/bin/pip" check
"$venv/bin/python" -c 'import importlib.metadata as m; import tunix, jax; print("tunix", m.version("google-tunix"), "jax", jax.__version__)'
echo "Tunix peer: $venv/bin/python"
