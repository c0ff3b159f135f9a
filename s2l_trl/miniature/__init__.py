"""The paper's claims in miniature on a CPU: a locally built model family on a multi-step addition task, pass@k of
each size, GRPO vs S2L-PO vs high-temperature GRPO over seeds, rollout compute and rollout diversity.

Entry point: ``python -m s2l_trl.miniature {family,passk,rl,demo,codistill,race,crossover,diversity,curves} ...``
(see ``results/miniature/README.md``). Modules:

- ``task``, ``family``: the addition task and the model family (built, SFT'd and cached locally);
- ``settings``: every experiment's settings dataclass and the methods compared (:class:`settings.Method`);
- ``runs``: what every training run shares (trainer with timing and rollout recording, explorer wrapper, held-out
  evaluation, GRPOConfig fields);
- experiments, which train / sample and write run files: ``rl_experiment`` (GRPO vs S2L-PO, the README's main job),
  ``passk_experiment``, ``codistill_experiment``, ``crossover`` (the pass@k crossover constructions), ``race`` (the
  explorer-thread race at the level of random draws);
- reports, which read run files and write tables and plots: ``rl_report``, ``passk_report``, ``codistill_report``,
  ``diversity_report``, ``curves``; with the measures of ``diversity`` and the small-sample statistics of ``stats``.
"""
