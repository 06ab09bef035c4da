"""Cameras, labeled dataset recording and perception-in-the-loop evaluation.

- :mod:`carla_mr.dataset.recorder`: ``Recorder``, ``RecorderStage`` (runner stage),
  ``record(scenario, out, ...)`` (the ``carla-mr dataset record`` verb's core).
- :mod:`carla_mr.dataset.perception`: ``Evaluator``, ``PerceptionStage``,
  ``evaluate_dataset``, ``evaluate_scenario``, ``write_report``.
- :mod:`carla_mr.dataset.models`: ``load_model`` (validator, template matcher, dotted paths).
- :mod:`carla_mr.dataset.textures`: sign swaps (folder, genai model, procedural variants).

See docs/dataset.md.
"""
