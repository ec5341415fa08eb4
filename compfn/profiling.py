"""Where a compiled program's time goes, by ``jax.named_scope``: one traced call, attributed.

A difference of two wall-clock timings (program with a part minus program without it) cannot
see a part that costs 0.1 % of a 15 s call on a machine whose calls vary by 5 %. This module
measures the part inside the program instead:

1. the compiled program's HLO text maps every instruction name (``ynn_fusion.3``,
   ``wrapped_add.61``, ...) to its ``op_name`` metadata, which carries the ``jax.named_scope``
   path of the JAX code that produced it (``jit(f)/while/body/verifier/...``);
2. ``jax.profiler`` traces one call (perfetto JSON); XLA:CPU names each executed op's event
   after its instruction;
3. every event's duration is added to each scope named in its instruction's ``op_name``, or in
   the ``op_name`` of any instruction fused into it (XLA names a fusion after its root, but a
   fusion of a scope's ops with others runs both: counting it in full gives an upper bound).

Durations are summed over threads, so ops that run side by side count in full (an upper bound
on a scope's share of the wall time). ``matched_op_s / total_op_s`` says how much of the traced
op time could be attributed to instructions of the given HLO text at all (instruction names
are deterministic for one program, so a recompile of the same program matches).

Example (``tools/benchmark_sampler.py`` does this for the verifier inside the fused rollout)::

    def f(x, w):
      with jax.named_scope('heavy'):
        y = jnp.tanh(x @ w)
      with jax.named_scope('light'):
        z = 2.0 * x
      return y + z

    f = jax.jit(f)
    jax.block_until_ready(f(x, w))                    # compile outside the trace
    p = profile_scopes(f, (x, w), ('heavy', 'light'))
    p.share('heavy')                                  # ~0.9: most of the call is the matmul
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'calls=\{?(%?[\w.\-]+(?:,\s*%?[\w.\-]+)*)\}?')


def instruction_op_names(hlo_text: str) -> dict[str, frozenset[str]]:
  """``{instruction name: the op_names it carries}`` for ``hlo_text`` (compiled HLO).

  A fusion carries its own op_name (that of its root) and every op_name of the instructions
  fused into it: XLA names a fusion after one op but runs all of them.

  >>> names = instruction_op_names('''
  ... %fused_computation.1 (p: f32[2]) -> f32[2] {
  ...   %p = f32[2]{0} parameter(0)
  ...   ROOT %tanh.1 = f32[2]{0} tanh(%p), metadata={op_name="jit(f)/heavy/tanh"}
  ... }
  ... ENTRY %main.2 (a: f32[2]) -> f32[2] {
  ...   %a = f32[2]{0} parameter(0)
  ...   ROOT %fusion.3 = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(f)/add"}
  ... }''')
  >>> sorted(names['fusion.3'])
  ['jit(f)/add', 'jit(f)/heavy/tanh']
  """
  own: dict[str, set[str]] = {}
  calls: dict[str, list[str]] = {}
  body: dict[str, list[str]] = {}
  comp = None
  for line in hlo_text.splitlines():
    if not line.startswith((' ', '\t')):  # a computation's header or closing brace
      m = _COMPUTATION.match(line)
      comp = m.group(1) if m and not line.startswith('}') else None
      if comp is not None:
        body.setdefault(comp, [])
      continue
    m = _INSTR.match(line)
    if comp is None or not m:
      continue
    name = m.group(1)
    body[comp].append(name)
    own[name] = set(_OP_NAME.findall(line))
    c = _CALLS.search(line)
    calls[name] = [x.strip().lstrip('%') for x in c.group(1).split(',')] if c else []

  memo: dict[str, frozenset[str]] = {}

  def carried(name: str, depth: int = 0) -> frozenset[str]:
    if name in memo:
      return memo[name]
    out = set(own.get(name, ()))
    if depth < 8:
      for comp_name in calls.get(name, ()):
        for inner in body.get(comp_name, ()):
          out |= carried(inner, depth + 1)
    memo[name] = frozenset(out)
    return memo[name]

  return {name: carried(name) for name in own}


def _in_scope(op_names: frozenset[str], scope: str) -> bool:
  return any(scope in op.split('/') for op in op_names)


@dataclasses.dataclass(frozen=True)
class ScopeProfile:
  """One traced call. Times in seconds; op times summed over threads."""

  wall_s: float  # the call, dispatch to block_until_ready
  total_op_s: float  # every XLA op event of the trace
  matched_op_s: float  # op events whose name is an instruction of the HLO text
  scope_op_s: Mapping[str, float]  # per scope: op events whose op_name lies inside it
  scope_events: Mapping[str, int]

  def share(self, scope: str) -> float:
    """The scope's op time as a fraction of the call's wall time."""
    return self.scope_op_s[scope] / self.wall_s


def _trace_events(trace_dir: str) -> list[dict]:
  files = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not files:
    raise RuntimeError(f'jax.profiler wrote no perfetto trace under {trace_dir}')
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e]


def attribute(
    events: Sequence[Mapping[str, Any]],
    op_names: Mapping[str, frozenset[str]],
    scopes: Sequence[str],
) -> tuple[float, float, dict[str, float], dict[str, int]]:
  """Sums event durations (microseconds in, seconds out) per scope; see the module docstring.

  Host-side events (python frames ``$...``, the executor's ``ThunkExecutor``/thread-pool
  bookkeeping) are not ops and count nowhere; an op event that encloses other op events of its
  thread (a ``while``'s own span around its body's ops) counts only through them."""
  ops = []
  for e in events:
    name = e['name']
    if name.startswith(('$', 'ThunkExecutor', 'SlinkyThreadPool', 'PjitFunction', 'end: ')):
      continue
    ops.append(e)
  # A while loop's (or call's) own event spans its body's events on the same thread: count
  # only the innermost op events, so nothing is counted twice.
  container = set()
  by_thread: dict[Any, list[tuple[float, float, int]]] = {}
  for i, e in enumerate(ops):
    if e['name'] in op_names:
      by_thread.setdefault((e.get('pid'), e.get('tid')), []).append(
          (float(e.get('ts', 0.0)), float(e['dur']), i)
      )
  for spans in by_thread.values():
    spans.sort()
    for (ts, dur, i), (ts_next, _, _) in zip(spans, spans[1:]):
      if ts_next < ts + dur:
        container.add(i)
  total = matched = 0.0
  per = {s: 0.0 for s in scopes}
  count = {s: 0 for s in scopes}
  for i, e in enumerate(ops):
    if i in container:
      continue
    dur = float(e['dur']) * 1e-6
    total += dur
    carried = op_names.get(e['name'])
    if carried is None:
      continue
    matched += dur
    for s in scopes:
      if _in_scope(carried, s):
        per[s] += dur
        count[s] += 1
  return total, matched, per, count


def profile_scopes(
    fn: Callable[..., Any],
    args: Sequence[Any],
    scopes: Sequence[str],
    *,
    hlo_text: Optional[str] = None,
    trace_dir: Optional[str] = None,
) -> ScopeProfile:
  """Traces one call ``fn(*args)`` (warm it up first) and attributes its op time to ``scopes``.

  ``fn`` is a ``jax.jit`` function, or any callable when ``hlo_text`` (the compiled text of the
  program it runs, ``jitted.lower(...).compile().as_text()``) is given."""
  if hlo_text is None:
    hlo_text = fn.lower(*args).compile().as_text()
  op_names = instruction_op_names(hlo_text)
  with tempfile.TemporaryDirectory(prefix='compfn_profile_') as tmp:
    d = trace_dir or tmp
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    try:
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      wall = time.perf_counter() - t
    finally:
      jax.profiler.stop_trace()
    events = _trace_events(d)
  total, matched, per, count = attribute(events, op_names, scopes)
  return ScopeProfile(
      wall_s=wall, total_op_s=total, matched_op_s=matched, scope_op_s=per, scope_events=count
  )
