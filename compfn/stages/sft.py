"""The SFT stage: supervised fine-tuning on prompt/target records (optionally packed), resumable
(``compfn.rl.sft`` holds the loss and the batch builders)."""

from __future__ import annotations

import math
import time
from typing import Optional

import gin
import jax
import numpy as np

from compfn import train
from compfn.stages import base, batches, training
from compfn.stages.base import Run

__all__ = ['sft_stage']


@gin.configurable
def sft_stage(
    run: Run,
    name: str = 'sft',
    records=gin.REQUIRED,
    num_steps: Optional[int] = None,
    num_epochs: float = 1.0,
    batch_size: int = 128,
    seq_len: int = 128,
    micro_batches: int = 1,
    optimizer: Optional[train.OptimizerConfig] = None,
    seed: int = 0,
    save_every: int = 200,
    keep: int = 2,
    log_every: int = 10,
    eval_records=None,
    eval_every: int = 0,
    eval_task: str = 'strings_trace',
    eval_max_new_tokens: int = 96,
    packing: bool = False,
):
  """Supervised fine-tuning on ``records`` (``prompt`` + ``target``/``target_ids``; loss on the
  target and EOS). Examples longer than ``seq_len`` are dropped and counted. ``num_steps``
  defaults to ``ceil(num_epochs * N / batch_size)``. Optional periodic greedy evaluation on
  ``eval_records`` (per-level accuracy joins the metrics). ``packing``: several examples per row
  (``compfn.rl.sft.pack_batch``): the same examples and loss per step as the padded batch, on
  far fewer padding tokens."""
  from compfn.rl import sft

  opt = optimizer or train.OptimizerConfig()
  if base.dry(
      run,
      name,
      records=records,
      num_steps=num_steps,
      batch_size=batch_size,
      seq_len=seq_len,
      optimizer=opt,
      tx=opt.make(num_steps or 1),
  ):
    return
  t0 = time.time()
  tok = run.tokenizer
  examples, dropped = [], 0
  for r in records:
    p = run.encode(r['prompt'])
    t = list(r['target_ids']) if r.get('target_ids') is not None else tok.encode(r['target'])
    if len(p) + len(t) > seq_len:
      dropped += 1
      continue
    examples.append((p, t))
  if not examples:
    raise ValueError(
        f'[{name}] every one of {len(records)} examples is longer than ' f'seq_len={seq_len}'
    )
  steps = num_steps if num_steps is not None else math.ceil(num_epochs * len(examples) / batch_size)
  print(
      f'[{run.key(name)}] {len(examples):,} examples ({dropped:,} longer than {seq_len} '
      f'tokens dropped, {dropped / max(len(records), 1):.1%}), {steps} steps of '
      f'{batch_size}',
      flush=True,
  )
  tx = opt.make(steps)
  # The stage's fingerprint (stage_config.json; a change refuses to reuse the folder, exit 5).
  # num_steps is not part of it: raising it continues the stage.
  config = {
      'stage': 'sft',
      'from': run.lineage,
      'examples': base.digest(examples),
      'num_examples': len(examples),
      'batch_size': batch_size,
      'seq_len': seq_len,
      'micro_batches': micro_batches,
      'optimizer': repr(opt),
      'seed': seed,
      'packing': packing,
  }
  trainer = train.Trainer(
      run.stage_dir(name),
      steps,
      save_every=save_every,
      keep=keep,
      log_every=log_every,
      name=run.key(name),
      config=config,
  )
  state, data_state = trainer.restore(training.train_state(run, tx, seed))
  start = int(state.step)
  mc = run.model_config

  tx_lr = opt.lr_schedule(steps)

  def step(state, batch):
    state, m = sft.sft_step(mc, tx, state, batch, micro_batches)
    return state, {**m, 'lr': tx_lr(state.step)}

  step_fn = train.compile_step(step, run.mesh, run.rules)
  if packing:
    # Static shapes: the rows that first-fit packing needs for 64 random batches (the max, so
    # nearly every step has this shape; a batch that needs more rounds up to the next
    # multiple of 8 and compiles once more).
    rng = np.random.default_rng(seed)
    rows = max(
        sft.packed_rows([examples[i] for i in rng.choice(len(examples), batch_size)], seq_len)
        for _ in range(64)
    )
    ndev = jax.device_count()
    mult = 8 * ndev // math.gcd(8, ndev)
    real = sum(len(p) + len(t) for p, t in examples) / len(examples)
    print(
        f'[{run.key(name)}] packing {batch_size} examples into {rows} rows of {seq_len} '
        f'tokens (padded: {batch_size} rows; {real * batch_size / (rows * seq_len):.0%} of '
        f'the packed tokens are real)',
        flush=True,
    )
    make = lambda recs: batches.place(
        sft.pack_batch(
            recs, seq_len, tok.eos_id, tok.pad_id or 0, min_rows=rows, row_multiple=mult  # noqa
        ),
        run.mesh,
        run.rules,
    )
  else:
    make = lambda recs: batches.place(
        sft.make_batch(recs, seq_len, tok.eos_id, tok.pad_id or 0), run.mesh, run.rules  # noqa
    )
  it = batches.record_iterator(examples, batch_size, seed, make)
  if data_state is not None:
    it.set_state(data_state)
  hooks = ()
  if eval_records is not None and eval_every:
    hooks = ((eval_every, training.eval_hook(run, eval_records, eval_task, eval_max_new_tokens)),)
  if start < steps:
    state = trainer.run(
        state, step_fn, it, on_metrics=training.mfu_hook(run, 'tokens', 3.0), hooks=hooks
    )
  training.finish(
      run, name, trainer, state, start, t0, {'examples': len(examples), 'dropped_too_long': dropped}
  )
