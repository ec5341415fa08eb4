"""The pipeline's stages: sft / rft / rl / eval / gate / export (``compfn.pipeline`` runs them).

A stage is a gin-configurable function ``stage(run) -> None`` on a shared
:class:`~compfn.stages.base.Run`, scoped in gin so one function serves several stages::

    run.job = @pipeline
    pipeline.stages = [@stage0/sft_stage, @stage1/sft_stage, @gate/gate_stage,
                       @stage2/rl_stage, @final/eval_stage]
    stage0/sft_stage.records = @stage0/trace_records()
    stage0/trace_records.functions = 'generic'

Each stage works in ``DIR/<stage name>/`` and is resumable: a training stage restores its newest
checkpoint (params, optimizer, step, RNG, data position) and continues exactly; a finished stage
(``DONE``) is not retrained — its final parameters are loaded and the log says so; an evaluation
or gate whose result file exists is read back.

Modules: ``base`` (Run, dry runs, data digests), ``models`` (load_model, char_model, FLOPs per
token), ``batches`` (records -> device batches), ``training`` (what SFT and RL share: state,
finish, MFU and evaluation hooks), ``sft``, ``rl``, ``rft``, ``evaluation``, ``gate``,
``export``. Importing this package registers every stage, the record sources
(``compfn.data.sources``) and ``GRPOConfig`` with gin.
"""

from compfn.data import sources  # noqa: F401  (registers the gin record sources)
from compfn.rl import grpo as _grpo  # noqa: F401  (registers GRPOConfig)
from compfn.stages.base import Run
from compfn.stages.evaluation import eval_stage
from compfn.stages.export import export_stage
from compfn.stages.gate import GateError, gate_stage
from compfn.stages.models import char_model, load_model
from compfn.stages.rft import rft_stage
from compfn.stages.rl import rl_stage
from compfn.stages.sft import sft_stage

__all__ = [
    'Run',
    'load_model',
    'char_model',
    'sft_stage',
    'rl_stage',
    'rft_stage',
    'eval_stage',
    'gate_stage',
    'export_stage',
    'GateError',
]
