"""Experiments as gin-configured pipelines of stages: sft / rft / rl / eval / gate / branch.

``compfn-train --gin_file=gin/demo.gin --workdir=DIR`` calls :func:`pipeline` (``run.job =
@pipeline``), which loads the model (:func:`load_model`), builds the mesh, runs each stage in
order on a shared :class:`Run`, and writes ``DIR/results.json`` (DESIGN §4: ``accuracy_by_level``
maps "1".."8" to the final evaluation's accuracy), ``DIR/results.md``/``.csv`` and plots.

Each stage works in ``DIR/<stage name>/`` and is resumable: a training stage restores its newest
checkpoint (params, optimizer, step, RNG, data position) and continues exactly; a finished stage
(``DONE``) is not retrained — its final parameters are loaded and the log says so; an evaluation
or gate whose result file exists is read back. Rerunning a finished pipeline therefore reloads
everything, rewrites the reports and prints which stages were already complete.

A stage is a gin-configurable function ``stage(run) -> None``, scoped in gin so one function
serves several stages::

    run.job = @pipeline
    pipeline.stages = [@stage0/sft_stage, @stage1/sft_stage, @gate/gate_stage,
                       @stage2/rl_stage, @final/eval_stage]
    stage0/sft_stage.records = @stage0/trace_records()
    stage0/trace_records.functions = 'generic'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from compfn import errors, parallel, train
from compfn import workdir as workdir_lib
from compfn.data import sources  # noqa: F401  (registers the gin record sources)
from compfn.rl import grpo as _grpo  # noqa: F401  (registers GRPOConfig)
from compfn.model.config import ModelConfig

__all__ = [
    'Run',
    'load_model',
    'char_model',
    'pipeline',
    'sft_stage',
    'rl_stage',
    'rft_stage',
    'eval_stage',
    'gate_stage',
    'export_stage',
    'branch',
    'GateError',
]

gin.external_configurable(ModelConfig, module='compfn')


class GateError(errors.GateNotMet):
  """The pre-RL gate (level-2 pass@k / mixed-reward fraction) was not met and is enforced."""


@dataclasses.dataclass
class Run:
  """What the stages share: the model, tokenizer, mesh, current params and results so far."""

  workdir: str
  model_config: ModelConfig
  params: Any
  tokenizer: Any
  encode: Callable[[str], list]
  mesh: Any
  rules: Any
  seed: int = 0
  peak_flops: float = 290e9
  results: dict = dataclasses.field(default_factory=dict)  # eval/gate name -> EvalResult
  summaries: dict = dataclasses.field(default_factory=dict)  # stage name -> JSON-able summary
  resumed: list = dataclasses.field(default_factory=list)  # stages found already complete
  prefix: str = ''  # set inside a branch
  dry_run: bool = False  # configure every stage, run none
  lineage: list = dataclasses.field(default_factory=list)  # what produced the current params

  def stage_dir(self, name: str) -> str:
    return workdir_lib.makedirs(workdir_lib.join(self.workdir, self.prefix + name))

  def key(self, name: str) -> str:
    return self.prefix + name

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))


# ------------------------------------------------------------------------------------ model


@gin.configurable
def char_model(
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int = 32,
    mlp_dim: int = 352,
    max_len: int = 512,
    rope_theta: float = 10000.0,
    chars: Optional[str] = None,
) -> ModelConfig:
  """A from-scratch Llama-style model over :class:`compfn.tokenizers.CharTokenizer`'s vocabulary
  (MINIATURE.md: L=2, d=128, 4 heads of 32, RoPE, tied embeddings, ~0.4M parameters)."""
  from compfn.tokenizers import CharTokenizer

  tok = CharTokenizer(chars) if chars else CharTokenizer()
  return ModelConfig(
      family='llama',
      vocab_size=tok.vocab_size,
      d_model=d_model,
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=num_heads,
      head_dim=head_dim,
      mlp_dim=mlp_dim,
      max_position_embeddings=max_len,
      rope_theta=rope_theta,
      tie_word_embeddings=True,
      eos_token_ids=(1,),
      pad_token_id=0,
  )


@gin.configurable
def load_model(
    checkpoint: Optional[str] = None,
    config: Optional[ModelConfig] = None,
    tokenizer: Optional[str] = None,
    chat_template: Optional[str] = None,
    seed: int = 0,
    overrides: Optional[dict] = None,
):
  """(model_config, params, tokenizer, encode).

  checkpoint: an HF folder or a .gguf file (``compfn.model.load``); its tokenizer comes with it.
  config: a from-scratch model (random init with ``seed``); ``tokenizer`` defaults to 'char'.
  chat_template: None = the tokenizer's own chat template when it has one (the paper sends the
  prompt as one user message), 'raw' = the prompt text as is (the char models), 'plain' or a
  template string (``Tokenizer.apply_chat_template``).
  overrides: ModelConfig fields to replace (e.g. ``{'remat': 'full', 'dtype': 'bfloat16'}``
  from a hardware gin file); a checkpoint's weights are cast to ``param_dtype``."""
  from compfn import model
  from compfn import tokenizers
  from compfn.model import transformer

  if checkpoint is not None:
    config_, params = model.load(checkpoint, device_put=False)  # host arrays: placed sharded
    tok = tokenizers.load_tokenizer(tokenizer or checkpoint)
  elif config is not None:
    config_ = config
    params = transformer.init_params(config, jax.random.PRNGKey(seed))
    tok = tokenizers.load_tokenizer(tokenizer or 'char')
  else:
    raise ValueError(
        'load_model: set load_model.checkpoint (HF folder / .gguf) or '
        'load_model.config (a from-scratch ModelConfig, e.g. @char_model())'
    )
  if overrides:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
      raise ValueError(f'load_model.overrides: {unknown} are not ModelConfig fields')
    config_ = dataclasses.replace(config_, **dict(overrides))
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(config_.param_dtype)), params)
  if tok.vocab_size > config_.vocab_size:
    raise ValueError(
        f'tokenizer has {tok.vocab_size} ids but the model only ' f'{config_.vocab_size} embeddings'
    )
  template = chat_template
  if template is None and getattr(tok, 'chat_template', None) is None:
    template = 'raw'

  def encode(text: str) -> list:
    if template == 'raw':
      return tok.encode(text)
    rendered = tok.apply_chat_template(
        [{'role': 'user', 'content': text}], add_generation_prompt=True, template=template
    )
    return tok.encode(rendered)

  return config_, params, tok, encode


def _model_origin() -> str:
  """Where the initial parameters come from (the root of :attr:`Run.lineage`)."""
  ckpt = gin.query_parameter('load_model.checkpoint') if _bound('load_model.checkpoint') else None
  seed = gin.query_parameter('load_model.seed') if _bound('load_model.seed') else 0
  return f'checkpoint:{ckpt}' if ckpt else f'init:seed{seed}'


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


def _flops_per_token(config: ModelConfig, num_params: int) -> float:
  """Forward FLOPs per token ~ 2 x (matmul parameters): the input embedding is a lookup."""
  emb = config.vocab_size * config.d_model
  matmul = num_params - (0 if config.tie_word_embeddings else emb)
  return 2.0 * matmul


# ------------------------------------------------------------------------------------- data


class _Batches:
  """A grain iterator of record lists mapped to device batches; forwards get/set_state."""

  def __init__(self, it, fn):
    self._it, self._fn = it, fn

  def __iter__(self):
    return self

  def __next__(self):
    return self._fn(next(self._it))

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def _record_iterator(
    records: Sequence[dict], global_batch: int, seed: int, fn: Callable, shuffle: bool = True
):
  """Batches of ``global_batch`` records. Every process reads the same whole global batch (the
  records are small host data; :func:`_put` places each process's rows on its devices), so a
  run's batches, and hence its losses, do not depend on the number of processes."""
  from compfn.data import pipeline as pipeline_lib

  ds = pipeline_lib.make_dataset(
      list(records),
      global_batch,
      seed=seed,
      shuffle=shuffle,
      num_epochs=None,
      batch_fn=list,
      decode=False,
      num_threads=0,
      shard_index=0,
      shard_count=1,
  )
  return _Batches(iter(ds), fn)


def _put(tree, mesh, rules, replicate: bool = False):
  """Host arrays (the whole global batch, the same on every process) -> global arrays on the
  mesh: the leading axis over the rules' 'batch' mesh axes, or replicated."""
  axes = None if replicate else dict(rules).get('batch')

  def put(x):
    x = np.asarray(x)
    spec = (
        jax.sharding.PartitionSpec(axes, *([None] * (x.ndim - 1)))
        if x.ndim
        else jax.sharding.PartitionSpec()
    )
    return parallel.put_global(x, jax.sharding.NamedSharding(mesh, spec))

  return jax.tree.map(put, tree)


# ---------------------------------------------------------------------------- train stages


def _digest(items) -> str:
  """A stable hash of a stage's data (records, encoded examples): part of its fingerprint."""
  import hashlib

  h = hashlib.sha256()
  for x in items:
    h.update(json.dumps(x, sort_keys=True, default=repr).encode('utf-8'))
  return h.hexdigest()[:16]


def _dry(run: Run, name: str, **info) -> bool:
  """In a dry run, record the stage's resolved configuration instead of running it."""
  if run.dry_run:
    run.summaries[run.key(name)] = {'dry_run': True, **{k: repr(v) for k, v in info.items()}}
  return run.dry_run


def _train_state(run: Run, tx, seed: int) -> train.TrainState:
  state = train.TrainState.create(run.params, tx, seed)
  return train.shard_state(state, run.model_config, run.mesh, run.rules)


def _finish(
    run: Run, name: str, trainer: train.Trainer, state, start_step: int, t0: float, extra: dict
):
  done = trainer.finished() or {}
  rows = train.read_metrics(trainer.directory)
  last = rows[-1] if rows else {}
  summary = {
      'steps': int(state.step),
      'resumed_from': start_step,
      'seconds_this_run': round(time.time() - t0, 1),
      'last_metrics': last,
      **extra,
  }
  if start_step >= trainer.num_steps and done:
    run.resumed.append(run.key(name))
    print(
        f'[{run.key(name)}] already finished at step {done.get("step")} — loaded its final '
        f'checkpoint from {trainer.checkpointer.directory} (delete {trainer.directory} to '
        'retrain it)',
        flush=True,
    )
  run.summaries[run.key(name)] = summary
  run.params = state.params
  tag = f'#{trainer.fingerprint}' if trainer.fingerprint else ''
  run.lineage = run.lineage + [f'{run.key(name)}@{int(state.step)}{tag}']
  trainer.close()


def _mfu_hook(run: Run, tokens_key: str, factor: float, gen: bool = False):
  fpt = _flops_per_token(run.model_config, run.num_params)

  def on_metrics(step, s):
    dt = max(s.get('time/step_s', 0.0), 1e-9)
    if gen:
      flops = fpt * s.get('generated_tokens', 0.0) + 3 * fpt * s.get('train_tokens', 0.0)
      s['tokens_per_s'] = (s.get('generated_tokens', 0.0)) / dt
    else:
      flops = factor * fpt * s.get(tokens_key, 0.0)
      s['tokens_per_s'] = s.get(tokens_key, 0.0) / dt
    s['mfu'] = flops / dt / (run.peak_flops * max(jax.device_count(), 1))
    return s

  return on_metrics


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
  if _dry(
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
      'examples': _digest(examples),
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
  state, data_state = trainer.restore(_train_state(run, tx, seed))
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
    make = lambda recs: _put(
        sft.pack_batch(
            recs, seq_len, tok.eos_id, tok.pad_id or 0, min_rows=rows, row_multiple=mult  # noqa
        ),
        run.mesh,
        run.rules,
    )
  else:
    make = lambda recs: _put(
        sft.make_batch(recs, seq_len, tok.eos_id, tok.pad_id or 0), run.mesh, run.rules  # noqa
    )
  it = _record_iterator(examples, batch_size, seed, make)
  if data_state is not None:
    it.set_state(data_state)
  hooks = ()
  if eval_records is not None and eval_every:
    hooks = ((eval_every, _eval_hook(run, eval_records, eval_task, eval_max_new_tokens)),)
  if start < steps:
    state = trainer.run(state, step_fn, it, on_metrics=_mfu_hook(run, 'tokens', 3.0), hooks=hooks)
  _finish(
      run, name, trainer, state, start, t0, {'examples': len(examples), 'dropped_too_long': dropped}
  )


def _eval_hook(run: Run, records, task: str, max_new_tokens: int):
  from compfn import evaluate

  problems = [
      evaluate.EvalProblem(
          prompt=r['prompt'], ref=r['ref'], level=int(r['level']), group=r.get('group', '')
      )
      for r in records
  ]

  def fn(step, state):
    res = evaluate.evaluate(
        run.model_config,
        state.params,
        run.tokenizer,
        problems,
        task=task,
        max_new_tokens=max_new_tokens,
        greedy=True,
        num_samples=0,
        batch_size=min(128, len(problems)),
        encode=run.encode,
        rng=step,
        mesh=run.mesh,
        rules=run.rules,
        progress=False,
    )
    out = {}
    for group in sorted({p.group for p in problems}):
      for lv, acc in res.accuracy_by_level('greedy', group=group or None).items():
        out[f'eval/{group or "all"}/L{lv}'] = acc
    return out

  return fn


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

  t0 = time.time()
  cfg = grpo or grpo_lib.GRPOConfig()
  opt = optimizer or train.OptimizerConfig(
      learning_rate=1e-6, schedule='constant', warmup_ratio=0.0, b2=0.999
  )
  tok = run.tokenizer
  if _dry(
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
  # The step-credit and shape-aware trace rewards score against the whole reference trace,
  # not the answer.
  whole_trace = cfg.task in ('strings_trace_steps', 'strings_trace_shape')
  ref_key = 'target' if whole_trace else 'ref'
  if whole_trace and any(r.get('target') is None for r in records):
    raise ValueError(f'[{name}] task {cfg.task!r} needs trace records with a target')
  enc = [(run.encode(r['prompt']), r[ref_key]) for r in records]
  if not enc:
    raise ValueError(
        f'[{name}] no prompt left: every reference response is longer than '
        f'max_new_tokens={cfg.max_new_tokens}'
    )
  plen = prompt_len or sampling.bucket_length(max(len(p) for p, _ in enc))
  rlen = ref_len or sampling.bucket_length(max(len(r.encode()) for _, r in enc))
  kept = [(p, r) for p, r in enc if len(p) <= plen and len(r.encode()) <= rlen]
  if not kept:
    raise ValueError(f'[{name}] no prompt fits prompt_len={plen} / ref_len={rlen}')
  print(
      f'[{run.key(name)}] {len(kept):,} prompts (pool {cfg.pool_size}/step: '
      f'{cfg.round_prompts} x {cfg.rounds} rounds, keep {cfg.batch_prompts} groups of '
      f'{cfg.num_generations}), {num_steps} steps',
      flush=True,
  )
  tx = opt.make(num_steps)
  sampler_cfg = cfg.sampler_config(tok.stop_ids, tok.pad_id or 0)
  detok = DetokTables.from_tokenizer(tok)
  config = {
      'stage': 'rl',
      'from': run.lineage,
      'prompts': _digest(kept),
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
  state, data_state = trainer.restore(_train_state(run, tx, seed))
  start = int(state.step)
  mc = run.model_config
  # Every array is an argument of the compiled step (closed-over arrays would be baked into
  # the program as constants). The KL reference is a copy: the state's params are donated.
  ref_params = jax.tree.map(jnp.copy, run.params) if cfg.kl_coef > 0 else None
  detok = _put(detok, run.mesh, run.rules, replicate=True)
  compiled = train.compile_step(grpo_lib.make_step(mc, tx, cfg, sampler_cfg), run.mesh, run.rules)
  step_fn = lambda state, pool: compiled(state, pool, detok, ref_params)  # noqa: E731

  def make(recs):
    pool = grpo_lib.pool_from_host(
        [p for p, _ in recs], [r for _, r in recs], cfg, plen, rlen, tok.pad_id or 0
    )
    return _put(pool, run.mesh, run.rules, replicate=True)

  it = _record_iterator(kept, cfg.pool_size, seed, make)
  if data_state is not None:
    it.set_state(data_state)
  hooks = ()
  if eval_records is not None and eval_every:
    hooks = (
        (
            eval_every,
            _eval_hook(run, eval_records, cfg.task, eval_max_new_tokens or cfg.max_new_tokens),
        ),
    )
  if start < num_steps:
    state = trainer.run(state, step_fn, it, on_metrics=_mfu_hook(run, '', 0, gen=True), hooks=hooks)
  _finish(
      run,
      name,
      trainer,
      state,
      start,
      t0,
      {'prompts': len(kept), 'dropped_reference_too_long': too_long},
  )


@gin.configurable
def rft_stage(
    run: Run,
    name: str = 'rft',
    records=gin.REQUIRED,
    iterations: int = 1,
    problems_per_iteration: Optional[int] = None,
    num_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    task: str = 'strings_trace',
    drop_all_correct: bool = True,
    max_per_prompt: Optional[int] = None,
    sample_batch_size: int = 32,
    seed: int = 0,
    train: bool = True,
):
  """Rejection-sampling fine-tuning (PAPER §2.2; iterative for the stage-2 baseline, §2.3).

  Each iteration samples ``num_samples`` responses per problem with the current model (prompt:
  ``sample_prompt``, e.g. definitions visible), keeps the correct ones, drops problems the
  model always solves, then runs :func:`sft_stage` (bindings of this gin scope) on
  ``train_prompt`` + the kept responses. ``problems_per_iteration`` takes consecutive disjoint
  slices (the paper's 8k problems per iteration). ``train=False`` only collects (one
  iteration): the records stay in ``<name>/iter_0/rft_records.jsonl`` for a later stage, e.g.
  a mixture of two tasks' collections (``gin/experiments/countdown_multibase.gin``)."""
  from compfn.rl import rft

  if not train and iterations != 1:
    raise ValueError(f'[{name}] rft_stage(train=False) collects once; got iterations={iterations}')
  if _dry(run, name, records=records, iterations=iterations, num_samples=num_samples, train=train):
    if train:
      sft_stage(run, name=f'{name}/iter_0/sft', records=records)
    return
  records = list(records)
  for k in range(iterations):
    d = run.stage_dir(f'{name}/iter_{k}')
    path = workdir_lib.join(d, 'rft_records.jsonl')
    stats_path = workdir_lib.join(d, 'rft_stats.json')
    if problems_per_iteration:
      lo = (k * problems_per_iteration) % len(records)
      chunk = [records[(lo + i) % len(records)] for i in range(problems_per_iteration)]
    else:
      chunk = records
    if workdir_lib.exists(stats_path):
      kept = rft.read_records(path)
      stats = workdir_lib.read_json(stats_path)
      print(f'[{run.key(name)}/iter_{k}] reusing {len(kept):,} collected records', flush=True)
    else:
      problems = [
          rft.RFTProblem(
              sample_prompt=r.get('sample_prompt', r['prompt']),
              train_prompt=r.get('train_prompt', r['prompt']),
              ref=r['ref'],
              level=int(r['level']),
          )
          for r in chunk
      ]
      kept, stats = rft.collect(
          run.model_config,
          run.params,
          run.tokenizer,
          problems,
          num_samples=num_samples,
          task=task,
          temperature=temperature,
          max_new_tokens=max_new_tokens,
          drop_all_correct=drop_all_correct,
          max_per_prompt=max_per_prompt,
          batch_size=sample_batch_size,
          encode=run.encode,
          rng=seed + k,
          mesh=run.mesh,
          rules=run.rules,
      )
      if workdir_lib.is_lead():
        rft.write_records(kept, path)
      workdir_lib.write_json(
          stats_path, stats, indent=1
      )  # after the records: it marks them complete
      workdir_lib.barrier(f'rft:{stats_path}')
    print(f'[{run.key(name)}/iter_{k}] RFT collection: {json.dumps(stats)}', flush=True)
    run.summaries[run.key(f'{name}/iter_{k}/collect')] = stats
    if not train:
      return
    if not kept:
      raise ValueError(
          f'[{name}/iter_{k}] no correct responses to fine-tune on '
          f'({stats}); the model cannot bootstrap from this data'
      )
    sft_stage(run, name=f'{name}/iter_{k}/sft', records=kept)


def _eval_problems(records):
  from compfn import evaluate

  return [
      evaluate.EvalProblem(
          prompt=r['prompt'],
          ref=r['ref'],
          level=int(r['level']),
          group=r.get('group', ''),
          target=r.get('target'),
      )
      for r in records
  ]


def _classify(res, sampled: bool = False):
  """Failure-mode classifications of an evaluation's kept responses (trace task): a flat
  list for greedy, a list per problem for samples."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  if any(p.target is None for p in res.problems):
    raise ValueError('failure-mode analysis needs trace records with a target')
  if not sampled:
    trunc = (
        res.greedy_truncated
        if res.greedy_truncated is not None
        else np.zeros(len(res.problems), np.int32)
    )
    return [
        failure_modes_lib.classify(t, p.target, p.ref, truncated=bool(tr))
        for p, t, tr in zip(res.problems, res.greedy_responses, trunc)
    ]
  return [
      [failure_modes_lib.classify(t, p.target, p.ref) for t in row]
      for p, row in zip(res.problems, res.sample_responses)
  ]


def _failure_summary(res, classes) -> dict:
  """{'failure_modes': {level: {category: count}}, 'shape_rate_by_level': {level: rate}} per
  group (key '' = every problem)."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  out = {}
  for g in [None] + res.groups:
    idx = [i for i, p in enumerate(res.problems) if g is None or p.group == g]
    lv = [res.problems[i].level for i in idx]
    cl = [classes[i] for i in idx]
    shape = {}
    for level in sorted(set(lv)):
      sel = [c for c, x in zip(cl, lv) if x == level]
      shape[str(level)] = sum(c.shape_ok for c in sel) / len(sel)
    out[g or 'all'] = {
        'failure_modes': failure_modes_lib.tally(cl, lv),
        'shape_rate_by_level': shape,
    }
  return out


def _evaluate_cached(run: Run, name: str, records, **kw):
  from compfn import evaluate

  d = run.stage_dir(name)
  path = workdir_lib.join(d, 'eval.json')
  problems = _eval_problems(records)
  settings = json.dumps({'kw': kw, 'problems': len(problems)}, sort_keys=True, default=str)
  if workdir_lib.exists(path):
    saved = workdir_lib.read_json(path)
    if saved.get('lineage') == run.lineage and saved.get('settings') == settings:
      res = evaluate.EvalResult.from_json(saved['result'])
      run.resumed.append(run.key(name))
      print(f'[{run.key(name)}] already evaluated these parameters — read {path}', flush=True)
      return res
    print(
        f'[{run.key(name)}] the parameters or the evaluation settings changed since {path} '
        'was written; re-evaluating',
        flush=True,
    )
  res = evaluate.evaluate(
      run.model_config,
      run.params,
      run.tokenizer,
      problems,
      encode=run.encode,
      mesh=run.mesh,
      rules=run.rules,
      **kw,
  )
  workdir_lib.write_json(
      path, {'lineage': run.lineage, 'settings': settings, 'result': res.to_json()}
  )
  workdir_lib.barrier(f'eval:{path}')
  return res


@gin.configurable
def eval_stage(
    run: Run,
    name: str = 'eval',
    records=gin.REQUIRED,
    task: str = 'strings_trace',
    greedy: bool = True,
    num_samples: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    ks: Optional[Sequence[int]] = None,
    batch_size: int = 64,
    seed: int = 0,
    failure_modes: bool = False,
):
  """Per-level accuracy (greedy and/or ``num_samples`` at ``temperature``) and pass@k.

  ``failure_modes`` (trace task, greedy): classify every greedy response against its reference
  trace (``compfn.tasks.strings.failure_modes``: correct / ignores composition / incomplete
  trace / incorrect composition / atomic error / format error) and report the counts and the
  trace-shape rate (the right calls, innermost first) per level; the pipeline tabulates and
  plots them for every evaluation that has them."""
  from compfn import evaluate

  if _dry(run, name, records=records, task=task, greedy=greedy, num_samples=num_samples):
    return
  if failure_modes and (task != 'strings_trace' or not greedy):
    raise ValueError(f"[{name}] failure_modes needs task='strings_trace' and greedy=True")
  res = _evaluate_cached(
      run,
      name,
      records,
      task=task,
      greedy=greedy,
      num_samples=num_samples,
      temperature=temperature,
      max_new_tokens=max_new_tokens,
      ks=tuple(ks) if ks else None,
      batch_size=batch_size,
      rng=seed,
      keep_responses=failure_modes,
  )
  run.results[run.key(name)] = res
  summary = res.summary()
  if failure_modes:
    summary['failure_analysis'] = _failure_summary(res, _classify(res))
  run.summaries[run.key(name)] = summary
  print(evaluate.markdown_table({run.key(name): res}), flush=True)


@gin.configurable
def gate_stage(
    run: Run,
    name: str = 'gate',
    records=gin.REQUIRED,
    task: str = 'strings_trace',
    num_samples: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    min_pass_at_k: float = 0.1,
    min_mixed_frac: float = 0.1,
    enforce: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    require_shape: bool = False,
):
  """The pre-RL gate (MINIATURE.md): pass@``num_samples`` and the fraction of problems whose
  samples are mixed (some right, some wrong: the groups GRPO learns from). ``enforce`` stops the
  pipeline with :class:`GateError` when either is below its threshold; otherwise the verdict is
  recorded in results.json.

  ``require_shape`` (trace task) counts a sample as correct only if its trace also has the right
  shape (the chain's calls, innermost first): a shortcut that lands on the answer without
  composing does not open the gate. Both counts are recorded."""
  if _dry(run, name, records=records, task=task, num_samples=num_samples, enforce=enforce):
    return
  res = _evaluate_cached(
      run,
      name,
      records,
      task=task,
      greedy=False,
      num_samples=num_samples,
      temperature=temperature,
      max_new_tokens=max_new_tokens,
      ks=(1, num_samples),
      batch_size=batch_size,
      rng=seed,
      keep_responses=require_shape,
  )
  c = np.asarray(res.sample_correct)
  extra = {}
  if require_shape:
    classes = _classify(res, sampled=True)
    shaped = np.array([sum(x.category == 'correct' and x.shape_ok for x in row) for row in classes])
    extra = {
        'pass_at_k_any_shape': float(np.mean(c > 0)),
        'shape_rate': float(np.mean([x.shape_ok for row in classes for x in row])),
        'require_shape': True,
    }
    c = shaped
  pass_k = float(np.mean(c > 0))
  mixed = float(np.mean((c > 0) & (c < num_samples)))
  ok = pass_k >= min_pass_at_k and mixed >= min_mixed_frac
  verdict = {
      'pass_at_k': pass_k,
      'k': num_samples,
      'mixed_frac': mixed,
      'sample_accuracy': float(c.sum() / (num_samples * len(c))),
      'min_pass_at_k': min_pass_at_k,
      'min_mixed_frac': min_mixed_frac,
      'passed': ok,
      'enforced': enforce,
      'problems': int(len(c)),
      **extra,
  }
  run.results[run.key(name)] = res
  run.summaries[run.key(name)] = verdict
  print(
      f'[{run.key(name)}] pass@{num_samples} = {pass_k:.3f} (need {min_pass_at_k}), mixed '
      f'groups {mixed:.3f} (need {min_mixed_frac}): {"PASSED" if ok else "NOT MET"}',
      flush=True,
  )
  if enforce and not ok:
    raise GateError(
        f'[{run.key(name)}] gate not met: pass@{num_samples}={pass_k:.3f} '
        f'(min {min_pass_at_k}), mixed fraction {mixed:.3f} (min {min_mixed_frac}); '
        'RL would get (almost) no signal — train stage 0/1 longer'
    )


@gin.configurable
def export_stage(run: Run, name: str = 'export'):
  """Write the current parameters as an HF folder (safetensors + config.json, and the
  tokenizer when it can be saved) to ``<workdir>/<name>/``: the hand-off between experiments
  (e.g. ``load_model.checkpoint = 'runs/stage1_rft/export'``); transformers loads it too."""
  from compfn.model import hf_io

  d = run.stage_dir(name)
  if _dry(run, name, path=d):
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


@gin.configurable
def branch(run: Run, name: str = gin.REQUIRED, stages: Sequence[Callable] = gin.REQUIRED):
  """Run ``stages`` from the current parameters under ``<name>/``, then restore the parameters
  (an experiment arm, e.g. the RL arm and its control in ``gin/repro_cpu.gin``)."""
  saved, prefix, lineage = run.params, run.prefix, run.lineage
  run.prefix = f'{prefix}{name}/'
  try:
    for stage in stages:
      stage(run)
  finally:
    run.params, run.prefix, run.lineage = saved, prefix, lineage


# --------------------------------------------------------------------------------- pipeline


_CURVE_KEYS = (
    ('loss', 'loss'),
    ('token_accuracy', 'token accuracy'),
    ('reward', 'reward'),
    ('accuracy', 'sample accuracy'),
    ('mixed_frac', 'mixed groups'),
    ('groups_trained', 'groups trained'),
    ('entropy', 'entropy'),
)


def plot_training_curves(
    workdir: str, stages: Sequence[str], out: Optional[str] = None
) -> Optional[str]:
  """``training_curves.png`` (in ``out``, default ``workdir``): one row per training stage, its
  logged scalars vs step."""
  from compfn.train import read_metrics

  data = [(s, read_metrics(workdir_lib.join(workdir, s))) for s in stages]
  data = [(s, rows) for s, rows in data if rows]
  if not data:
    return None
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  ncol = max(sum(any(k in r for r in rows) for k, _ in _CURVE_KEYS) for _, rows in data)
  fig, axes = plt.subplots(len(data), ncol, figsize=(3.2 * ncol, 2.6 * len(data)), squeeze=False)
  for i, (stage, rows) in enumerate(data):
    keys = [(k, t) for k, t in _CURVE_KEYS if any(k in r for r in rows)]
    for j in range(ncol):
      ax = axes[i][j]
      if j >= len(keys):
        ax.axis('off')
        continue
      k, title = keys[j]
      pts = [(r['step'], r[k]) for r in rows if k in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
      ax.set_title(f'{stage}: {title}', fontsize=8)
      ax.tick_params(labelsize=7)
      ax.set_xlabel('step', fontsize=7)
  fig.tight_layout()
  path = workdir_lib.join(out or workdir, 'training_curves.png')
  with workdir_lib.local_file(path) as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)
  return path


def _failure_report(run: Run, workdir: str) -> dict:
  """Append the failure-mode tables of every evaluation that classified its responses to
  results.md, and plot them as stacked bars (``failure_modes.png``; one panel per group)."""
  from compfn.tasks.strings import failure_modes as failure_modes_lib

  by_group: dict = {}
  for name, summ in run.summaries.items():
    for group, d in (summ.get('failure_analysis') or {}).items():
      by_group.setdefault(group, {})[name] = d['failure_modes']
  if not by_group:
    return {}
  groups = [g for g in by_group if g != 'all'] or ['all']
  text = [
      '',
      '## Failure modes (greedy responses, classified against the reference trace)',
      '',
      'correct: right answer; ignores_composition: one step (or none) for a multi-call '
      'chain; incomplete_trace: fewer steps than calls; incorrect_composition: wrong calls, '
      'wrong order or a broken hand-over between steps; atomic_error: the right calls in the '
      'right order, a step computed wrong; format_error: unparsable or truncated.',
      '',
  ]
  paths = {}
  for g in groups:
    text.append(failure_modes_lib.markdown_table(by_group[g], title=f'group: {g}'))
    text.append('')
    path = workdir_lib.join(workdir, f'failure_modes_{g}.png')
    with workdir_lib.local_file(path) as f:
      if failure_modes_lib.plot_stacked(by_group[g], f, title=f'failure modes, {g} functions'):
        paths[f'failure_modes_{g}'] = path
  md = workdir_lib.join(workdir, 'results.md')
  workdir_lib.write_text(
      md, (workdir_lib.read_text(md) if workdir_lib.exists(md) else '') + '\n'.join(text) + '\n'
  )
  return paths


@gin.configurable
def pipeline(
    workdir: str,
    stages: Sequence[Callable] = gin.REQUIRED,
    mesh_shape=(-1, 1, 1),
    final_eval: Optional[str] = None,
    seed: int = 0,
    peak_flops: float = 290e9,
    report_title: str = 'compfn',
    dry_run: bool = False,
) -> dict:
  """Load the model, run ``stages`` in order, write results.json / results.md / plots.

  final_eval: the eval stage whose accuracy is results.json's ``accuracy_by_level`` (default:
  the last eval stage that ran). peak_flops: per-device peak for MFU (the 2-core CPU measured
  ~290 GFLOP/s f32; set it in the hardware gin files). dry_run: load the model and resolve
  every stage's configuration (gin bindings, optimizer, GRPO config) without touching data or
  training — ``tests/test_gin_configs.py`` dry-runs every gin file with the model shrunk."""
  from compfn import evaluate

  t0 = time.time()
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(tuple(mesh_shape))
  rules = parallel.logical_rules()
  config, params, tok, encode = load_model()
  params = jax.device_put(params, parallel.param_shardings(config, mesh, rules))
  run = Run(
      workdir=workdir,
      model_config=config,
      params=params,
      tokenizer=tok,
      encode=encode,
      mesh=mesh,
      rules=rules,
      seed=seed,
      peak_flops=peak_flops,
      dry_run=dry_run,
      lineage=[_model_origin()],
  )
  print(
      f'model: {config.family}, {run.num_params:,} parameters; mesh {dict(mesh.shape)}; '
      f'{len(stages)} stages',
      flush=True,
  )
  for stage in stages:
    stage(run)
  if dry_run:
    return {'dry_run': True, 'stages': run.summaries}
  evals = {k: v for k, v in run.results.items() if run.summaries.get(k, {}).get('passed') is None}
  final = final_eval or (list(evals)[-1] if evals else None)
  if final is not None and final not in run.results:
    raise ValueError(
        f'pipeline.final_eval={final!r} is not an evaluation that ran; have '
        f'{sorted(run.results)}'
    )
  out = {
      'accuracy_by_level': {},
      'final_eval': final,
      'machine': {
          'platform': platform.platform(),
          'processor': platform.processor(),
          'devices': [str(d) for d in jax.devices()],
      },
      'num_params': run.num_params,
      'seconds': round(time.time() - t0, 1),
      'stages': run.summaries,
      'already_complete': run.resumed,
  }
  if final is not None:
    res = run.results[final]
    out['accuracy_by_level'] = res.accuracy_by_level(
        'greedy' if res.greedy_acc is not None else 'sampled'
    )
  if jax.process_index() == 0:
    if evals:
      out['reports'] = evaluate.write_report(evals, workdir, title=report_title)
      print(evaluate.markdown_table(evals), flush=True)
      fm = _failure_report(run, workdir)
      if fm:
        out['reports'].update(fm)
    curves = plot_training_curves(workdir, [k for k, v in run.summaries.items() if 'steps' in v])
    if curves:
      out.setdefault('reports', {})['training_curves'] = curves
    path = workdir_lib.join(workdir, 'results.json')
    workdir_lib.write_json(path, out, indent=1, default=float)
    print(f'wrote {path}: accuracy_by_level = {out["accuracy_by_level"]}', flush=True)
    if run.resumed:
      print(
          f'note: {len(run.resumed)} stage(s) were already complete in {workdir} and were '
          f'loaded, not rerun: {", ".join(run.resumed)}',
          flush=True,
      )
  return out
