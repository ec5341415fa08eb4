"""The fused rollout: sample -> detokenise on device -> score -> group advantages, ONE jit.

Public API::

    batch = RolloutBatch(prompts int32[B, P], prompt_lens int32[B], ref int32[B, R],
                         ref_len int32[B])           # ref = reference output as UTF-8 bytes
    batch = RolloutBatch.from_host(prompt_ids: list[list[int]], refs: list[str | bytes], *,
                                   min_bucket=16, pad_id=0, prompt_len=None, ref_len=None)
                                                     # padded, bucketed or static (numpy)
    detok = DetokTables.from_tokenizer(tokenizer)    # token -> bytes table + first-piece skips

    out = rollout(model_config, params, batch, rng, cfg, task='strings_json', *, detok,
                  max_bytes=None, mesh=None, rules=None) -> Rollout       (jitted)
    out = rollout_fn(...)                            # same, not jitted (embed in a train step)
    score_samples(samples, batch, detok, cfg, task, max_bytes) -> Rollout   (pure)

    Rollout (DESIGN §3; row i is sample i % G of prompt group[i] = i // G, group-major):
      tokens int32[B*G, N], mask bool[B*G, N], logprobs f32[B*G, N], lengths int32[B*G],
      reward f32[B*G] (= score), score int32[B*G] in {-1, 0, 1}, acc int32[B*G],
      advantage f32[B*G] (GRPO: compfn.rl.advantages.group_advantages over each group),
      truncated bool[B*G], group int32[B*G],
      response_bytes int32[B*G, M], response_len int32[B*G] (true byte length; may exceed M),
      byte_overflow bool[B*G] (response_len > M)

``task`` picks the scorer: ``TASKS[task]``, a view of the device scorers of
:mod:`compfn.tasks.registry` (``Task.device_score``): ``'strings_json'`` = the paper's JSON rule
(``device_scoring.score_json``), ``'strings_trace'`` = the trace rule (``score_trace``),
``'strings_trace_steps'`` = the trace rule with credit for correct leading steps
(``score_trace_steps``; its ``ref`` is the whole reference trace, not the answer; a documented
departure from the paper's final-answer reward, for small models), ``'strings_trace_shape'`` =
the shape-aware trace reward (``score_trace_shape``: credit for the right calls in the right
order, for right steps and for the answer; ``ref`` is the whole reference trace; also a
departure from the paper), ``'countdown'`` = the
Countdown verifier (``compfn.tasks.countdown.verifier.score_refs``; ``ref`` is the problem's
JSON, ``{"numbers": [..], "target": N}``, read on device). The
scorer's ``overlong`` flag is ``truncated | byte_overflow``: a response that hit
``max_new_tokens`` without a stop token scores -1 (the paper's rule), and one whose bytes do not
fit the static byte buffer ``M`` (``max_bytes``, default ``N * min(P_table, 8)``) is never
scored on a cut text: it scores -1 and ``byte_overflow`` says so.

Everything between the prompts and the rewards is one XLA program: there is no host callback
(``tests/test_rollout.py`` checks the lowered program). The reference bytes are repeated G times
inside the jit.

Sharding (T5X-style rules as data): ``DEFAULT_RULES`` maps the model's logical axes to mesh
axes ``('data', 'fsdp', 'tensor')``: the batch over ``('data', 'fsdp')``; heads, kv heads, MLP and
vocab over ``'tensor'``; embed, layers, length and head_dim replicated (a sampler does not need
FSDP-sharded weights; a training rule set may map 'embed' to 'fsdp')::

    mesh = make_mesh((2, 1, 4))                       # Auto axis types (jax 0.10 default: Explicit)
    params = shard_params(model_config, params, mesh)
    batch = shard_batch(batch, mesh)
    out = rollout(model_config, params, batch, rng, cfg, detok=detok, mesh=mesh,
                  rules=DEFAULT_RULES)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from compfn import parallel, sampling
from compfn.parallel import (  # noqa: F401 (re-exported)
    DEFAULT_RULES,
    make_mesh,
    param_shardings,
    shard_batch,
)
from compfn import tokenizers
from compfn.model.config import ModelConfig
from compfn.rl.advantages import group_advantages
from compfn.tasks import registry as task_registry

Array = jax.Array

__all__ = [
    "DEFAULT_RULES",
    "RolloutBatch",
    "DetokTables",
    "Rollout",
    "rollout",
    "rollout_fn",
    "lower",
    "score_samples",
    "make_mesh",
    "shard_params",
    "shard_batch",
    "TASKS",
]


class _DeviceScorers(Mapping):
  """A read-only, live view of :mod:`compfn.tasks.registry`: task name -> ``device_score``
  (aliases excluded). A task registered later appears here too."""

  def __getitem__(self, name):
    try:
      return task_registry.tasks()[name].device_score
    except (KeyError, TypeError):
      raise KeyError(name) from None

  def __iter__(self):
    return iter(task_registry.tasks())

  def __len__(self):
    return len(task_registry.tasks())

  def __repr__(self):
    return f"TASKS({sorted(self)})"


#: name -> jittable scorer ``(resp, resp_len, ref, ref_len, overlong) -> (score, acc)``.
TASKS = _DeviceScorers()


@flax.struct.dataclass
class RolloutBatch:
  prompts: Array  # int32[B, P] right-padded prompt ids
  prompt_lens: Array  # int32[B]
  ref: Array  # int32[B, R] reference output, UTF-8 bytes
  ref_len: Array  # int32[B]

  @classmethod
  def from_host(
      cls,
      prompt_ids: Sequence[Sequence[int]],
      refs: Sequence,
      *,
      min_bucket: int = 16,
      pad_id: int = 0,
      prompt_len: Optional[int] = None,
      ref_len: Optional[int] = None,
  ) -> "RolloutBatch":
    """Right-pads prompts and references (``str`` or UTF-8 ``bytes``) into numpy arrays.

    Widths default to ``bucket_length`` of the longest prompt and a power of two >= 16 for the
    refs; pass ``prompt_len`` / ``ref_len`` for static widths (one compiled program for every
    batch), and a prompt or reference that does not fit raises ValueError naming it."""
    if len(prompt_ids) != len(refs):
      raise ValueError(f"{len(prompt_ids)} prompts but {len(refs)} refs")
    b = len(prompt_ids)
    enc = [r.encode("utf-8") if isinstance(r, str) else bytes(r) for r in refs]
    p = prompt_len or sampling.bucket_length(max(len(x) for x in prompt_ids), min_bucket)
    r = ref_len or sampling.bucket_length(max(len(x) for x in enc), 16)
    prompts = np.full((b, p), pad_id, np.int32)
    ref = np.zeros((b, r), np.int32)
    for i, (x, y) in enumerate(zip(prompt_ids, enc)):
      if not len(x):
        raise ValueError(f"prompt {i} is empty")
      if len(x) > p:
        raise ValueError(f"prompt {i} has {len(x)} tokens > prompt_len={p}")
      if len(y) > r:
        raise ValueError(f"reference {i} has {len(y)} bytes > ref_len={r}")
      prompts[i, : len(x)] = x
      ref[i, : len(y)] = np.frombuffer(y, np.uint8)
    return cls(
        prompts=prompts,
        prompt_lens=np.array([len(x) for x in prompt_ids], np.int32),
        ref=ref,
        ref_len=np.array([len(y) for y in enc], np.int32),
    )


@flax.struct.dataclass
class DetokTables:
  table: Array  # uint8[V, Pb] token bytes
  lengths: Array  # int32[V] (0 for special tokens)
  first_skip: Array  # int32[V] (SentencePiece first-piece rule; zeros otherwise)

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "DetokTables":
    table, lengths = tokenizers.byte_table(tokenizer)
    return cls(table=table, lengths=lengths, first_skip=tokenizers.first_skip(tokenizer))


@flax.struct.dataclass
class Rollout:
  tokens: Array  # int32[B*G, N]
  mask: Array  # bool[B*G, N]
  logprobs: Array  # f32[B*G, N]
  lengths: Array  # int32[B*G] generated tokens incl. the stop token
  reward: Array  # f32[B*G]
  score: Array  # int32[B*G]
  acc: Array  # int32[B*G]
  advantage: Array  # f32[B*G]
  truncated: Array  # bool[B*G]
  group: Array  # int32[B*G]
  response_bytes: Array  # int32[B*G, M]
  response_len: Array  # int32[B*G]
  byte_overflow: Array  # bool[B*G]


def _default_max_bytes(detok: DetokTables, cfg: sampling.SamplerConfig) -> int:
  return cfg.max_new_tokens * min(int(detok.table.shape[1]), 8)


# The named scope of every op that detokenises and scores (what "the verifier" is in a profile).
VERIFIER_SCOPE = "verifier"


def score_samples(
    samples: sampling.Samples,
    batch: RolloutBatch,
    detok: DetokTables,
    cfg: sampling.SamplerConfig,
    task: str = "strings_json",
    max_bytes: Optional[int] = None,
) -> Rollout:
  """Detokenise ``samples`` on device and score them against ``batch.ref`` (pure, jittable).

  Its ops carry the ``jax.named_scope`` :data:`VERIFIER_SCOPE`, so a profile of the fused
  rollout can say what the verifier costs inside it (``compfn.profiling``)."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; supported: {sorted(TASKS)}")
  with jax.named_scope(VERIFIER_SCOPE):
    return _score_samples(samples, batch, detok, cfg, task, max_bytes)


def _score_samples(samples, batch, detok, cfg, task, max_bytes) -> Rollout:
  m = _default_max_bytes(detok, cfg) if max_bytes is None else int(max_bytes)
  g = cfg.num_samples
  resp, n = tokenizers.jax_detokenize(
      detok.table, detok.lengths, samples.tokens, samples.mask, detok.first_skip, max_bytes=m
  )
  overflow = n > m
  rep = lambda x: jnp.repeat(jnp.asarray(x, jnp.int32), g, axis=0)  # noqa: E731
  score, acc = TASKS[task](
      resp, jnp.minimum(n, m), rep(batch.ref), rep(batch.ref_len), samples.truncated | overflow
  )
  reward = score.astype(jnp.float32)
  return Rollout(
      tokens=samples.tokens,
      mask=samples.mask,
      logprobs=samples.logprobs,
      lengths=samples.lengths,
      reward=reward,
      score=score,
      acc=acc,
      advantage=group_advantages(reward, g),
      truncated=samples.truncated,
      group=samples.group,
      response_bytes=resp,
      response_len=n,
      byte_overflow=overflow,
  )


def rollout_fn(
    model_config: ModelConfig,
    params: Any,
    batch: RolloutBatch,
    rng: Array,
    cfg: sampling.SamplerConfig,
    task: str = "strings_json",
    *,
    detok: DetokTables,
    max_bytes: Optional[int] = None,
) -> Rollout:
  """Sample, detokenise and score: a pure function (not jitted)."""
  samples = sampling.sample_fn(model_config, params, batch.prompts, batch.prompt_lens, rng, cfg)
  return score_samples(samples, batch, detok, cfg, task, max_bytes)


@functools.partial(
    jax.jit, static_argnames=("model_config", "cfg", "task", "max_bytes", "mesh", "rules")
)
def _rollout_jit(
    model_config, params, batch, rng, cfg, task, detok, max_bytes=None, mesh=None, rules=None
):
  del mesh, rules
  return rollout_fn(model_config, params, batch, rng, cfg, task, detok=detok, max_bytes=max_bytes)


def _checked_rules(task: str, mesh, rules):
  """The task checked against TASKS; the rules normalised (DEFAULT_RULES when a mesh is given)."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; supported: {sorted(TASKS)}")
  if mesh is not None and rules is None:
    rules = DEFAULT_RULES
  return parallel.normalize_rules(rules)


def rollout(
    model_config: ModelConfig,
    params: Any,
    batch: RolloutBatch,
    rng: Array,
    cfg: sampling.SamplerConfig,
    task: str = "strings_json",
    *,
    detok: DetokTables,
    max_bytes: Optional[int] = None,
    mesh=None,
    rules=None,
) -> Rollout:
  """One jitted call: prompts -> samples -> bytes -> rewards -> advantages (module docstring).

  ``mesh``/``rules``: run under ``jax.set_mesh(mesh)`` + ``nn.logical_axis_rules(rules)``
  (rules default to DEFAULT_RULES when a mesh is given)."""
  rules = _checked_rules(task, mesh, rules)
  with parallel.use_mesh(mesh, rules):
    return _rollout_jit(
        model_config,
        params,
        batch,
        rng,
        cfg,
        task,
        detok,
        max_bytes=max_bytes,
        mesh=mesh,
        rules=rules,
    )


def lower(
    model_config: ModelConfig,
    params: Any,
    batch: RolloutBatch,
    rng: Array,
    cfg: sampling.SamplerConfig,
    task: str = "strings_json",
    *,
    detok: DetokTables,
    max_bytes: Optional[int] = None,
    mesh=None,
    rules=None,
) -> jax.stages.Lowered:
  """:func:`rollout`'s program lowered, not run (arguments may be ``jax.ShapeDtypeStruct``s):
  what ``compfn.compile_report`` compiles ahead of time for a target topology."""
  rules = _checked_rules(task, mesh, rules)
  with parallel.use_mesh(mesh, rules):
    return _rollout_jit.lower(
        model_config,
        params,
        batch,
        rng,
        cfg,
        task,
        detok,
        max_bytes=max_bytes,
        mesh=mesh,
        rules=rules,
    )


# ------------------------------------------------------------------------------- sharding


def shard_params(model_config: ModelConfig, params: Any, mesh, rules=None) -> Any:
  """``device_put`` params by their logical axes and ``rules`` (default: compfn.parallel's)."""
  return jax.device_put(params, param_shardings(model_config, mesh, rules or DEFAULT_RULES))
