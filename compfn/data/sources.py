"""Record sources for the trainer's stages (gin-configurable; all deterministic).

A *record* is a plain dict. The stages read these keys:

* SFT (``compfn.stages.sft.sft_stage``): ``prompt``, ``target`` (text) — or ``target_ids`` —
  and ``level``.
* RL, evaluation, gate: ``prompt``, ``ref`` (the reference output), ``level``, ``group``.
* RFT collection: ``sample_prompt`` (shown while sampling), ``train_prompt`` (stored for SFT),
  ``ref``, ``level``.

Sources::

    trace_records(functions='train', min_level=2, max_level=2, num=4096)   # in memory (fast)
    tfds_records('stage2_test_L1to8')          # a TFDS config (built on first use), paper format
    countdown_records('L3')                    # the Countdown sets
    jsonl_records('runs/x/rft/data.jsonl')     # e.g. RFT output
    mix([recs_a, recs_b], counts=[8000, 2000]) # a fixed-size deterministic mixture

Example (trace format, MINIATURE.md)::

    >>> trace_records('train', 2, 2, 2, seed=0)[0]
    {'prompt': "func_3(func_1('abc',2))=", 'target': ";func_1('abc',2)=abcabc;...",
     'ref': 'aabbcc', 'level': 2, 'group': 'train', 'input': 'abc', ...}
"""

from __future__ import annotations

import json
import random
from typing import Any, Optional, Sequence

import gin

from compfn.tasks.strings import functions as functions_lib
from compfn.tasks.strings import generic
from compfn.tasks.strings import generator as Gen
from compfn.tasks.strings import prompts

__all__ = [
    'trace_records',
    'tfds_records',
    'countdown_records',
    'jsonl_records',
    'mix',
    'resolve_functions',
    'LazyRecords',
]


class LazyRecords(Sequence):
  """A record list built on first access (so parsing a gin file, or a dry run, generates or
  reads no data). ``describe`` says what it will hold."""

  def __init__(self, build, describe: str):
    self._build, self.describe, self._items = build, describe, None

  def _get(self) -> list:
    if self._items is None:
      self._items = list(self._build())
    return self._items

  def __len__(self):
    return len(self._get())

  def __getitem__(self, i):
    return self._get()[i]

  def __iter__(self):
    return iter(self._get())

  def __repr__(self):
    return f'LazyRecords({self.describe})'


def resolve_functions(functions) -> tuple[str, tuple[str, ...]]:
  """(family, internal names) for 'train' | 'heldout' (= 'test') | 'train_clean' |
  'heldout_clean' (the split without the 3 behavioural twin pairs) | 'all' | 'generic' |
  'generic_func' (the generic behaviours under ids func_25..func_99) | a list of names or func_k /
  gen_k ids."""
  if isinstance(functions, str):
    if functions == 'train':
      return 'paper', functions_lib.TRAIN_FUNCTIONS
    if functions in ('heldout', 'test'):
      return 'paper', functions_lib.TEST_FUNCTIONS
    if functions in ('train_clean', 'heldout_clean'):
      # The clean split: no function behaviourally identical to one across the split
      # (functions.IDENTICAL_ACROSS_SPLIT: 3 held-out functions duplicate train ones).
      twins = set(functions_lib.IDENTICAL_ACROSS_SPLIT) | set(
          functions_lib.IDENTICAL_ACROSS_SPLIT.values()
      )
      pool = (
          functions_lib.TRAIN_FUNCTIONS
          if functions == 'train_clean'
          else functions_lib.TEST_FUNCTIONS
      )
      return 'paper', tuple(n for n in pool if n not in twins)
    if functions == 'all':
      return 'paper', tuple(functions_lib.FUNCTIONS)
    if functions == 'generic':
      return 'generic', tuple(generic.GENERIC_FUNCTIONS)
    if functions == 'generic_func':
      return 'generic_func', tuple(generic.GENERIC_FUNC_ALIASES)
    if functions == 'generic_func_wide':
      return 'generic_func_wide', tuple(generic.GENERIC_FUNC_ALIASES_WIDE)
    functions = [functions]
  by_id = {s.fid: n for n, s in functions_lib.FUNCTIONS.items()}
  gen_id = {s.fid: n for n, s in generic.GENERIC_FUNCTIONS.items()}
  names = []
  family = None
  for f in functions:
    if f in functions_lib.FUNCTIONS or f in by_id:
      fam, n = 'paper', by_id.get(f, f)
    elif f in generic.GENERIC_FUNCTIONS or f in gen_id:
      fam, n = 'generic', gen_id.get(f, f)
    else:
      raise ValueError(
          f'unknown function {f!r}: use a name or id of the 25 functions, a '
          "generic gen_k, or one of 'train', 'heldout', 'all', 'generic'"
      )
    if family not in (None, fam):
      raise ValueError('cannot mix paper and generic functions in one trace source')
    family = fam
    names.append(n)
  return family, tuple(names)


@gin.configurable
def trace_records(
    functions='train',
    min_level: int = 1,
    max_level: int = 1,
    num: int = 1024,
    seed: int = 0,
    inputs: str = 'train',
    input_len=(3, 6),
    max_chars: Optional[int] = None,
    group: Optional[str] = None,
    input_mix: float = 0.0,
    drop_shortcuts: bool = False,
    input_depths: Optional[Sequence[float]] = None,
    input_max_len: int = 16,
    twin_group: Optional[str] = None,
) -> LazyRecords:
  """Trace-format chains (``compfn.tasks.strings.generator.generate_trace``) as records.

  ``drop_shortcuts`` removes chains that a non-composing answer solves (the generator's
  ``shortcut`` rule: answer = x, answer = one call on x, or an identity step) and prints how many
  of each were dropped; ``input_mix`` draws that share of inputs from the outputs of one call
  (the strings an outer call sees in a composition); ``input_depths`` generalises it: weights of
  passing the random letters through 0, 1, 2, ... random calls first (each intermediate at most
  ``input_max_len`` characters), e.g. ``(0.5, 0.35, 0.15)``. ``twin_group``: records that call
  a function with a behavioural twin across the split (``functions.IDENTICAL_ACROSS_SPLIT``)
  get this group label instead of ``group``, so one evaluation reports the paper split (every
  problem) and the clean split (the others) side by side."""
  family, names = resolve_functions(functions)
  label = group if group is not None else (functions if isinstance(functions, str) else 'custom')
  desc = f'trace {functions} L{min_level}-{max_level} x{num} seed {seed}'
  return LazyRecords(
      lambda: _trace(
          family,
          names,
          min_level,
          max_level,
          num,
          seed,
          inputs,
          input_len,
          max_chars,
          label,
          input_mix,
          drop_shortcuts,
          desc,
          tuple(input_depths) if input_depths is not None else None,
          input_max_len,
          twin_group,
      ),
      desc,
  )


def _trace(
    family,
    names,
    min_level,
    max_level,
    num,
    seed,
    inputs,
    input_len,
    max_chars,
    label,
    input_mix=0.0,
    drop_shortcuts=False,
    desc='',
    input_depths=None,
    input_max_len=16,
    twin_group=None,
):
  stats = {}
  probs = Gen.generate_trace(
      names,
      min_level,
      max_level,
      num,
      seed=seed,
      family=family,
      input_len=tuple(input_len),
      inputs=inputs,
      max_chars=max_chars,
      input_mix=input_mix,
      input_mix_max_len=input_max_len,
      input_depths=input_depths,
      drop_shortcuts=drop_shortcuts,
      stats=stats,
  )
  if drop_shortcuts:
    dropped = sum(stats['shortcuts'].values())
    print(
        f'[{desc}] dropped {dropped:,} shortcut-solvable chains of {stats["attempts"]:,} drawn '
        f'({", ".join(f"{k} {v:,}" for k, v in stats["shortcuts"].items())})',
        flush=True,
    )
  if len(probs) < num - num % max(max_level - min_level + 1, 1):
    print(
        f'[{desc}] only {len(probs):,} of {num:,} problems could be made (max_chars / '
        'dedup / shortcut filters)',
        flush=True,
    )
  twins = {
      functions_lib.FUNCTIONS[n].fid
      for pair in functions_lib.IDENTICAL_ACROSS_SPLIT.items()
      for n in pair
  }
  return [
      {
          'prompt': p.prompt,
          'target': p.target,
          'ref': p.answer,
          'level': p.level,
          'group': twin_group if twin_group and set(p.functions) & twins else label,
          'input': p.input,
          'functions': list(p.functions),
          'family': p.family,
          'sample_prompt': p.prompt,
          'train_prompt': p.prompt,
      }
      for p in probs
  ]


@gin.configurable
def tfds_records(
    config: str = 'stage2_test_L1to8',
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
    hidden_prompt_for_training: bool = True,
    group: str = '',
) -> LazyRecords:
  """Records of a string-task / trace TFDS config (built on first use, then read back).

  String-task records carry the paper's prompt as ``prompt``/``sample_prompt`` and the
  definitions-hidden prompt (stage 1) as ``train_prompt`` when ``hidden_prompt_for_training``;
  ``ref`` is the reference output."""
  return LazyRecords(
      lambda: _tfds(config, data_dir, limit, hidden_prompt_for_training, group), f'tfds {config}'
  )


def _prepare_once(mod, config, data_dir, name):
  """Build a TFDS config once, by the lead process, while the others wait; then each other
  process finds it prepared (a shared ``data_dir``: a no-op) or, when its ``data_dir`` is a local
  disk, builds the same deterministic data itself."""
  from compfn import workdir

  if workdir.is_lead():
    mod.prepare(config, data_dir, progress=True)
  workdir.barrier(name)
  if not workdir.is_lead():
    mod.prepare(config, data_dir, progress=False)


def _tfds(config, data_dir, limit, hidden_prompt_for_training, group):
  from compfn.data import strings_tfds

  _prepare_once(strings_tfds, config, data_dir, f'tfds:{config}')
  src = strings_tfds.data_source(config, data_dir)
  n = len(src) if limit is None else min(limit, len(src))
  out = []
  for i in range(n):
    r = strings_tfds.decode_record(src[i])
    if 'target' in r:  # trace config
      rec = {
          'prompt': r['prompt'],
          'target': r['target'],
          'ref': r['answer'],
          'level': int(r['level']),
          'group': group,
          'sample_prompt': r['prompt'],
          'train_prompt': r['prompt'],
      }
    else:
      hidden = r.get('prompt_hidden') or r['prompt']
      rec = {
          'prompt': r['prompt'],
          'ref': r['output'],
          'level': int(r['level']),
          'group': group,
          'sample_prompt': r['prompt'],
          'train_prompt': hidden if hidden_prompt_for_training else r['prompt'],
          'code': r.get('code'),
          'input': r.get('input'),
      }
    out.append(rec)
  return out


@gin.configurable
def countdown_records(
    config: str = 'L3',
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
    group: str = 'countdown',
) -> LazyRecords:
  """Countdown records: ``ref`` is ``'{"numbers": [...], "target": N}'`` (the evaluator's
  countdown task reads it)."""
  return LazyRecords(lambda: _countdown(config, data_dir, limit, group), f'countdown {config}')


def _countdown(config, data_dir, limit, group):
  from compfn.data import countdown_tfds

  _prepare_once(countdown_tfds, config, data_dir, f'tfds:countdown/{config}')
  src = countdown_tfds.data_source(config, data_dir)
  n = len(src) if limit is None else min(limit, len(src))
  out = []
  for i in range(n):
    r = countdown_tfds.decode_record(src[i])
    ref = json.dumps({'numbers': [int(x) for x in r['numbers']], 'target': int(r['target'])})
    out.append(
        {
            'prompt': r['prompt'],
            'ref': ref,
            'level': int(r['level']),
            'group': group,
            'sample_prompt': r['prompt'],
            'train_prompt': r['prompt'],
        }
    )
  return out


@gin.configurable
def step_records(
    records=gin.REQUIRED,
    p: float = 1.0,
    context=None,
    context_p: float = 0.0,
    seed: int = 0,
) -> LazyRecords:
  """Level-1 trace records turned, each with probability ``p``, into *bare steps*: prompt
  ``[context];CALL=`` and target ``VALUE;VALUE`` — the step's value follows from the literal
  written in the step itself, with no copy of the call in a prompt.

  Why (measured on the demo's stage-1 char model): trained on full level-1 traces only
  (``CALL=`` -> ``;CALL=VALUE;VALUE``), a small model computes VALUE by reading the *prompt's*
  copy of the call: asked ``OTHER=;CALL=`` it is right 2% of the time instead of 62%, and inside
  a composition (whose later steps' inputs exist only in the trace) 1-13%. Bare steps make it
  read the step. With probability ``context_p`` a whole ``context`` record (``prompt + target``,
  e.g. a generic-family composition or another atomic problem: never a composition of the
  records' functions) and a space precede the step, so the skill does not depend on what comes
  before it. Example::

      func_9('abc')= -> ;func_9('abc')=abccba;abccba     (a level-1 record)
      ;func_9('abc')= -> abccba;abccba                    (its bare step)
      func_57('xy')=;func_57('xy')=yx;yx ;func_9('abc')= -> abccba;abccba   (with context)
  """
  if not 0.0 <= p <= 1.0 or not 0.0 <= context_p <= 1.0:
    raise ValueError(f'step_records: p and context_p must be in [0, 1], got {p}, {context_p}')
  return LazyRecords(
      lambda: _steps(records, p, context, context_p, seed),
      f'steps(p={p}, context_p={context_p}) of {getattr(records, "describe", "records")}',
  )


def _steps(records, p, context, context_p, seed):
  rng = random.Random(f'compfn-steps:{seed}')
  ctx = list(context) if context is not None else []
  if context_p and not ctx:
    raise ValueError('step_records: context_p > 0 needs context records')
  out = []
  for r in records:
    if rng.random() >= p:
      out.append(r)
      continue
    if int(r.get('level', 1)) != 1 or not r['prompt'].endswith('='):
      raise ValueError(f'step_records needs level-1 trace records, got {r["prompt"]!r}')
    head = prompts.TRACE_SEP + r['prompt']
    if not r['target'].startswith(head):
      raise ValueError(f'record target {r["target"]!r} does not start with its step {head!r}')
    pre = ''
    if ctx and rng.random() < context_p:
      c = ctx[rng.randrange(len(ctx))]
      pre = c['prompt'] + c['target'] + ' '
    prompt = pre + head
    out.append({**r, 'prompt': prompt, 'target': r['target'][len(head) :], 'train_prompt': prompt})
  return out


@gin.configurable
def jsonl_records(path: str = gin.REQUIRED) -> LazyRecords:
  from compfn.data import pipeline

  return LazyRecords(lambda: pipeline.read_jsonl(path), f'jsonl {path}')


@gin.configurable
def mix(
    parts: Sequence[Sequence[dict]] = gin.REQUIRED,
    counts: Optional[Sequence[int]] = None,
    seed: int = 0,
) -> LazyRecords:
  """Concatenate record lists, taking ``counts[i]`` records of part i (a deterministic sample
  without replacement when the part is larger, with wrap-around repetition when smaller).
  The trainer's data pipeline shuffles the result."""
  return LazyRecords(
      lambda: _mix(parts, counts, seed),
      'mix(' + ', '.join(getattr(p, 'describe', 'list') for p in parts) + ')',
  )


def _mix(parts, counts, seed):
  parts = [list(p) for p in parts]
  if counts is None:
    counts = [len(p) for p in parts]
  if len(counts) != len(parts):
    raise ValueError(f'mix: {len(parts)} parts but {len(counts)} counts')
  out: list[dict] = []
  for i, (p, c) in enumerate(zip(parts, counts)):
    if not p:
      raise ValueError(f'mix: part {i} is empty')
    order = list(range(len(p)))
    random.Random(f'compfn-mix:{seed}:{i}').shuffle(order)
    out.extend(p[order[k % len(p)]] for k in range(int(c)))
  return out


def _fields(records: Sequence[dict], needed: Sequence[str], what: str):
  if not records:
    raise ValueError(f'{what}: no records')
  missing = [k for k in needed if k not in records[0]]
  if missing:
    raise ValueError(f'{what}: records lack {missing} (have {sorted(records[0])})')


def check_records(records: Sequence[dict], needed: Sequence[str], what: str) -> Any:
  _fields(records, needed, what)
  return records
