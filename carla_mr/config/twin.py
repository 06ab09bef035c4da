"""The scenario's ``twin`` section: online trajectory prediction at the RSUs.

Example::

    twin:
      enabled: true
      model: models/twin-residual    # a directory saved by `carla-mr twin train`, or a baseline
      vehicles: av                   # predict the AVs (default) or all vehicles

``past`` and ``future`` apply to the baselines; a trained model carries its own. ``sample_hz``
is the prediction rate of any predictor (a trained residual model serves 1-25 Hz) and must
divide the world's tick rate (20 Hz ticks: 1, 2, 4, 5, 10 or 20 Hz). A trained model is gated
against constant velocity per vehicle (docs/twin.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from carla_mr.schema import StrictModel

DEFAULT_SAMPLE_HZ = 2.0
DEFAULT_PAST = 60
DEFAULT_FUTURE = 5


class TwinConfig(StrictModel):
    enabled: bool = False
    model: str = Field("constant_velocity",
                       description="A model directory from `carla-mr twin train` (relative paths: to the scenario "
                                   "file, then the working directory), or 'constant_velocity' / 'zero_motion'.")
    past: int = Field(DEFAULT_PAST, ge=2, le=10000, description="Past samples per prediction (baselines).")
    future: int = Field(DEFAULT_FUTURE, ge=1, le=1000, description="Predicted samples (baselines).")
    sample_hz: float = Field(DEFAULT_SAMPLE_HZ, gt=0, le=1000, description="Prediction rate, Hz (baselines).")
    vehicles: Literal["av", "all"] = Field("av", description="Predict the AVs only, or every vehicle.")
    hit_radius_m: float = Field(2.0, gt=0, description="A prediction 'hits' when its final error is within this, m.")
    accuracy_window: int = Field(20, ge=1, le=100000,
                                 description="Rolling accuracy: exact mean over the first N evaluated predictions, "
                                             "then an exponential average with weight 1/N.")
    prior: float = Field(0.5, ge=0, le=1, description="R of an AV before any of its predictions was evaluated "
                                                     "(the market's constant R_acc).")
    spread: bool = Field(True, description="Spread each sample's prediction batch over the stride's ticks "
                                           "(1/stride of the vehicles per tick) so no tick carries the whole batch.")
    threads: int = Field(1, ge=1, le=256, description="torch threads of a model that uses torch (set around each "
                                                     "call and restored; more threads spin against the world).")
    write_predictions: bool = Field(True, description="Write RUN_DIR/predictions.parquet.")
