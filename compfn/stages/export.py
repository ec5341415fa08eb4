"""The export stage: the current parameters as an HF folder (safetensors + config.json +
tokenizer), the hand-off between experiments."""

from __future__ import annotations

import os

import gin

from compfn import parallel
from compfn import workdir as workdir_lib
from compfn.stages import base
from compfn.stages.base import Run

__all__ = ['export_stage']


@gin.configurable
def export_stage(run: Run, name: str = 'export'):
  """Write the current parameters as an HF folder (safetensors + config.json, and the
  tokenizer when it can be saved) to ``<workdir>/<name>/``: the hand-off between experiments
  (e.g. ``load_model.checkpoint = 'runs/stage1_rft/export'``); transformers loads it too."""
  from compfn.model import hf_io

  d = run.stage_dir(name)
  if base.dry(run, name, path=d):
    return
  params = parallel.to_host(run.params)  # a collective: every process gathers the whole model
  if workdir_lib.is_lead():
    with workdir_lib.local_dir(d) as local:
      hf_io.save_hf_folder(local, run.model_config, params)
      if hasattr(run.tokenizer, 'save') and not isinstance(run.tokenizer, _char_tokenizer_cls()):
        try:
          run.tokenizer.save(local)
        except TypeError:
          run.tokenizer.save(os.path.join(local, 'tokenizer.model'))
  workdir_lib.barrier(f'export:{d}')
  run.summaries[run.key(name)] = {'path': d}
  print(f'[{run.key(name)}] exported to {d}', flush=True)


def _char_tokenizer_cls():
  from compfn.tokenizers import CharTokenizer

  return CharTokenizer
