"""Ready-made callbacks."""

from ._progress import (
    ProgressBarCallback as ProgressBarCallback,
    ProgressBarStepState as ProgressBarStepState,
)
from ._tensorboard import (
    TensorBoardCallback as TensorBoardCallback,
    TensorBoardCallbackState as TensorBoardCallbackState,
    TensorBoardCallbackStepState as TensorBoardCallbackStepState,
    find_learning_rate as find_learning_rate,
)
