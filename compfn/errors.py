"""The failures ``compfn-train`` reports as one line and an exit code (no traceback).

Each class names its exit code; :func:`compfn.main.main` catches :class:`CompfnError` at the
top, prints ``compfn-train: error: <message>`` to stderr and exits with ``exit_code``
(``--verbose`` prints the traceback as well). Anything else is a bug and keeps its traceback
(exit 1).

==========================  ====  ========================================================
class                       code  meaning (raised by)
==========================  ====  ========================================================
(any other exception)          1  a bug: the traceback is printed
:class:`ConfigError`           2  a gin or command-line configuration error, naming the
                                  binding, file or flag (``compfn.main``,
                                  ``compfn.parallel.initialize_distributed``)
:class:`GateNotMet`            3  an enforced pre-RL gate was not met
                                  (``compfn.stages.gate.GateError``)
:class:`NonFiniteLoss`         4  a step produced a non-finite loss or gradient; names the
                                  last good checkpoint (``compfn.train.Trainer.run``; also
                                  ``compfn.checkpoint.NonFiniteError``: a refused save)
:class:`CheckpointMismatch`    5  a checkpoint does not fit the configured state (tree
                                  structure or shapes); names the checkpoint folder and
                                  what differs (``compfn.train.Trainer.restore``)
:class:`Preempted`            75  SIGTERM: the step was checkpointed and the run stopped;
                                  ``EX_TEMPFAIL`` so a scheduler requeues it and the rerun
                                  resumes (``compfn.train.Trainer.run``)
==========================  ====  ========================================================

This module imports nothing heavy (no JAX), so the CLI can use it before initialising JAX.
"""

from __future__ import annotations

__all__ = [
    'CompfnError',
    'ConfigError',
    'GateNotMet',
    'NonFiniteLoss',
    'CheckpointMismatch',
    'Preempted',
    'EXIT_CODES',
]


class CompfnError(RuntimeError):
  """A known failure: reported as one line, exits with :attr:`exit_code`."""

  exit_code = 1

  def __init__(self, message: str = '', *args):
    super().__init__(message, *args)
    # Kept on the instance: gin re-raises exceptions from configurables as a proxy whose str()
    # has "In call to configurable ..." appended; the proxy forwards attribute look-ups here.
    self.message = str(message)


class ConfigError(CompfnError, ValueError):
  """A gin / command-line configuration error (unknown binding, parse error, missing file,
  inconsistent flags). Also a ValueError, which is what gin raises for most of these."""

  exit_code = 2


class GateNotMet(CompfnError):
  """An enforced gate (e.g. the pre-RL pass@k gate) was not met."""

  exit_code = 3


class NonFiniteLoss(CompfnError, FloatingPointError):
  """A training step produced a non-finite loss or gradient; the update was not applied and the
  message names the last good checkpoint."""

  exit_code = 4


class CheckpointMismatch(CompfnError):
  """A checkpoint's tree structure or array shapes do not match the configured state."""

  exit_code = 5


class Preempted(CompfnError):
  """SIGTERM received: the run saved a checkpoint and stopped; rerun to resume."""

  exit_code = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, retry


#: exit code -> class, for documentation and tests.
EXIT_CODES = {
    c.exit_code: c for c in (ConfigError, GateNotMet, NonFiniteLoss, CheckpointMismatch, Preempted)
}
