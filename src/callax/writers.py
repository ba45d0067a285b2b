"""Host writers: where a run's points go (``writers=`` of [`callax.JITSummaryWriter`][] and
[`callax.TensorBoardCallback`][]), and the interface for writing one's own.

- [`TensorBoardWriter`][callax.writers.TensorBoardWriter] (``"tensorboard"``, the default);
- [`JsonlWriter`][callax.writers.JsonlWriter] (``"jsonl"``), read back by
  [`read_jsonl`][callax.writers.read_jsonl];
- [`WandbWriter`][callax.writers.WandbWriter] (``"wandb"``, the ``callax[wandb]``
  extra; ``wandb`` is imported when a run uses it).
"""

from ._writer._choice import (
    register_writer as register_writer,
    writer_names as writer_names,
)
from ._writer._interface import (
    AbstractWriter as AbstractWriter,
    Destination as Destination,
)
from ._writer._jsonl import JsonlWriter as JsonlWriter, read_jsonl as read_jsonl
from ._writer._tensorboard import TensorBoardWriter as TensorBoardWriter
from ._writer._wandb import WandbWriter as WandbWriter
