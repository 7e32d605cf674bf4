"""Experiments: the demo, the paper's tables and Figure 2, built on the training stage.

An experiment is declarative (``spec.Experiment``, read from YAML: ``demo.yaml`` and ``paper.yaml``
ship here): where the corpus comes from, which feature caches to fill, the training recipe (a
preset and overrides), the seeds and the table rows. One runner (``runner.run_experiment``)
executes any of them: corpus → prepare → (transcribe) → extract → one cross-validation per row →
Figure 2 (``tsne``) → the table (``tables``). ``giamic demo``, ``giamic reproduce`` and
``giamic tsne`` are in ``commands``.

This layer sits above training and inference and may use both; neither imports it.
"""
