"""GRPO as the paper ran it, with dynamic sampling inside the jitted step.

One call of :func:`grpo_step` is one XLA program (DESIGN §1)::

    pool of R x gen prompts ─► round r: sample gen x G ─► detokenise ─► verify ─► advantages
        ─► keep groups whose rewards differ (dynamic sampling) ─► scatter into the batch buffer
        ─► loop (lax.while_loop) until ``batch_prompts`` groups are kept or R rounds are used
        ─► teacher-forced log-probs ─► clipped policy loss (+ KL, − entropy) ─► AdamW update

The train half computes logits only where the loss is: the trunk runs over each prompt ONCE
for its G responses and over the responses (``compfn.model.transformer.response_hidden``:
the same values as ``[prompt | response]`` rows, G-fold less prompt work), the final norm +
LM head only at the N positions predicting response tokens, in
chunks of ``GRPOConfig.logits_chunk`` positions (rematerialised in the backward pass), so no
``[rows, T, V]`` or ``[rows, N, V]`` f32 tensor exists (``compfn.rl.losses.
token_stats_from_hidden``). The entropy is differentiated only when ``entropy_coef != 0`` and the
reference model runs only when ``kl_coef > 0``.

Dynamic sampling, exactly as DAPO/the paper's veRL fork: a group is kept when its rewards are not
all equal (``compfn.rl.advantages.mixed_groups``; ``filter_on='acc'`` keeps groups whose
*accuracies* differ instead, so an all-wrong group mixing 0 and the overlong -1 is not kept); kept
groups are packed into a fixed ``[batch_prompts, G, N]`` buffer with a cumsum-indexed scatter
(``mode='drop'`` discards the overflow, i.e. the batch is truncated to exactly ``batch_prompts``
groups); the loop is bounded
by ``max_rounds`` (the paper's ``max_num_gen_batches=10``). Where the paper raises after the
last round, compfn trains on the groups it has (the unfilled rows have zero weight: the loss is
normalised by the global count of *kept* tokens) and reports ``filled`` < 1 in the metrics.
Without dynamic sampling the step samples ``batch_prompts`` prompts once and keeps every group.

References (``GRPOConfig.reference``): ``'stored'`` (default) — the pool is a ``RolloutBatch``
carrying each prompt's reference bytes. ``'execute'`` — the pool is an :class:`ExecutePool`: the
same batch plus each problem's program and input, encoded by the task's
``Task.computed_reference`` (:func:`pool_from_host` with ``programs=``); each round first runs
the programs with the JAX interpreter (:func:`resolve_references`, inside the same XLA program)
and scores the responses against its outputs. Where the interpreter's fixed buffers
(``GRPOConfig.execute``, an ``ExecuteSpec``) overflow, the example is flagged and scored against
its stored reference, exactly as against the Python reference; ``reference_overflow_frac`` (only
in this mode) is the flagged share of the sampled prompts.

The host feeds a *pool* of ``pool_size = gen_prompts * max_rounds`` prompts per step (the rounds
read consecutive slices), so the data consumed per step is fixed and resuming is exact; prompts
of rounds that were not needed are skipped.

A step whose rounds kept no group at all (or fewer than ``min_groups``) is skipped: it consumes its
data but does not touch the weights or the optimizer state (``skipped_update`` = 1 and
``groups_trained`` = 0 in the metrics), so AdamW's momentum and weight decay cannot drift the
policy on empty steps.

Log-probabilities: the sampler draws from ``softmax(logits / T)`` and records that
distribution's log-probs (``SamplerConfig.logprobs='temperature'``, set by
:meth:`GRPOConfig.sampler_config`); the trainer divides its teacher-forced logits by the same
static ``GRPOConfig.temperature`` (veRL's actor does the same), so ``old_logprobs='sampler'`` is
a true importance ratio and the entropy is that of the sampled distribution. Greedy (T = 0) uses
raw logits in both. top-k / top-p are rejected: their truncation is in neither log-prob, so the
policy gradient would not be that of the sampling distribution.

Metrics of :func:`grpo_step` (all scalars)::

    reward, accuracy        mean reward / accuracy of every sampled response (all rounds);
                            aliases ``reward_mean``, ``sample_acc``
    mixed_frac              fraction of sampled groups whose rewards differ (``kept_groups``:
                            the same number, its former name)
    mixed_acc_frac          fraction of sampled groups whose accuracies differ
    groups_kept             groups in the buffer after dynamic sampling (<= batch_prompts)
    groups_trained          groups in the update (groups_kept, or 0 on a skipped step)
    filled                  groups_trained / batch_prompts
    rounds_used             generation rounds run (<= max_rounds)
    skipped_update          1 when the update was skipped (no group / < min_groups)
    truncated_frac, overlong_frac, byte_overflow_frac, response_length, generated_tokens,
    generated_samples, train_tokens, loss, pg_loss, entropy, clip_frac, approx_kl, kl,
    sampler_logprob_gap, grad_norm, nonfinite
    reference_overflow_frac  (reference='execute' only) sampled prompts whose computed reference
                            was flagged and replaced by the stored one

Strictly on-policy as in the paper (one update per batch; ``old_logprobs='recompute'`` makes
``old = stop_gradient(new)``, so the ratio is 1 and clipping inactive); ``old_logprobs='sampler'``
uses the sampler's log-probs instead (importance ratio against the behaviour policy).
Losses are normalised by global token/sequence counts, so micro-batching and the mesh do not
change the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import gin
import jax
import jax.numpy as jnp

from compfn import sampling
from compfn.model import transformer
from compfn.model.config import ModelConfig
from compfn.rl import losses
from compfn.rl.advantages import mixed_groups
from compfn.rl.rollout import DetokTables, RolloutBatch, rollout_fn
from compfn.tasks import registry as task_registry
from compfn.tasks.strings.device_reference import ExecuteSpec

Array = jax.Array

__all__ = [
    'GRPOConfig',
    'Buffer',
    'ExecutePool',
    'GenStats',
    'Rows',
    'ResponseStats',
    'FILTER_ON',
    'REFERENCE_MODES',
    'group_filter',
    'generate',
    'response_logprobs',
    'policy_grads',
    'grpo_step',
    'make_step',
    'pool_from_host',
    'programs_of',
    'resolve_references',
]

FILTER_ON = ('reward', 'acc')
#: ``GRPOConfig.reference``: 'stored' (the pool carries each prompt's reference) | 'execute'
#: (the pool carries each problem's program and input; the step computes the reference on
#: device with the task's :class:`~compfn.tasks.registry.ComputedReference`).
REFERENCE_MODES = ('stored', 'execute')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Static GRPO hyperparameters (hashable). Defaults are the paper's stage-2 run (PAPER §2.3):
  16 prompts x 16 samples at T=1, 32-prompt generation rounds, up to 10 rounds, clip 0.2/0.2,
  token-mean, no KL, no entropy bonus."""

  num_generations: int = 16  # G samples per prompt
  batch_prompts: int = 16  # groups per update
  gen_prompts: int = 32  # prompts sampled per dynamic-sampling round
  max_rounds: int = 10
  dynamic_sampling: bool = True
  max_new_tokens: int = 8192
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  task: str = 'strings_json'  # compfn.rl.rollout.TASKS
  max_bytes: Optional[int] = None  # byte buffer of the detokeniser (default: rollout's)
  clip_low: float = 0.2
  clip_high: float = 0.2
  loss_agg: str = 'token-mean'  # compfn.rl.losses.AGG_MODES
  kl_coef: float = 0.0
  kl_estimator: str = 'low_var_kl'
  entropy_coef: float = 0.0
  old_logprobs: str = 'recompute'  # 'recompute' (on-policy, ratio 1) | 'sampler'
  micro_batches: int = 1  # gradient accumulation over the B*G rows (micro-batches holding no
  # kept group are skipped: with dynamic sampling, more micro-batches = less padding computed)
  filter_on: str = 'reward'  # dynamic sampling keeps groups whose 'reward' | 'acc' differ
  min_groups: int = 0  # skip the update when fewer groups were kept
  logits_chunk: int = 0  # response positions per LM-head chunk (0: <= 64 MiB f32)
  gen_chunks: int = 1  # sub-batches a generation round is sampled in (one after
  # another: the KV cache holds round_prompts / gen_chunks x G)
  reference: str = 'stored'  # REFERENCE_MODES: 'execute' runs the programs in the step
  execute: ExecuteSpec = ExecuteSpec()  # static buffers of reference='execute'
  train_widths: tuple = ()  # response widths (< max_new_tokens) the train half may run at: each
  # micro-batch runs at the smallest of (*train_widths, max_new_tokens) holding its longest
  # response, groups sorted longest first (lax.switch, one compiled branch per width)

  def __post_init__(self):
    if self.loss_agg not in losses.AGG_MODES:
      raise ValueError(f'GRPOConfig.loss_agg={self.loss_agg!r}; one of {losses.AGG_MODES}')
    if self.kl_estimator not in losses.KL_ESTIMATORS:
      raise ValueError(
          f'GRPOConfig.kl_estimator={self.kl_estimator!r}; one of ' f'{losses.KL_ESTIMATORS}'
      )
    if self.old_logprobs not in ('recompute', 'sampler'):
      raise ValueError(
          "GRPOConfig.old_logprobs must be 'recompute' or 'sampler', got " f'{self.old_logprobs!r}'
      )
    for name in (
        'num_generations',
        'batch_prompts',
        'gen_prompts',
        'max_rounds',
        'micro_batches',
        'max_new_tokens',
        'gen_chunks',
    ):
      if getattr(self, name) < 1:
        raise ValueError(f'GRPOConfig.{name} must be >= 1, got {getattr(self, name)}')
    if self.logits_chunk < 0:
      raise ValueError(
          f'GRPOConfig.logits_chunk must be >= 0 (0 = auto), got ' f'{self.logits_chunk}'
      )
    if self.filter_on not in FILTER_ON:
      raise ValueError(
          f'GRPOConfig.filter_on={self.filter_on!r}; one of {FILTER_ON} (the '
          'per-sample signal whose spread makes a group "mixed")'
      )
    if not 0 <= self.min_groups <= self.batch_prompts:
      raise ValueError(
          f'GRPOConfig.min_groups must be in [0, batch_prompts={self.batch_prompts}]'
          f', got {self.min_groups} (a larger value would skip every step)'
      )
    if self.temperature < 0:
      raise ValueError(f'GRPOConfig.temperature must be >= 0, got {self.temperature}')
    if self.top_k != 0 or self.top_p != 1.0:
      raise ValueError(
          f'GRPOConfig.top_k={self.top_k}, top_p={self.top_p}: GRPO supports only top_k=0 and '
          'top_p=1.0. The sampler would draw from the truncated (top-k/top-p renormalised) '
          "distribution, but both the sampler's and the trainer's log-probs are of the full "
          'softmax(logits / T), so the policy-gradient log-prob (and the importance ratio of '
          "old_logprobs='sampler') would not be that of the sampling distribution. Use "
          'temperature alone.'
      )
    if (self.batch_prompts * self.num_generations) % self.micro_batches:
      raise ValueError(
          f'GRPOConfig: batch_prompts * num_generations = '
          f'{self.batch_prompts * self.num_generations} rows is not divisible by '
          f'micro_batches={self.micro_batches}'
      )
    widths = tuple(self.train_widths)
    if any(not isinstance(w, int) or isinstance(w, bool) for w in widths) or list(widths) != sorted(
        set(widths)
    ):
      raise ValueError(
          f'GRPOConfig.train_widths={self.train_widths!r}: strictly increasing ints, e.g. (32, 64)'
      )
    if widths and not 1 <= widths[0] <= widths[-1] < self.max_new_tokens:
      raise ValueError(
          f'GRPOConfig.train_widths={self.train_widths!r}: each width must be in '
          f'[1, max_new_tokens={self.max_new_tokens}) (max_new_tokens is always the last one)'
      )
    if widths and self.batch_prompts % self.micro_batches:
      raise ValueError(
          f'GRPOConfig.train_widths needs micro-batches of whole groups: batch_prompts='
          f'{self.batch_prompts} is not divisible by micro_batches={self.micro_batches}'
      )
    object.__setattr__(self, 'train_widths', widths)  # a gin list -> hashable tuple
    if self.reference not in REFERENCE_MODES:
      raise ValueError(f'GRPOConfig.reference={self.reference!r}; one of {REFERENCE_MODES}')
    if not isinstance(self.execute, ExecuteSpec):
      raise TypeError(f'GRPOConfig.execute must be an ExecuteSpec, got {self.execute!r}')
    if self.reference == 'execute' and self.computed_reference is None:
      raise ValueError(
          f"GRPOConfig.reference='execute': task {self.task!r} cannot compute its reference on "
          'device (no Task.computed_reference); tasks that can: '
          + ', '.join(n for n, t in task_registry.tasks().items() if t.computed_reference)
      )
    if self.round_prompts % self.gen_chunks:
      raise ValueError(
          f'GRPOConfig: a generation round of {self.round_prompts} prompts '
          f'({"gen_prompts" if self.dynamic_sampling else "batch_prompts"}) is not '
          f'divisible by gen_chunks={self.gen_chunks}'
      )

  @property
  def computed_reference(self) -> Optional[task_registry.ComputedReference]:
    """The task's :class:`~compfn.tasks.registry.ComputedReference` (None if it has none)."""
    try:
      return task_registry.get(self.task).computed_reference
    except KeyError:
      return None

  @property
  def rounds(self) -> int:
    return self.max_rounds if self.dynamic_sampling else 1

  @property
  def round_prompts(self) -> int:
    return self.gen_prompts if self.dynamic_sampling else self.batch_prompts

  @property
  def pool_size(self) -> int:
    """Prompts the host supplies per step."""
    return self.round_prompts * self.rounds

  @property
  def logit_scale(self) -> float:
    """The static divisor of the trainer's logits: the sampling temperature (1 when greedy)."""
    return self.temperature if self.temperature > 0 else 1.0

  def sampler_config(self, stop_ids=(), pad_id: int = 0) -> sampling.SamplerConfig:
    """The sampler of this config: log-probs of ``softmax(logits / T)``, as the trainer's."""
    return sampling.SamplerConfig(
        max_new_tokens=self.max_new_tokens,
        temperature=self.temperature,
        top_k=self.top_k,
        top_p=self.top_p,
        stop_ids=tuple(stop_ids),
        num_samples=self.num_generations,
        pad_id=pad_id,
        logprobs='temperature',
    )

  def check_sampler(self, sampler_cfg: sampling.SamplerConfig) -> None:
    """Raises ValueError unless ``sampler_cfg`` is ``self.sampler_config(...)`` (any stop ids
    and pad id): G, N, T, top-k/p and the log-prob mode must agree with this config."""
    want = self.sampler_config(sampler_cfg.stop_ids, sampler_cfg.pad_id)
    if sampler_cfg == want:
      return
    diff = [
        f'{f.name}={getattr(sampler_cfg, f.name)!r} (GRPOConfig wants '
        f'{getattr(want, f.name)!r})'
        for f in dataclasses.fields(want)
        if getattr(sampler_cfg, f.name) != getattr(want, f.name)
    ]
    raise ValueError(
        'the SamplerConfig does not match the GRPOConfig: '
        + ', '.join(diff)
        + '; build it with GRPOConfig.sampler_config(stop_ids, pad_id)'
    )


@flax.struct.dataclass
class Buffer:
  """The kept groups of one step: ``[P, ...]`` per prompt, ``[P, G, ...]`` per sample."""

  prompts: Array  # int32[P, Lp]
  prompt_lens: Array  # int32[P]
  tokens: Array  # int32[P, G, N]
  mask: Array  # bool[P, G, N]
  logprobs: Array  # f32[P, G, N] sampler log-probs
  advantage: Array  # f32[P, G]
  reward: Array  # f32[P, G]
  filled: Array  # int32[]  groups kept (<= P)


def _empty_buffer(p: int, g: int, n: int, lp: int) -> Buffer:
  return Buffer(
      prompts=jnp.zeros((p, lp), jnp.int32),
      prompt_lens=jnp.ones((p,), jnp.int32),
      tokens=jnp.zeros((p, g, n), jnp.int32),
      mask=jnp.zeros((p, g, n), bool),
      logprobs=jnp.zeros((p, g, n), jnp.float32),
      advantage=jnp.zeros((p, g), jnp.float32),
      reward=jnp.zeros((p, g), jnp.float32),
      filled=jnp.zeros((), jnp.int32),
  )


@flax.struct.dataclass
class ExecutePool:
  """The pool of ``GRPOConfig.reference = 'execute'``: the prompts with their stored references
  (``batch``; read only for the examples whose computed reference is flagged) and each problem's
  program and input, encoded by the task's ``ComputedReference.encode`` (``programs``; for the
  string task a :class:`compfn.tasks.strings.device_reference.ProgramBatch`)."""

  batch: RolloutBatch
  programs: Any


@flax.struct.dataclass
class GenStats:
  """Generation statistics of a step, summed over its rounds (f32 scalars)."""

  samples: Array  # responses sampled
  reward_sum: Array
  correct: Array  # responses with acc = 1
  response_tokens: Array
  truncated: Array
  groups: Array  # prompts sampled
  mixed_groups: Array  # groups whose rewards differ
  mixed_acc_groups: Array  # groups whose accuracies differ
  rounds: Array
  byte_overflow: Array
  neg_score: Array  # responses scored < 0
  reference_overflow: Array  # prompts whose computed reference was flagged ('execute')

  @classmethod
  def zeros(cls) -> 'GenStats':
    return cls(**{f.name: jnp.zeros((), jnp.float32) for f in dataclasses.fields(cls)})


@flax.struct.dataclass
class Rows:
  """The buffer as ``P*G`` flat training rows ``[prompt | response]`` (:func:`_flat_rows`)."""

  tokens: Array  # int32[R, T] packed prompt + response
  prompts: Array  # int32[R, Lp] each row's prompt (rows of a group share it)
  prompt_lens: Array  # int32[R]
  positions: Array  # int32[R, T]
  segment_ids: Array  # int32[R, T]
  src: Array  # int32[R, N] positions whose logits predict the response tokens
  response: Array  # int32[R, N]
  mask: Array  # bool[R, N] response tokens of kept groups
  old_logprobs: Array  # f32[R, N] sampler log-probs
  advantage: Array  # f32[R] (0 on unfilled rows)
  row_valid: Array  # bool[R] the row belongs to a kept group


@flax.struct.dataclass
class ResponseStats:
  """Teacher-forced statistics of the response tokens (:func:`_response_stats`)."""

  logprobs: Array  # f32[R, N]
  entropy: Optional[Array] = None  # f32[R, N] (None when not asked for)


def group_filter(reward: Array, acc: Array, group_size: int, filter_on: str = 'reward') -> Array:
  """bool[B]: the groups dynamic sampling keeps — those whose ``reward`` (the paper's rule) or
  ``acc`` (``filter_on='acc'``) is not the same for all G samples. ``reward``/``acc``: [B*G].

  E.g. rewards [0, -1, 0, 0] with accuracies [0, 0, 0, 0] (all wrong, one overlong) form a group
  kept on 'reward' but not on 'acc'."""
  if filter_on not in FILTER_ON:
    raise ValueError(f'filter_on={filter_on!r}; one of {FILTER_ON}')
  return mixed_groups(reward if filter_on == 'reward' else acc, group_size)


def _round_rollout(
    model_config: ModelConfig,
    params: Any,
    sub: RolloutBatch,
    rng: Array,
    cfg: GRPOConfig,
    sampler_cfg: sampling.SamplerConfig,
    detok: DetokTables,
):
  """One generation round's Rollout (``round_prompts`` x G rows). With ``cfg.gen_chunks`` =
  k > 1 the round is sampled as k consecutive sub-batches of ``round_prompts / k`` prompts
  (``lax.map``: one sub-batch's KV cache and decode state live at a time), sub-batch i with
  ``fold_in(rng, i)``, and the results are concatenated in prompt order (groups never straddle
  sub-batches, so advantages and the group filter are unchanged). Greedy rounds are identical
  for every k; sampled ones draw different (equally distributed) tokens."""
  k = cfg.gen_chunks
  if k == 1:
    return rollout_fn(
        model_config, params, sub, rng, sampler_cfg, cfg.task, detok=detok, max_bytes=cfg.max_bytes
    )
  per = cfg.round_prompts // k
  chunks = jax.tree.map(lambda x: x.reshape((k, per) + x.shape[1:]), sub)

  def one(args):
    i, part = args
    return rollout_fn(
        model_config,
        params,
        part,
        jax.random.fold_in(rng, i),
        sampler_cfg,
        cfg.task,
        detok=detok,
        max_bytes=cfg.max_bytes,
    )

  ro = jax.lax.map(one, (jnp.arange(k, dtype=jnp.int32), chunks))
  # Group ids are per sub-batch; offset them to the round's prompt index.
  ro = ro.replace(group=ro.group + (jnp.arange(k, dtype=jnp.int32) * per)[:, None])
  return jax.tree.map(lambda x: x.reshape((k * x.shape[1],) + x.shape[2:]), ro)


def _check_pool(pool, cfg: GRPOConfig) -> RolloutBatch:
  """The pool's prompts/stored references; raises unless the pool matches ``cfg.reference``."""
  if cfg.reference == 'execute':
    if not isinstance(pool, ExecutePool):
      raise TypeError(
          "GRPOConfig.reference='execute' needs an ExecutePool (pool_from_host(..., "
          f'programs=...)), got {type(pool).__name__}'
      )
    return pool.batch
  if not isinstance(pool, RolloutBatch):
    raise TypeError(
        "GRPOConfig.reference='stored' needs a RolloutBatch pool, got " f'{type(pool).__name__}'
    )
  return pool


def resolve_references(pool, cfg: GRPOConfig) -> tuple[RolloutBatch, Array]:
  """(batch, flagged bool[B]): the prompts with the references the responses are scored against
  (pure, jittable). ``reference='stored'``: the pool itself, nothing flagged. ``'execute'``: the
  references computed on device by the task's ``ComputedReference.compute`` (for the string task
  the JAX interpreter, :mod:`compfn.tasks.strings.device_reference`), at the pool's static
  reference width; where the computation is flagged (the interpreter's buffers overflowed, the
  output does not fit the reference width, the host could not encode the program) the stored
  reference is used instead, so every response is scored exactly as against the Python
  reference."""
  batch = _check_pool(pool, cfg)
  if cfg.reference == 'stored':
    return batch, jnp.zeros(batch.prompt_lens.shape, bool)
  width = batch.ref.shape[1]
  ref, ref_len, flagged = cfg.computed_reference.compute(pool.programs, cfg.execute, width)
  stored_ref = jnp.asarray(batch.ref, jnp.int32)
  resolved = batch.replace(
      ref=jnp.where(flagged[:, None], stored_ref, ref),
      ref_len=jnp.where(flagged, jnp.asarray(batch.ref_len, jnp.int32), ref_len),
  )
  return resolved, flagged


def generate(
    model_config: ModelConfig,
    params: Any,
    pool,
    rng: Array,
    cfg: GRPOConfig,
    sampler_cfg: sampling.SamplerConfig,
    detok: DetokTables,
) -> tuple[Buffer, GenStats]:
  """The dynamic-sampling loop (pure, jittable): (kept-group buffer, generation statistics).
  Each round is sampled in ``cfg.gen_chunks`` sub-batches (:func:`_round_rollout`). ``pool``:
  a :class:`RolloutBatch` (``cfg.reference='stored'``) or an :class:`ExecutePool`
  (``'execute'``: each round first computes its prompts' references, :func:`resolve_references`)."""
  cfg.check_sampler(sampler_cfg)
  p, g, n = cfg.batch_prompts, cfg.num_generations, cfg.max_new_tokens
  gen, rounds = cfg.round_prompts, cfg.rounds
  prompts = _check_pool(pool, cfg).prompts
  if prompts.shape[0] != cfg.pool_size:
    raise ValueError(
        f'the prompt pool has {prompts.shape[0]} rows; GRPOConfig needs '
        f'pool_size = {cfg.pool_size}'
    )
  buf0 = _empty_buffer(p, g, n, prompts.shape[1])
  stats0 = GenStats.zeros()

  def cond(c):
    r, buf, _ = c
    return (r < rounds) & (buf.filled < p)

  def body(c):
    r, buf, st = c
    sub = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, r * gen, gen, 0), pool)
    sub, ref_flagged = resolve_references(sub, cfg)
    ro = _round_rollout(
        model_config, params, sub, jax.random.fold_in(rng, r), cfg, sampler_cfg, detok
    )
    keep = (
        group_filter(ro.reward, ro.acc, g, cfg.filter_on)
        if cfg.dynamic_sampling
        else jnp.ones((gen,), bool)
    )
    dest = jnp.where(keep, buf.filled + jnp.cumsum(keep) - 1, p)  # p = out of bounds: dropped
    put = lambda b, x: b.at[dest].set(x, mode='drop')  # noqa: E731
    grp = lambda x: x.reshape((gen, g) + x.shape[1:])  # noqa: E731
    new = Buffer(
        prompts=put(buf.prompts, sub.prompts),
        prompt_lens=put(buf.prompt_lens, sub.prompt_lens),
        tokens=put(buf.tokens, grp(ro.tokens)),
        mask=put(buf.mask, grp(ro.mask)),
        logprobs=put(buf.logprobs, grp(ro.logprobs)),
        advantage=put(buf.advantage, grp(ro.advantage)),
        reward=put(buf.reward, grp(ro.reward)),
        filled=jnp.minimum(buf.filled + keep.sum(), p).astype(jnp.int32),
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32).sum()  # noqa: E731
    this_round = GenStats(
        samples=jnp.float32(gen * g),
        reward_sum=f32(ro.reward),
        correct=f32(ro.acc),
        response_tokens=f32(ro.lengths),
        truncated=f32(ro.truncated),
        groups=jnp.float32(gen),
        mixed_groups=f32(mixed_groups(ro.reward, g)),
        mixed_acc_groups=f32(mixed_groups(ro.acc, g)),
        rounds=jnp.float32(1),
        byte_overflow=f32(ro.byte_overflow),
        neg_score=f32(ro.score < 0),
        reference_overflow=f32(ref_flagged),
    )
    st = jax.tree.map(jnp.add, st, this_round)
    return r + 1, new, st

  _, buf, stats = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), buf0, stats0))
  return buf, stats


def _flat_rows(buf: Buffer, cfg: GRPOConfig) -> Rows:
  p, g, n = buf.tokens.shape
  valid = jnp.arange(p) < buf.filled  # [P]
  mask = buf.mask & valid[:, None, None]
  samples = sampling.Samples(
      tokens=buf.tokens.reshape(p * g, n),
      lengths=mask.sum(-1).reshape(p * g).astype(jnp.int32),
      logprobs=buf.logprobs.reshape(p * g, n),
      mask=mask.reshape(p * g, n),
      truncated=jnp.zeros((p * g,), bool),
      group=jnp.repeat(jnp.arange(p, dtype=jnp.int32), g),
  )
  full, positions, seg = sampling.full_sequences(buf.prompts, buf.prompt_lens, samples, g)
  src = sampling.response_logit_positions(jnp.repeat(buf.prompt_lens, g), buf.prompts.shape[1], n)
  return Rows(
      tokens=full,
      prompts=jnp.repeat(buf.prompts, g, axis=0),
      prompt_lens=jnp.repeat(buf.prompt_lens, g),
      positions=positions,
      segment_ids=seg,
      src=src,
      response=samples.tokens,
      mask=samples.mask,
      old_logprobs=samples.logprobs,
      advantage=jnp.where(valid[:, None], buf.advantage, 0.0).reshape(p * g),
      row_valid=jnp.repeat(valid, g),
  )


def _response_extent(mask: Array, axis) -> Array:
  """The number of leading response columns that hold every masked token of ``mask[..., N]``
  (last masked column + 1, 0 when nothing is masked), reduced over ``axis``."""
  n = mask.shape[-1]
  return jnp.max(jnp.where(mask, jnp.arange(1, n + 1, dtype=jnp.int32), 0), axis=axis)


def _longest_groups_first(buf: Buffer) -> Buffer:
  """``buf`` with its filled groups reordered by their longest response, longest first (then the
  unfilled ones), so consecutive micro-batches hold groups of similar length
  (``GRPOConfig.train_widths``). The loss is a sum over groups with global normalisers, so the
  order does not change it. E.g. filled 3 of 4, longest responses [5, 9, 2, 0] -> order
  [1, 0, 2, 3]."""
  p = buf.tokens.shape[0]
  longest = _response_extent(buf.mask, axis=(1, 2))
  key = jnp.where(jnp.arange(p) < buf.filled, longest, -1)
  order = jnp.argsort(-key, stable=True)
  take = lambda x: jnp.take(x, order, axis=0)  # noqa: E731
  return buf.replace(
      **{
          f: take(getattr(buf, f))
          for f in ('prompts', 'prompt_lens', 'tokens', 'mask', 'logprobs', 'advantage', 'reward')
      }
  )


def width_index(mask: Array, widths: tuple) -> Array:
  """int32[]: the index of the smallest of ``widths`` (increasing, the last = ``mask``'s width)
  that holds every masked column of ``mask[rows, N]``. E.g. widths (4, 8, 16), the last real
  token in column 5 -> 1."""
  longest = _response_extent(mask, axis=None)
  return jnp.sum(jnp.asarray(widths[:-1], jnp.int32) < longest).astype(jnp.int32)


def _narrow(rows: Rows, width: int) -> Rows:
  """``rows`` with their response columns cut to the first ``width`` (the caller guarantees that
  no response token lies beyond: the cut columns are masked out and contribute nothing)."""
  cut = lambda x: x[:, :width]  # noqa: E731
  return rows.replace(
      src=cut(rows.src),
      response=cut(rows.response),
      mask=cut(rows.mask),
      old_logprobs=cut(rows.old_logprobs),
  )


def _response_stats(
    model_config, params, rows: Rows, cfg: GRPOConfig, entropy: str = 'none'
) -> ResponseStats:
  """Teacher-forced statistics of the response tokens (``losses.token_stats_from_hidden``:
  ``logprobs`` f32[rows, N], and ``entropy`` unless ``entropy='none'``) under the logits divided by
  the sampling temperature (``cfg.logit_scale``), i.e. of the distribution the sampler drew
  from. The trunk runs over each prompt once and its G responses
  (``transformer.response_hidden``; rows that are not whole groups: over ``[prompt |
  response]`` rows); the final norm and LM head only at the N positions predicting response
  tokens, ``cfg.logits_chunk`` positions at a time, so no
  ``[rows, T, V]`` (nor ``[rows, N, V]``) f32 logits tensor is materialised."""
  g = cfg.num_generations
  if g > 1 and rows.response.shape[0] % g == 0:
    # Whole groups (the micro-batches split the rows at group boundaries): each prompt runs
    # through the trunk once for its G responses (``transformer.response_hidden``).
    hidden = transformer.response_hidden(
        model_config,
        params,
        rows.prompts[::g],
        rows.prompt_lens[::g],
        rows.response,
        rows.mask,
        g,
    )
  else:
    hidden, _ = transformer.apply(
        model_config,
        params,
        rows.tokens,
        rows.positions,
        segment_ids=rows.segment_ids,
        logits_index=rows.src,
        return_hidden=True,
    )  # [rows, N, D]
  st = losses.token_stats_from_hidden(
      model_config,
      params,
      hidden,
      rows.response,
      cfg.logits_chunk,
      scale=cfg.logit_scale,
      entropy=entropy,
  )
  return ResponseStats(logprobs=st['logprobs'], entropy=st.get('entropy'))


def response_logprobs(
    model_config: ModelConfig, params: Any, buf: Buffer, cfg: GRPOConfig
) -> Array:
  """f32[P*G, N]: the trainer's teacher-forced log-probs of the buffer's tokens (what the loss
  uses), 0 outside the mask and on unfilled rows; comparable with ``buf.logprobs``."""
  rows = _flat_rows(buf, cfg)
  lp = _response_stats(model_config, params, rows, cfg).logprobs
  return jnp.where(rows.mask, lp, 0.0)


def policy_grads(
    model_config: ModelConfig,
    params: Any,
    buf: Buffer,
    cfg: GRPOConfig,
    sampler_cfg: Optional[sampling.SamplerConfig] = None,
    ref_params: Any = None,
):
  """(grads, loss, metrics) of the GRPO loss over the kept groups (pure, jittable).

  The log-probs are of ``logits / cfg.temperature`` (raw logits when greedy), as the sampler's;
  ``sampler_cfg``, when given, is checked against ``cfg`` (:meth:`GRPOConfig.check_sampler`).

  Static guards: the LM head runs only at the response positions, in ``cfg.logits_chunk``
  chunks; at ``entropy_coef == 0`` the entropy (a metric) is computed under ``stop_gradient``,
  so it has no backward pass; at ``kl_coef == 0`` ``ref_params`` is ignored and the program
  has no reference forward pass. With ``kl_coef > 0`` the reference log-probs are computed per
  micro-batch (no gradient), from ``ref_params`` — pass them as an argument of the jitted step,
  never as a closed-over constant."""
  from compfn.optim import accumulate

  if sampler_cfg is not None:
    cfg.check_sampler(sampler_cfg)
  if cfg.train_widths:
    buf = _longest_groups_first(buf)
  rows = _flat_rows(buf, cfg)
  if cfg.kl_coef > 0 and ref_params is None:
    raise ValueError('GRPOConfig.kl_coef > 0 needs reference params')
  num_tokens = jnp.maximum(rows.mask.sum().astype(jnp.float32), 1.0)
  num_seqs = jnp.maximum(rows.row_valid.sum().astype(jnp.float32), 1.0)
  entropy_mode = 'grad' if cfg.entropy_coef != 0 else 'value'

  def loss_fn(prm, mb: Rows):
    st = _response_stats(model_config, prm, mb, cfg, entropy=entropy_mode)
    lp, ent_tok = st.logprobs, st.entropy
    old = jax.lax.stop_gradient(lp) if cfg.old_logprobs == 'recompute' else mb.old_logprobs
    pg, pm = losses.policy_loss(
        lp,
        old,
        mb.advantage,
        mb.mask,
        cfg.clip_low,
        cfg.clip_high,
        cfg.loss_agg,
        num_tokens,
        num_seqs,
    )
    loss = pg
    if cfg.entropy_coef != 0:
      ent = losses.aggregate(ent_tok, mb.mask, cfg.loss_agg, num_tokens, num_seqs)
      loss = loss - cfg.entropy_coef * ent
    m = mb.mask.astype(jnp.float32)
    w = m.sum() / num_tokens  # this micro-batch's share of the tokens
    aux = {
        'pg_loss': pg,
        'entropy': (ent_tok * m).sum() / num_tokens,
        'clip_frac': pm['clip_frac'] * w,
        'approx_kl': pm['approx_kl'] * w,
        'sampler_logprob_gap': (jnp.abs(jax.lax.stop_gradient(lp) - mb.old_logprobs) * m).sum()
        / num_tokens,
        'kl': jnp.zeros((), jnp.float32),
    }
    if cfg.kl_coef > 0:
      ref_lp = jax.lax.stop_gradient(_response_stats(model_config, ref_params, mb, cfg).logprobs)
      kl = losses.aggregate(
          losses.kl_penalty(lp, ref_lp, cfg.kl_estimator),
          mb.mask,
          cfg.loss_agg,
          num_tokens,
          num_seqs,
      )
      loss = loss + cfg.kl_coef * kl
      aux['kl'] = kl
    return loss, aux

  loss_of = loss_fn
  if cfg.train_widths:
    widths = (*cfg.train_widths, rows.mask.shape[1])
    branches = [lambda prm, mb, w=w: loss_fn(prm, _narrow(mb, w)) for w in widths]

    def loss_of(prm, mb: Rows):
      return jax.lax.switch(width_index(mb.mask, widths), branches, prm, mb)

  # Kept groups fill the buffer from the front: micro-batches past the last filled group
  # (all rows masked, advantage 0) contribute nothing and are not computed.
  per_mb = rows.row_valid.shape[0] // cfg.micro_batches
  filled_rows = rows.row_valid.sum().astype(jnp.int32)
  active = (filled_rows + per_mb - 1) // per_mb
  grads, loss, aux = accumulate(loss_of, params, rows, cfg.micro_batches, active=active)
  aux['train_tokens'] = rows.mask.sum().astype(jnp.float32)
  return grads, loss, aux


def grpo_step(
    model_config: ModelConfig,
    tx,
    cfg: GRPOConfig,
    sampler_cfg: sampling.SamplerConfig,
    state,
    pool: RolloutBatch,
    detok: DetokTables,
    ref_params: Any = None,
):
  """One whole RL step (pure; jit it with the state donated): generate with dynamic sampling,
  compute the loss and apply one AdamW update. Returns (state, metrics).

  ``detok`` and ``ref_params`` must be *arguments* of the jitted function (e.g. of
  :func:`make_step`'s), not closed over: jit embeds closed-over arrays in the program as
  constants (the whole reference model!). ``ref_params`` must not share buffers with the donated
  ``state.params`` (copy them once: ``jax.tree.map(jnp.copy, params)``). It is only read when
  ``cfg.kl_coef > 0``; pass None otherwise."""
  from compfn.optim import apply_gradients

  cfg.check_sampler(sampler_cfg)
  rng, gen_rng = jax.random.split(state.rng)
  buf, st = generate(model_config, state.params, pool, gen_rng, cfg, sampler_cfg, detok)
  grads, loss, aux = policy_grads(model_config, state.params, buf, cfg, sampler_cfg, ref_params)
  skip = buf.filled < max(cfg.min_groups, 1)
  state, upd = apply_gradients(state.replace(rng=rng), grads, tx, loss, skip=skip)
  samples = jnp.maximum(st.samples, 1.0)
  groups = jnp.maximum(st.groups, 1.0)
  kept = buf.filled.astype(jnp.float32)
  trained = jnp.where(skip, 0.0, kept)
  reward, acc = st.reward_sum / samples, st.correct / samples
  mixed = st.mixed_groups / groups
  metrics = {
      'loss': loss,
      **aux,
      **upd,
      'reward': reward,
      'reward_mean': reward,
      'accuracy': acc,
      'sample_acc': acc,
      'response_length': st.response_tokens / samples,
      'truncated_frac': st.truncated / samples,
      'overlong_frac': st.neg_score / samples,
      'byte_overflow_frac': st.byte_overflow / samples,
      'mixed_frac': mixed,
      'kept_groups': mixed,  # kept_groups: former name (plots)
      'mixed_acc_frac': st.mixed_acc_groups / groups,
      'groups_kept': kept,
      'groups_trained': trained,
      'filled': trained / cfg.batch_prompts,
      'rounds_used': st.rounds,
      'generated_tokens': st.response_tokens,
      'generated_samples': st.samples,
  }
  if cfg.reference == 'execute':
    metrics['reference_overflow_frac'] = st.reference_overflow / groups
  return state, metrics


def make_step(model_config: ModelConfig, tx, cfg: GRPOConfig, sampler_cfg: sampling.SamplerConfig):
  """``step(state, pool, detok, ref_params=None) -> (state, metrics)``: :func:`grpo_step` with
  the static configuration bound and every array an argument, for
  ``train.compile_step(make_step(...))`` (which donates the state, argument 0)."""
  cfg.check_sampler(sampler_cfg)

  def step(state, pool, detok: DetokTables, ref_params: Any = None):
    return grpo_step(
        model_config,
        tx,
        cfg,
        sampler_cfg,
        state,
        pool,
        detok,
        ref_params if cfg.kl_coef > 0 else None,
    )

  return step


def pool_from_host(
    prompt_ids,
    refs,
    cfg: GRPOConfig,
    prompt_len: int,
    ref_len: int,
    pad_id: int = 0,
    programs=None,
):
  """A fixed-shape pool (numpy) of ``cfg.pool_size`` prompts: static prompt/ref widths so one
  compiled step serves every batch. Raises if a prompt or reference does not fit.

  ``cfg.reference='stored'``: a :class:`RolloutBatch`. ``'execute'``: an :class:`ExecutePool`;
  ``programs`` is then one ``(code, input)`` pair per prompt (``Task.computed_reference.program``
  of each problem, e.g. :func:`programs_of`), encoded with the static sizes of ``cfg.execute``,
  and ``refs`` the stored references, read on device only where the computed one is flagged."""
  if len(prompt_ids) != cfg.pool_size:
    raise ValueError(f'{len(prompt_ids)} prompts for a pool of {cfg.pool_size}')
  batch = RolloutBatch.from_host(
      prompt_ids, refs, pad_id=pad_id, prompt_len=prompt_len, ref_len=ref_len
  )
  if cfg.reference == 'stored':
    if programs is not None:
      raise ValueError("pool_from_host: programs given, but GRPOConfig.reference='stored'")
    return batch
  if programs is None:
    raise ValueError(
        "pool_from_host: GRPOConfig.reference='execute' needs programs, one (code, input) "
        'pair per prompt (programs_of(cfg, problems))'
    )
  programs = list(programs)
  if len(programs) != len(prompt_ids):
    raise ValueError(f'{len(prompt_ids)} prompts but {len(programs)} programs')
  return ExecutePool(batch=batch, programs=cfg.computed_reference.encode(programs, cfg.execute))


def programs_of(cfg: GRPOConfig, problems) -> list:
  """``(code, input)`` of each problem (a problem object or a record mapping) by the task's
  ``ComputedReference.program``, for :func:`pool_from_host`'s ``programs``."""
  comp = cfg.computed_reference
  if comp is None:
    raise ValueError(f'task {cfg.task!r} has no computed reference')
  return [comp.program(p) for p in problems]
