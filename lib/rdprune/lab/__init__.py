"""The lab: what a user of the notebooks and the CLI touches. Datasets (:mod:`.data`), the zoo
(:mod:`.models`), cached checkpoints (:mod:`.train`), every preset (:mod:`.presets`), the front
door ``rp.prune`` and the evaluation helper (:mod:`.front`), the equal-budget comparison
(:mod:`.experiments`), schedules (:mod:`.pipeline`), notebook
reproduction (:mod:`.reproduce`), figures (:mod:`.plots`), numbers in words (:mod:`.report`) and
the published result tables (:mod:`.readme`), the byte corpus (:mod:`.text`) and the explorer widget
(:mod:`.widgets`). Names are resolved here (a dataset, a model name); the floors below take
models, tensors and loaders."""
from . import (
    data,
    experiments,
    front,
    models,
    pipeline,
    plots,
    presets,
    readme,
    report,
    reproduce,
    text,
    train,
    widgets,
)

__all__ = ["data", "experiments", "front", "models", "pipeline", "plots", "presets", "readme", "report",
           "reproduce", "text", "train", "widgets"]
