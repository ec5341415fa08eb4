#!/usr/bin/env python
"""Tunix 0.1.7 GRPO (and SFT) peer for ``tools/benchmark.py rl-step`` / ``train``.

Runs in its own venv (``/opt/tunix-venv/bin/python``, google-tunix 0.1.7; compfn is not
importable there, so the char tokenizer and the trace scorer are copied below)::

    /opt/tunix-venv/bin/python tools/peers/tunix_grpo.py SPEC.json

SPEC (``mode`` 'grpo')::

    {"mode": "grpo", "chars": CharTokenizer.chars, "model": llama3.ModelConfig kwargs,
     "prompts": [str], "refs": [str], "batch_prompts": P, "num_generations": G,
     "max_new_tokens": N, "prompt_len": Lp, "steps": S, "warmup_steps": W,
     "optimizer": {"learning_rate", "b1", "b2", "eps", "weight_decay", "clip_norm"}}

SPEC (``mode`` 'sft')::

    {"mode": "sft", "model": ..., "batch": B, "seq": L, "steps": S, "warmup_steps": W,
     "optimizer": ...}

Prints one line ``RESULT {json}``.

GRPO setup as spec/BASELINES.md §3: tunix llama3 (random init, ``nnx.Rngs(0)``; ``rope_theta``
patched in because 0.1.7 ignores it), one CPU device, mesh (1, 1) ('fsdp', 'tp'), vanilla
rollout, beta=0 (no reference model), num_iterations=1, T=1.0, top_p=1.0, ``token-mean``
loss aggregation (as compfn), grain batches of P prompts, the reward a Python function on the
host (the trace rule: +1 if the text after the last ';' equals the reference, 0 if not, -1 if
there is no ';'). The tokenizer's EOS is an id outside the vocabulary (``vocab_size``), so no
row ever stops early: every row generates exactly N tokens, as compfn's step with no stop ids.
Optimizer: ``optax.chain(clip_by_global_norm, adamw)`` = compfn's ``OptimizerConfig.make``
with a constant schedule.

Timing: ``learner._run_global_step`` is wrapped; a step's time is the interval between the
starts of consecutive global steps (rollout, reward, advantages, actor update, weight sync
and metric logging), the last step's end is taken when ``train`` returns. Steady state = the
median over steps W+1..S (the first steps compile). ``cluster.generate`` and
``cluster.update_actor`` are wrapped too (rollout / update split).

SFT: ``tunix.sft.peft_trainer.PeftTrainer`` with its default loss (token-mean NLL of
next-token prediction under ``input_mask``) on random token batches [B, L]; seconds per
``train_step`` from the interval between consecutive ``on_train_step_start`` hooks (the
trainer's own loop: jitted step, host-side metric logging; the loop's throttler keeps at most a
couple of steps in flight), the last step ending when ``train`` returns and the model state is
ready; median over steps W+1..S.
"""
import json
import os
import statistics
import sys
import time


class CharTok:
  """compfn's CharTokenizer (PAD=0, EOS=1, chars from 2), but ``eos_id()`` is ``eos`` (an id
  the model never samples, so generation always runs to max_tokens)."""

  def __init__(self, chars, eos):
    self.chars = chars
    self._id = {c: i + 2 for i, c in enumerate(chars)}
    self._eos = eos

  def encode(self, text, **kw):
    return [self._id[c] for c in text]

  def decode(self, ids, **kw):
    return ''.join(self.chars[int(i) - 2] for i in ids if 2 <= int(i) < len(self.chars) + 2)

  def bos_id(self):
    return 0  # falsy: tunix prepends no BOS (compfn's char prompts have none)

  def eos_id(self):
    return self._eos

  def pad_id(self):
    return 0


def score_trace(text, ref):
  if ';' not in text:
    return -1.0
  return 1.0 if text.rpartition(';')[2] == ref else 0.0


def _model(spec):
  from flax import nnx
  from tunix.models.llama3 import model as llama3_model

  tc = dict(spec['model'])
  theta = tc['rope_theta']
  _orig = llama3_model.apply_rope
  llama3_model.apply_rope = lambda inputs, positions, head_dim, rope_theta=None: _orig(
      inputs, positions, head_dim, rope_theta=theta
  )
  cfg = llama3_model.ModelConfig(**tc)
  return cfg, llama3_model.Llama3(cfg, rngs=nnx.Rngs(0))


def _tx(o):
  import optax

  chain = []
  if o.get('clip_norm'):
    chain.append(optax.clip_by_global_norm(o['clip_norm']))
  chain.append(
      optax.adamw(
          o['learning_rate'], b1=o['b1'], b2=o['b2'], eps=o['eps'], weight_decay=o['weight_decay']
      )
  )
  return optax.chain(*chain)


def _steady(starts, end, warm):
  """Per-step intervals; the median over steps warm+1.. (the last interval also drains the
  steps still in flight, so it is left out of the median when there are others)."""
  dts = [b - a for a, b in zip(starts, starts[1:] + [end])]
  tail = dts[warm:-1] if len(dts) - warm > 2 else dts[warm:]
  return dts, statistics.median(tail)


def run_grpo(spec):
  import grain
  import jax
  from jax.sharding import AxisType
  from flax import nnx
  from tunix.rl import rl_cluster as rlc
  from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
  from tunix.rl.rollout.base_rollout import RolloutConfig

  cfg, actor = _model(spec)
  nparams = sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.Param)))
  P, G, N = spec['batch_prompts'], spec['num_generations'], spec['max_new_tokens']
  Lp, S, W = spec['prompt_len'], spec['steps'], spec['warmup_steps']
  tok = CharTok(spec['chars'], eos=cfg.vocab_size)
  rows = [{'prompt': p, 'gt': r} for p, r in zip(spec['prompts'], spec['refs'])]
  assert len(rows) >= P * S, (len(rows), P * S)
  ds = (
      grain.MapDataset.source(rows[: P * S])
      .batch(P)
      .map(lambda x: {'prompts': x['prompt'], 'gt': x['gt']})
  )

  rewards_seen = []
  lengths_seen = []

  def reward(prompts, completions, gt, **kw):
    out = [score_trace(c, g) for c, g in zip(completions, gt)]
    rewards_seen.append(sum(out) / len(out))
    lengths_seen.append(sum(len(c) for c in completions) / len(completions))
    return out

  mesh = jax.make_mesh((1, 1), ('fsdp', 'tp'), axis_types=(AxisType.Auto,) * 2)
  o = spec['optimizer']
  cc = rlc.ClusterConfig(
      role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh, rlc.Role.ROLLOUT: mesh},
      rollout_engine='vanilla',
      offload_to_cpu=False,
      training_config=rlc.RLTrainingConfig(
          actor_optimizer=_tx(o), eval_every_n_steps=10**6, max_steps=S
      ),
      rollout_config=RolloutConfig(
          max_tokens_to_generate=N,
          max_prompt_length=Lp,
          kv_cache_size=Lp + N,
          temperature=1.0,
          top_p=1.0,
          top_k=None,
          eos_tokens=[cfg.vocab_size],
      ),
  )
  cluster = rlc.RLCluster(actor=actor, reference=None, tokenizer=tok, cluster_config=cc)
  learner = GRPOLearner(
      rl_cluster=cluster,
      algo_config=GRPOConfig(
          num_generations=G, num_iterations=1, beta=0.0, loss_agg_mode='token-mean'
      ),
      reward_fns=reward,
  )
  starts, gen_t, upd_t = [], [], []
  f_step = learner._run_global_step

  def step(*a, **k):
    starts.append(time.perf_counter())
    return f_step(*a, **k)

  learner._run_global_step = step
  f_gen, f_upd = cluster.generate, cluster.update_actor

  def gen(*a, **k):
    t = time.perf_counter()
    out = f_gen(*a, **k)
    jax.block_until_ready(getattr(out, 'tokens', out))
    gen_t.append(time.perf_counter() - t)
    return out

  def upd(*a, **k):
    t = time.perf_counter()
    out = f_upd(*a, **k)
    upd_t.append(time.perf_counter() - t)
    return out

  cluster.generate, cluster.update_actor = gen, upd
  t0 = time.perf_counter()
  learner.train(ds)
  end = time.perf_counter()
  dts, med = _steady(starts, end, W)
  from importlib.metadata import version

  res = dict(
      system='tunix',
      tunix=version('google-tunix'),
      jax=jax.__version__,
      flax=version('flax'),
      optax=version('optax'),
      params=int(nparams),
      steps=len(starts),
      step_s=dts,
      steady_step_s=med,
      steady_mean_step_s=(end - starts[W]) / (len(starts) - W),
      rollout_s=statistics.median(gen_t[W:]) if len(gen_t) > W else None,
      update_s=statistics.median(upd_t[W:]) if len(upd_t) > W else None,
      first_step_s=dts[0],
      total_s=end - t0,
      mean_reward=rewards_seen,
      mean_completion_chars=lengths_seen,
      generate_calls=len(gen_t),
      update_calls=len(upd_t),
  )
  print('RESULT ' + json.dumps(res), flush=True)


def run_sft(spec):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from tunix.sft import peft_trainer as pt

  cfg, model = _model(spec)
  nparams = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  B, L, S, W = spec['batch'], spec['seq'], spec['steps'], spec['warmup_steps']
  rng = np.random.default_rng(0)

  def batches():
    for _ in range(S):
      toks = rng.integers(2, cfg.vocab_size, (B, L)).astype(np.int32)
      yield pt.TrainingInput(input_tokens=jnp.asarray(toks), input_mask=jnp.ones((B, L), bool))

  trainer = pt.PeftTrainer(
      model, _tx(spec['optimizer']), pt.TrainingConfig(eval_every_n_steps=10**6, max_steps=S)
  )
  from tunix.sft import utils as sft_utils

  def gen_model_input(x):
    pos = sft_utils.build_positions_from_mask(x.input_mask)
    att = sft_utils.make_causal_attn_mask(x.input_mask)
    return {
        'input_tokens': x.input_tokens,
        'input_mask': x.input_mask,
        'positions': pos,
        'attention_mask': att,
    }

  trainer = trainer.with_gen_model_input_fn(gen_model_input)
  starts = []
  from tunix.sft import hooks

  class Stamp(hooks.TrainingHooks):

    def on_train_start(self, ctx):
      pass

    def on_train_end(self, ctx):
      pass

    def on_train_step_start(self, ctx):
      starts.append(time.perf_counter())

    def on_train_step_end(self, ctx, *a, **k):
      pass

    def on_eval_step_start(self, ctx):
      pass

    def on_eval_step_end(self, ctx, *a, **k):
      pass

  trainer.with_training_hooks(Stamp())
  t0 = time.perf_counter()
  trainer.train(batches())
  jax.block_until_ready(nnx.state(model))
  end = time.perf_counter()
  dts, med = _steady(starts, end, W)
  from importlib.metadata import version

  print(
      'RESULT '
      + json.dumps(
          dict(
              system='tunix',
              tunix=version('google-tunix'),
              jax=jax.__version__,
              params=int(nparams),
              steps=len(starts),
              step_s=dts,
              steady_step_s=med,
              first_step_s=dts[0],
              steady_mean_step_s=(end - starts[W]) / (len(starts) - W),
              total_s=end - t0,
          )
      ),
      flush=True,
  )


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  with open(sys.argv[1]) as fh:
    spec = json.load(fh)
  {'grpo': run_grpo, 'sft': run_sft}[spec['mode']](spec)
