"""Reference trainers (PPO, SAC) that drive callax callbacks, and the loop they share."""

from ._loop import (
    Rollout as Rollout,
    TrainingResult as TrainingResult,
    run_training as run_training,
)
from ._networks import (
    MLP as MLP,
    ActorCritic as ActorCritic,
    Categorical as Categorical,
    CategoricalPolicy as CategoricalPolicy,
    DiagGaussian as DiagGaussian,
    GaussianPolicy as GaussianPolicy,
    RunningMeanStd as RunningMeanStd,
    orthogonal as orthogonal,
    orthogonal_linear as orthogonal_linear,
)
from ._ppo import PPO as PPO, PPOPolicy as PPOPolicy, PPOState as PPOState
from ._replay import ReplayBuffer as ReplayBuffer, Transition as Transition
from ._sac import (
    SAC as SAC,
    SACActor as SACActor,
    SACCritic as SACCritic,
    SACState as SACState,
    td_target as td_target,
)
