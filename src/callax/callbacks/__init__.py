"""Ready-made callbacks."""

from ._checkpoint import (
    CheckpointCallback as CheckpointCallback,
    CheckpointCallbackState as CheckpointCallbackState,
    load_checkpoint as load_checkpoint,
)
from ._console import (
    ConsoleTableCallback as ConsoleTableCallback,
    ConsoleTableState as ConsoleTableState,
    ConsoleTableStepState as ConsoleTableStepState,
    format_table as format_table,
)
from ._eval import (
    EvalCallback as EvalCallback,
    EvalCallbackState as EvalCallbackState,
    evaluate_policy as evaluate_policy,
)
from ._histogram import (
    HistogramCallback as HistogramCallback,
    add_histograms as add_histograms,
    rollout_histograms as rollout_histograms,
)
from ._hparams import (
    HParamsCallback as HParamsCallback,
    hparams_of as hparams_of,
)
from ._interrupt import StopOnInterrupt as StopOnInterrupt
from ._progress import (
    ProgressBarCallback as ProgressBarCallback,
    ProgressBarStepState as ProgressBarStepState,
)
from ._stop import (
    AbstractEvalStopper as AbstractEvalStopper,
    EvalResult as EvalResult,
    NoImprovementState as NoImprovementState,
    StopTrainingOnNoModelImprovement as StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold as StopTrainingOnRewardThreshold,
)
from ._tensorboard import (
    TensorBoardCallback as TensorBoardCallback,
    TensorBoardCallbackState as TensorBoardCallbackState,
    TensorBoardCallbackStepState as TensorBoardCallbackStepState,
    find_learning_rate as find_learning_rate,
)
