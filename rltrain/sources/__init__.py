"""Sources: a run's mode as an object (see :mod:`rltrain.sources.base` for the contract)."""

from rltrain.sources.base import CLOCKS, EndsInterval, Source, crossed
from rltrain.sources.dataset import DatasetSource
from rltrain.sources.finetune import FinetuneSource
from rltrain.sources.offline_to_online import OfflineToOnlineSource, OnlineTransform
from rltrain.sources.replay import ReplaySchedule, ReplaySource
from rltrain.sources.rollout import RolloutSource

__all__ = ["CLOCKS", "DatasetSource", "EndsInterval", "FinetuneSource", "OfflineToOnlineSource", "OnlineTransform",
           "ReplaySchedule", "ReplaySource", "RolloutSource", "Source", "crossed"]
