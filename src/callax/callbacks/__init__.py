"""Ready-made callbacks."""

from ._tensorboard import (
    TensorBoardCallback as TensorBoardCallback,
    TensorBoardCallbackStepState as TensorBoardCallbackStepState,
    find_learning_rate as find_learning_rate,
)
