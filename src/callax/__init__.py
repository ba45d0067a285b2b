"""callax: JAX-native training callbacks for reinforcement learning, logging to TensorBoard."""

# First, before JAX: importing _entry installs the `callax` command's Ctrl-C handler (only in
# that command; see callax._entry).
from . import _entry as _entry, writers as writers
from ._buffer import ScalarBuffer as ScalarBuffer
from ._callback import (
    AbstractCallback as AbstractCallback,
    AbstractCallbackState as AbstractCallbackState,
    AbstractCallbackStepState as AbstractCallbackStepState,
    AbstractContinuingCallback as AbstractContinuingCallback,
    AbstractStatelessCallback as AbstractStatelessCallback,
    AbstractStepStatelessCallback as AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback as AbstractTrainingPassthroughCallback,
    EmptyCallbackState as EmptyCallbackState,
    EmptyCallbackStepState as EmptyCallbackStepState,
    IterationContext as IterationContext,
    ResetContext as ResetContext,
    StepContext as StepContext,
    TrainingContext as TrainingContext,
)
from ._host import flush_all as flush_all
from ._list import (
    CallbackList as CallbackList,
    CallbackListState as CallbackListState,
    CallbackListStepState as CallbackListStepState,
)
from ._step import Step as Step
from ._summary_writer import JITSummaryWriter as JITSummaryWriter
from ._sweep import Sweep as Sweep, declare_sweep as declare_sweep
from ._writer import WriteError as WriteError
from .callbacks import (
    AbstractEvalStopper as AbstractEvalStopper,
    CheckpointCallback as CheckpointCallback,
    ConsoleTableCallback as ConsoleTableCallback,
    EvalCallback as EvalCallback,
    EvalResult as EvalResult,
    HistogramCallback as HistogramCallback,
    HParamsCallback as HParamsCallback,
    ProgressBarCallback as ProgressBarCallback,
    StopOnInterrupt as StopOnInterrupt,
    StopTrainingOnNoModelImprovement as StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold as StopTrainingOnRewardThreshold,
    TensorBoardCallback as TensorBoardCallback,
    TensorBoardCallbackState as TensorBoardCallbackState,
    TensorBoardCallbackStepState as TensorBoardCallbackStepState,
    add_histograms as add_histograms,
    evaluate_policy as evaluate_policy,
    hparams_of as hparams_of,
    load_checkpoint as load_checkpoint,
    rollout_histograms as rollout_histograms,
)
from .events import SACEvents as SACEvents

__version__ = "0.1.0"
