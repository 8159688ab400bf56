"""Task plug-ins beyond classification: each module registers a task's loss, evaluator and data with the
shared registries (``excise.training.register_task_loss``, ``excise.metrics.evaluate.register_evaluator``).

- :mod:`excise.tasks.sequence`: next-token prediction (language-model unlearning);
- :mod:`excise.tasks.dense`: semantic segmentation and object detection
  (:mod:`excise.tasks.segmentation`, :mod:`excise.tasks.detection`).

Kept free of imports so each task module can be imported on its own without pulling in the others.
"""
