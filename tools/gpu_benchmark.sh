#!/usr/bin/env bash
# Issue 11's GPU run: PREPARED, NOT YET RUN (no GPU was lent to the work that wrote it).
#
#   bash tools/gpu_benchmark.sh            # on a machine with one NVIDIA GPU; ~20-30 min
#
# Writes bench/gpu/*.json (summary.json names the GPU): compfn's train step, fused GRPO step,
# demo steps and the 8B memory report on the GPU, and the sampler on SmolLM2-135M and the tiny
# Llama at B = 1, 16, 64, 128, 256 (compfn only: tools/peers/hf_generate.py pins torch to CPU
# threads, and Tunix would need a CUDA jax in its venv; add them as peers before comparing).
# Needs jax with CUDA (pip install "jax[cuda12]==0.10.2" where a registry is reachable; the
# lent device machines reach none, so it must already be installed there).
# Still to add before the run: a Qwen2.5-0.5B-shaped random model in
# tools/benchmark_sampler.py (model_setup) next to 'tiny', as the issue asks.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee bench/gpu/gpu.txt
python -c 'import jax; print(jax.devices()); assert jax.default_backend() == "gpu"'
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
python tools/benchmark.py all --out bench/gpu/ --tunix_python '' --only train,rl_step,demo,memory
python tools/benchmark_sampler.py --models smollm2,tiny --batches 1,16,64,128,256 \
  --systems compfn --verifier_batch 64 --greedy_tokens 0 --out bench/gpu/sampler.json
