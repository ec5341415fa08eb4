"""The RL stage: GRPO (``compfn.rl.grpo``) on prompt/reference records, one fused XLA program per
step, resumable."""

from __future__ import annotations

import time
from typing import Optional

import gin
import jax
import jax.numpy as jnp

from compfn import train
from compfn.stages import base, batches, training
from compfn.stages.base import Run

__all__ = ['rl_stage']


@gin.configurable
def rl_stage(
    run: Run,
    name: str = 'rl',
    records=gin.REQUIRED,
    grpo=None,
    num_steps: int = 100,
    optimizer: Optional[train.OptimizerConfig] = None,
    prompt_len: Optional[int] = None,
    ref_len: Optional[int] = None,
    seed: int = 0,
    save_every: int = 50,
    keep: int = 2,
    log_every: int = 1,
    eval_records=None,
    eval_every: int = 0,
    eval_max_new_tokens: Optional[int] = None,
):
  """GRPO (``compfn.rl.grpo``) on ``records`` (``prompt``, ``ref``): one fused XLA program per
  step. The KL reference (when ``grpo.kl_coef > 0``) is the stage's initial policy."""
  from compfn.rl import grpo as grpo_lib
  from compfn.rl.rollout import DetokTables
  from compfn import sampling
  from compfn.tasks import registry as task_registry

  t0 = time.time()
  cfg = grpo or grpo_lib.GRPOConfig()
  opt = optimizer or train.OptimizerConfig(
      learning_rate=1e-6, schedule='constant', warmup_ratio=0.0, b2=0.999
  )
  tok = run.tokenizer
  if base.dry(
      run,
      name,
      records=records,
      grpo=cfg,
      optimizer=opt,
      tx=opt.make(num_steps),
      sampler=cfg.sampler_config(tok.stop_ids, tok.pad_id or 0),
  ):
    return
  records = list(records)
  too_long = 0
  if records and all(r.get('target') is not None for r in records):
    # A correct response longer than the token budget is always scored as overlong (-1):
    # such prompts can only teach the model to stop early. Drop them and say how many.
    fits = [len(tok.encode(r['target'])) + 1 <= cfg.max_new_tokens for r in records]
    too_long = len(records) - sum(fits)
    longest = max(len(tok.encode(r['target'])) + 1 for r in records)
    records = [r for r, ok in zip(records, fits) if ok]
    print(
        f'[{run.key(name)}] reference responses up to {longest} tokens (with EOS); '
        f'{too_long:,} prompts whose reference exceeds max_new_tokens={cfg.max_new_tokens} '
        'dropped',
        flush=True,
    )
  # Each task's reference, as its scorer reads it (Task.reference_of: the step-credit and
  # shape-aware trace rewards score against the whole reference trace, not the answer).
  task = task_registry.get(cfg.task)
  if any(r.get(task.record_reference) is None for r in records):
    raise ValueError(
        f"[{name}] task {cfg.task!r} reads its reference from the records' "
        f'{task.record_reference!r}, which some records lack'
    )
  # reference='execute': each prompt also carries its problem's (code, input), from which the
  # step computes the reference on device (the stored one is the fallback for flagged rows).
  programs = grpo_lib.programs_of(cfg, records) if cfg.reference == 'execute' else None
  enc = [(run.encode(r['prompt']), task.reference_of(r)) for r in records]
  if programs is not None:
    enc = [(p, r, prog) for (p, r), prog in zip(enc, programs)]
  if not enc:
    raise ValueError(
        f'[{name}] no prompt left: every reference response is longer than '
        f'max_new_tokens={cfg.max_new_tokens}'
    )
  plen = prompt_len or sampling.bucket_length(max(len(e[0]) for e in enc))
  rlen = ref_len or sampling.bucket_length(max(len(e[1].encode()) for e in enc))
  kept = [e for e in enc if len(e[0]) <= plen and len(e[1].encode()) <= rlen]
  if not kept:
    raise ValueError(f'[{name}] no prompt fits prompt_len={plen} / ref_len={rlen}')
  print(
      f'[{run.key(name)}] {len(kept):,} prompts (pool {cfg.pool_size}/step: '
      f'{cfg.round_prompts} x {cfg.rounds} rounds, keep {cfg.batch_prompts} groups of '
      f'{cfg.num_generations}), {num_steps} steps'
      + (', references computed on device (the JAX interpreter)' if programs is not None else ''),
      flush=True,
  )
  tx = opt.make(num_steps)
  sampler_cfg = cfg.sampler_config(tok.stop_ids, tok.pad_id or 0)
  detok = DetokTables.from_tokenizer(tok)
  config = {
      'stage': 'rl',
      'from': run.lineage,
      'prompts': base.digest(kept),
      'num_prompts': len(kept),
      'grpo': repr(cfg),
      'optimizer': repr(opt),
      'prompt_len': plen,
      'ref_len': rlen,
      'seed': seed,
  }
  trainer = train.Trainer(
      run.stage_dir(name),
      num_steps,
      save_every=save_every,
      keep=keep,
      log_every=log_every,
      name=run.key(name),
      config=config,
  )
  state, data_state = trainer.restore(training.train_state(run, tx, seed))
  start = int(state.step)
  mc = run.model_config
  # Every array is an argument of the compiled step (closed-over arrays would be baked into
  # the program as constants). The KL reference is a copy: the state's params are donated.
  ref_params = jax.tree.map(jnp.copy, run.params) if cfg.kl_coef > 0 else None
  detok = batches.place(detok, run.mesh, run.rules, replicate=True)
  compiled = train.compile_step(grpo_lib.make_step(mc, tx, cfg, sampler_cfg), run.mesh, run.rules)
  step_fn = lambda state, pool: compiled(state, pool, detok, ref_params)  # noqa: E731

  def make(recs):
    pool = grpo_lib.pool_from_host(
        [e[0] for e in recs],
        [e[1] for e in recs],
        cfg,
        plen,
        rlen,
        tok.pad_id or 0,
        programs=[e[2] for e in recs] if programs is not None else None,
    )
    return batches.place(pool, run.mesh, run.rules, replicate=True)

  it = batches.record_iterator(kept, cfg.pool_size, seed, make)
  if data_state is not None:
    it.set_state(data_state)
  hooks = ()
  if eval_records is not None and eval_every:
    hooks = (
        (
            eval_every,
            training.eval_hook(
                run, eval_records, cfg.task, eval_max_new_tokens or cfg.max_new_tokens
            ),
        ),
    )
  if start < num_steps:
    state = trainer.run(
        state, step_fn, it, on_metrics=training.mfu_hook(run, '', 0, gen=True), hooks=hooks
    )
  training.finish(
      run,
      name,
      trainer,
      state,
      start,
      t0,
      {'prompts': len(kept), 'dropped_reference_too_long': too_long},
  )
