"""Host side of callax's writer (no JAX here): runs, the writer thread, exit paths, files.

- :mod:`._registry`: runs by handle and what device code asks of them;
- :mod:`._run`: one run (directory, writers per seed, increasing steps per tag, faults);
- :mod:`._interface`: the writer interface (:class:`AbstractWriter`) and writers by name;
- :mod:`._tensorboard`, :mod:`._jsonl`, :mod:`._wandb`: the writers (event files, JSON
  lines, Weights & Biases);
- :mod:`._queue`: the writer thread and its bounded queue;
- :mod:`._signals`: exit signals and forked children;
- :mod:`._event_file`, :mod:`._encode`, :mod:`._read`: TensorBoard's file format;
- :mod:`._paths`: checks of run names and directories.
"""

from ._choice import (
    register_writer as register_writer,
    resolve_writers as resolve_writers,
    writer_names as writer_names,
)
from ._interface import (
    DEFAULT_WRITERS as DEFAULT_WRITERS,
    AbstractWriter as AbstractWriter,
    Destination as Destination,
    WriterSpec as WriterSpec,
)
from ._paths import check_log_dir as check_log_dir, check_run_name as check_run_name
from ._queue import MAX_PENDING_ROWS as MAX_PENDING_ROWS
from ._registry import (
    begin_training as begin_training,
    close as close,
    close_all_before_exit as close_all_before_exit,
    flush as flush,
    flush_all as flush_all,
    get_run as get_run,
    open_run as open_run,
    prepare_log_dir as prepare_log_dir,
    set_sweep as set_sweep,
    unique_dir as unique_dir,
    write as write,
    write_histograms as write_histograms,
    write_hparams as write_hparams,
    write_row as write_row,
    write_summaries as write_summaries,
)
from ._run import AUTO_STEP as AUTO_STEP, NO_SEED as NO_SEED, Run as Run, WriteError as WriteError
from ._signals import (
    EXIT_FLUSH_TIMEOUT as EXIT_FLUSH_TIMEOUT,
    EXIT_SIGNALS as EXIT_SIGNALS,
)
from ._sweep import SweepLayout as SweepLayout, layout_of as layout_of
