"""References computed on device: the JAX interpreter inside the RL step (issue #12).

With ``GRPOConfig.reference = 'execute'`` (:mod:`compfn.rl.grpo`) the prompt pool of a GRPO step
carries each problem's program and input, encoded on the host (:func:`encode_programs`), and the
fused step computes the reference outputs with the interpreter
(:func:`compfn.tasks.strings.interpreter.execute`) inside the same XLA program, then scores the
responses against them with the device scorer (:func:`reference_bytes`)::

    pairs = [(p.code, p.input) for p in problems]       # Task.computed_reference.program
    batch = encode_programs(pairs, ExecuteSpec())       # numpy, static shapes (host)
    ref, ref_len, flagged = reference_bytes(batch, ExecuteSpec(), ref_width)   # jittable

**Overflow.** The interpreter works in fixed-size buffers (``ExecuteSpec``: ``capacity`` code
points per value, ``stack_depth`` slots, the static instruction and literal tables, the input
buffer of ``input_width`` code points). The Python reference (:func:`compfn.tasks.strings.program.
run`) has no such limits: it always produces the output, and the Python scorer compares the
response with it. So an example is *flagged* (``flagged[i]``) whenever the device cannot give
that same output:

* the interpreter's own overflow flag (a value longer than ``capacity``, the input longer than
  its buffer when read, or a push beyond ``stack_depth``);
* the output's UTF-8 bytes do not fit the reference buffer (``ref_width`` bytes) or hold a
  code point UTF-8 cannot encode (a surrogate);
* the host could not encode the program (``batch.unencodable``: it does not fit the static
  tables, does not parse, or has a character outside the interpreter's domain).

A flagged example's computed reference is never used: the caller substitutes the stored
reference (``compfn.rl.grpo`` does, so every response is scored exactly as the Python reference
would score it) and counts the flagged examples (``reference_overflow_frac`` in the step
metrics).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np

from compfn.tasks.strings import interpreter

Array = jax.Array

__all__ = [
    'ExecuteSpec',
    'ProgramBatch',
    'encode_programs',
    'reference_bytes',
    'utf8_bytes',
    'code_and_input',
    'trace_code_and_input',
]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExecuteSpec:
  """Static sizes of the on-device reference (hashable: part of ``GRPOConfig``).

  The defaults fit every program of the paper's stage-2 data (<= 64 instructions, <= 13
  literals of <= 6 code points, stack <= 4, inputs <= 10 code points); ``capacity`` bounds
  every value (input, literal, intermediate, output) in code points. Examples that exceed any
  of them are flagged, not mis-scored (module docstring)."""

  capacity: int = 512
  stack_depth: int = 8
  max_instructions: int = 64
  max_literals: int = 16
  literal_capacity: int = 16
  input_width: int = 64

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if type(v) is not int or v < 1:
        raise ValueError(f'ExecuteSpec.{f.name} must be an int >= 1, got {v!r}')
    if self.capacity > interpreter.MAX_CAPACITY:
      raise ValueError(
          f'ExecuteSpec.capacity must be <= {interpreter.MAX_CAPACITY}, got {self.capacity}'
      )


@flax.struct.dataclass
class ProgramBatch:
  """B encoded programs and their inputs (numpy on the host; a pytree of arrays)."""

  programs: interpreter.EncodedPrograms  # [B, ...] (interpreter module docstring)
  x: Array  # int32[B, input_width] input code points
  x_len: Array  # int32[B] true input lengths (may exceed input_width: reading x overflows)
  unencodable: Array  # bool[B] the host could not encode the program (always flagged)


def code_and_input(problem) -> tuple[str, str]:
  """``(code, input)`` of a string problem: a :class:`~compfn.tasks.strings.generator.Problem`
  or a record (mapping) with ``'code'`` and ``'input'`` (``compfn.data.sources.tfds_records``).
  Raises ValueError when the record has neither."""
  code, x = _field(problem, 'code'), _field(problem, 'input')
  if not isinstance(code, str) or not isinstance(x, str):
    raise ValueError(
        "reference='execute' needs each problem's program and input ('code' and 'input', "
        f'e.g. the paper-format records of tfds_records); got code={code!r}, input={x!r}'
    )
  return code, x


def _field(problem, name):
  if isinstance(problem, dict) or hasattr(problem, 'keys'):
    return problem.get(name)
  return getattr(problem, name, None)


def trace_code_and_input(problem) -> tuple[str, str]:
  """``(code, input)`` of a trace problem (``strings_trace``): its prompt without the final
  ``=`` is the program, with the input as a literal (``func_3(func_1('abc',2))=`` ->
  ``("func_3(func_1('abc',2))", '')``), and its answer is that program's output. Only the
  paper family's functions are the interpreter's (the generic families reuse ``func_k`` names
  for other functions), so a problem must say ``family == 'paper'`` (a
  :class:`~compfn.tasks.strings.generator.TraceProblem`, or a record with ``'family'``, as
  ``compfn.data.sources.trace_records`` writes); anything else raises ValueError."""
  family, prompt = _field(problem, 'family'), _field(problem, 'prompt')
  if family != 'paper':
    raise ValueError(
        "reference='execute' for the trace task needs problems of the paper family (family="
        f"'paper'; the generic families' func_k are not the interpreter's); got family={family!r}"
    )
  if not isinstance(prompt, str) or not prompt.endswith('='):
    raise ValueError(f"a trace prompt ends with '=', got {prompt!r}")
  return prompt[:-1], ''


def _compile(code: str, x: str, spec: ExecuteSpec):
  """The compiled program, or None when the host cannot encode it within ``spec``."""
  try:
    c = interpreter.compile_code(code)
    interpreter.check_domain(x, 'input')
  except ValueError:  # ProgramError is a ValueError; so are the domain errors
    return None
  if (
      len(c.instrs) > spec.max_instructions
      or len(c.literals) > spec.max_literals
      or any(len(s) > spec.literal_capacity for s in c.literals)
  ):
    return None
  return c


def encode_programs(pairs: Sequence[tuple[str, str]], spec: ExecuteSpec) -> ProgramBatch:
  """Host: ``(code, input)`` pairs -> :class:`ProgramBatch` with the static shapes of ``spec``
  (one compiled step for every batch). A program the host cannot encode becomes an empty row
  with ``unencodable`` set (flagged on device), never an error: the step still scores it, from
  the stored reference."""
  pairs = list(pairs)
  if not pairs:
    raise ValueError('encode_programs: no programs')
  compiled = [_compile(code, x, spec) for code, x in pairs]
  bad = np.array([c is None for c in compiled], bool)
  rows = [interpreter.PAD_PROGRAM if c is None else c for c in compiled]
  enc = interpreter.pack_programs(
      rows,
      max_instructions=spec.max_instructions,
      max_literals=spec.max_literals,
      literal_capacity=spec.literal_capacity,
  )
  x, x_len = interpreter.encode_strings(
      ['' if b else x for b, (_, x) in zip(bad, pairs)], spec.input_width
  )
  return ProgramBatch(programs=enc, x=x, x_len=x_len, unencodable=bad)


def utf8_bytes(codes, lengths, width: int):
  """Code points -> UTF-8 bytes (jittable): ``codes`` int32[B, C], ``lengths`` int32[B] ->
  (bytes int32[B, width] zero-padded, true byte length int32[B] (may exceed width: the bytes are
  then cut), bad bool[B] (a surrogate code point, which UTF-8 cannot encode))."""
  from compfn.tasks.strings.device_scoring import utf8_encode

  codes = jnp.asarray(codes, jnp.int32)
  b, c = codes.shape
  valid = jnp.arange(c)[None, :] < lengths[:, None]
  (b0, b1, b2, b3), n = utf8_encode(codes)
  n = jnp.where(valid, n, 0)
  start = jnp.cumsum(n, axis=1) - n  # first byte of each character
  byts = jnp.stack([b0, b1, b2, b3], axis=-1)  # [B, C, 4]
  k = jnp.arange(4)[None, None, :]
  dest = jnp.where(k < n[..., None], start[..., None] + k, width)  # width: dropped
  out = jax.vmap(
      lambda d, v: jnp.zeros((width,), jnp.int32).at[d.reshape(-1)].set(v.reshape(-1), mode='drop')
  )(dest, byts)
  bad = jnp.any(valid & (codes >= 0xD800) & (codes <= 0xDFFF), axis=1)
  return out, n.sum(axis=1).astype(jnp.int32), bad


def reference_bytes(batch: ProgramBatch, spec: ExecuteSpec, width: int):
  """Device (jittable): run the programs on their inputs and return the outputs as the device
  scorer reads references: (ref int32[B, width] UTF-8 bytes, ref_len int32[B], flagged bool[B]).
  A flagged row's ``ref`` is meaningless (module docstring: the caller must not use it)."""
  out, out_len, overflow = interpreter.execute(
      batch.programs,
      batch.x,
      batch.x_len,
      capacity=spec.capacity,
      stack_depth=spec.stack_depth,
  )
  ref, ref_len, bad = utf8_bytes(out, out_len, width)
  flagged = overflow | bad | (ref_len > width) | jnp.asarray(batch.unencodable, bool)
  return ref, jnp.minimum(ref_len, width), flagged
