"""The host rollout runner shared by evaluation and RFT collection: a list of prompts and
references in, every sample's score, accuracy bit, length and (optionally) token ids out.

Each batch goes through :func:`compfn.rl.rollout.rollout` (sample -> detokenise on device ->
score with the task's registered device scorer, one jitted program); the runner pads batches to
one static shape, splits many samples per prompt into chunks, and gathers sharded outputs on
every process (:func:`compfn.parallel.to_host`).

    >>> ids = encode_prompts(tokenizer, ['Compute func_3(x) ...'], None)
    >>> out = sample_and_score(config, params, tokenizer, ids, ['cba'], task='strings_trace',
    ...                        num_samples=4, temperature=1.0, max_new_tokens=64, batch_size=32,
    ...                        rng=0)
    >>> out.acc.shape                   # [problems, samples]
    (1, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = [
    'Sampled',
    'sample_and_score',
    'encode_prompts',
    'decode_response',
    'strip_stop',
    'as_key',
    'encoded_reference',
]


@dataclasses.dataclass
class Sampled:
  acc: np.ndarray  # int32[P, G]
  score: np.ndarray  # f32[P, G]
  lengths: np.ndarray  # int32[P, G] generated tokens incl. the stop token
  truncated: np.ndarray  # bool[P, G]
  kept: dict  # (problem, sample) -> int32[length] generated ids (incl. stop)


def encoded_reference(encode, ref, index: int) -> str:
  try:
    return encode(ref)
  except (ValueError, TypeError) as e:
    raise ValueError(f'problem {index}: bad reference {ref!r}: {e}') from e


def encode_prompts(tokenizer, prompts: Sequence[str], encode) -> list[list[int]]:
  enc = encode if encode is not None else tokenizer.encode
  ids = [[int(t) for t in enc(p)] for p in prompts]
  for i, x in enumerate(ids):
    if not x:
      raise ValueError(f'prompt {i} encodes to no tokens')
  return ids


def as_key(rng):
  import jax

  if isinstance(rng, (int, np.integer)):
    return jax.random.key(int(rng))
  return rng


def sample_and_score(
    model_config,
    params,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    refs: Sequence[str],
    *,
    task: str,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    rng,
    mesh=None,
    rules=None,
    progress: bool = True,
    keep: Optional[Callable] = None,
    sample_chunk: int = 64,
    desc: str = 'eval',
    rollout_impl: Optional[Callable] = None,
) -> Sampled:
  """Sample ``num_samples`` responses for each prompt and score them (see module docstring).

  ``keep(problem int[R], sample int[R], acc int[R]) -> bool[R]`` picks the rows whose token
  ids are returned in ``kept``. ``rollout_impl`` replaces compfn.rl.rollout.rollout (tests)."""
  import jax
  from tqdm.auto import tqdm

  from compfn import buckets, parallel, sampling
  from compfn.rl import rollout
  from compfn.tasks import registry as task_registry

  if task not in task_registry.names():
    raise ValueError(f'unknown task {task!r}; registered: {task_registry.names()}')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  if batch_size < 1 or sample_chunk < 1:
    raise ValueError(
        f'batch_size and sample_chunk must be >= 1, got {batch_size}, ' f'{sample_chunk}'
    )
  n_prob = len(prompt_ids)
  if len(refs) != n_prob:
    raise ValueError(f'{n_prob} prompts but {len(refs)} refs')
  # Every task is scored on device by its registered scorer, on the reference as that scorer
  # reads it (Countdown: the canonical numbers/target JSON, validated here before any device
  # work, so a malformed reference is a clear error naming it).
  encode_ref = task_registry.get(task).encode_reference
  refs = [encoded_reference(encode_ref, r, i) for i, r in enumerate(refs)]
  rollout_impl = rollout_impl or rollout.rollout

  g_total = int(num_samples)
  n_chunks = -(-g_total // sample_chunk)
  g = -(-g_total // n_chunks)
  stop_ids = tuple(int(i) for i in (tokenizer.stop_ids or ()))
  pad_id = int(tokenizer.pad_id) if getattr(tokenizer, 'pad_id', None) is not None else 0
  cfg = sampling.SamplerConfig(
      max_new_tokens,
      temperature=float(temperature),
      stop_ids=stop_ids,
      num_samples=g,
      pad_id=pad_id,
  )

  shape = (n_prob, g_total)
  out = Sampled(
      acc=np.zeros(shape, np.int32),
      score=np.zeros(shape, np.float32),
      lengths=np.zeros(shape, np.int32),
      truncated=np.zeros(shape, bool),
      kept={},
  )
  if n_prob == 0:
    return out

  ndev = parallel.batch_devices(mesh, rules or parallel.DEFAULT_RULES)
  rows = min(int(batch_size), buckets.next_power_of_two(n_prob))
  rows = -(-rows // ndev) * ndev
  plen = sampling.bucket_length(max(len(x) for x in prompt_ids), 16)
  ref_bytes = [r.encode('utf-8') for r in refs]
  rlen = sampling.bucket_length(max(len(b) for b in ref_bytes), 16)
  detok = rollout.DetokTables.from_tokenizer(tokenizer)
  if mesh is not None:  # replicated over the mesh (every process holds it whole)
    detok = parallel.shard_batch(detok, mesh, replicate=True)
  else:
    detok = jax.device_put(detok)
  key = as_key(rng)

  n_batches = -(-n_prob // rows)
  bar = tqdm(total=n_batches * n_chunks, desc=desc, disable=not progress, leave=False)
  try:
    for b in range(n_batches):
      lo = b * rows
      idx = np.minimum(np.arange(lo, lo + rows), n_prob - 1)
      real = min(rows, n_prob - lo)
      batch = rollout.RolloutBatch.from_host(
          [prompt_ids[i] for i in idx],
          [ref_bytes[i] for i in idx],
          pad_id=pad_id,
          prompt_len=plen,
          ref_len=rlen,
      )
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh, rules or parallel.DEFAULT_RULES)
      for c in range(n_chunks):
        k = jax.random.fold_in(jax.random.fold_in(key, b), c)
        res = rollout_impl(
            model_config, params, batch, k, cfg, task, detok=detok, mesh=mesh, rules=rules
        )
        _collect(out, res, idx[:real], c * g, g, g_total, keep)
        bar.update(1)
  finally:
    bar.close()
  return out


def _collect(out: Sampled, res, problems: np.ndarray, g0: int, g: int, g_total: int, keep) -> None:
  """Write the real rows of one rollout (group-major [rows * g]) into ``out``."""
  real = len(problems)
  take = min(g, g_total - g0)  # the last chunk may hold extra samples
  n = real * g
  from compfn.parallel import to_host  # sharded (multi-process) outputs: gathered

  host = to_host((res.acc, res.score, res.lengths, res.truncated))  # one fetch per chunk
  acc, score, lengths, truncated = (x[:n].reshape(real, g)[:, :take] for x in host)
  acc, score, truncated = acc.astype(np.int32), score.astype(np.float32), truncated.astype(bool)
  sl = slice(g0, g0 + take)
  out.acc[problems, sl] = acc
  out.score[problems, sl] = score
  out.lengths[problems, sl] = lengths
  out.truncated[problems, sl] = truncated
  if keep is not None:
    pidx = np.repeat(problems, take)
    sidx = np.tile(np.arange(g0, g0 + take), real)
    mask = np.asarray(keep(pidx, sidx, acc.reshape(-1)), bool)
    if mask.any():  # the same on every process: the gather below is collective
      tokens = to_host(res.tokens)[:n].reshape(real, g, -1)[:, :take]
      tokens = tokens.reshape(real * take, -1)
      flat_len = lengths.reshape(-1)
      for r in np.flatnonzero(mask):
        out.kept[(int(pidx[r]), int(sidx[r]))] = tokens[r, : flat_len[r]].astype(np.int32)


def decode_response(tokenizer, ids) -> str:
  v = tokenizer.vocab_size  # a model's padded vocab rows beyond it decode to nothing
  return tokenizer.decode([int(t) for t in ids if 0 <= int(t) < v])


def strip_stop(tokenizer, ids: np.ndarray) -> list[int]:
  ids = [int(t) for t in ids]
  stop = set(int(i) for i in (tokenizer.stop_ids or ()))
  if ids and ids[-1] in stop:
    ids = ids[:-1]
  return ids
