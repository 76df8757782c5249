"""Config -> objects. The only package (with ``__main__``) that reads configs; every check on user
input runs here, before any environment is stepped, and fails with a :class:`ConfigError` that
names the problem and the accepted values.

- :mod:`~rltrain.build.networks`: networks sized from the spaces
- :mod:`~rltrain.build.agents`: one record per algorithm, its agent (objective + policies)
- :mod:`~rltrain.build.data`: datasets, normalization, samplers
- :mod:`~rltrain.build.sources`: the run's mode (source kind), what it learns from, its Source
- :mod:`~rltrain.build.optim`: optimizer groups, schedules, target updaters
- :mod:`~rltrain.build.assembly`: validation, loggers, the Trainer
"""

from rltrain.build.agents import (
    ALGORITHMS, Agent, AlgorithmRecord, NormalizedPolicy, algorithm_record, build_agent, build_exploration,
    check_action_space, dt_policies, dt_policy, dt_target_returns, load_policy,
)
from rltrain.build.assembly import (
    build_loggers, build_run, build_trainer, resolve_device, resolved_config, task_name, term_windows, trainer_config,
    validate,
)
from rltrain.build.data import (
    RewardAffine, check_sequence_source, data_env, dataset_sampler, load_offline_data, make_offline_eval_envs,
    prepare_offline_data, score_refs,
)
from rltrain.build.networks import (
    build_categorical_actor, build_crossq_critic, build_deterministic_actor, build_qvalue, build_state_value,
    build_stochastic_actor,
)
from rltrain.build.optim import build_groups, build_scheduler, build_updater, make_adam, planned_updates
from rltrain.build.sources import SOURCE_KINDS, Task, build_source, gail_reward_model, load_task, source_kind

__all__ = [
    "ALGORITHMS", "Agent", "AlgorithmRecord", "NormalizedPolicy", "RewardAffine", "SOURCE_KINDS", "Task",
    "algorithm_record", "build_agent", "build_categorical_actor", "build_crossq_critic",
    "build_deterministic_actor", "build_exploration", "build_groups", "build_loggers", "build_qvalue",
    "build_scheduler", "build_source", "build_state_value", "build_stochastic_actor", "build_trainer",
    "build_run", "build_updater", "check_action_space", "check_sequence_source", "data_env", "dataset_sampler",
    "dt_policies", "dt_policy", "dt_target_returns", "gail_reward_model", "load_offline_data", "load_policy",
    "load_task", "make_adam", "make_offline_eval_envs", "planned_updates", "prepare_offline_data",
    "resolve_device", "resolved_config", "score_refs", "source_kind", "task_name", "term_windows",
    "trainer_config", "validate",
]
