"""The paper's claims in miniature on a CPU: a locally built model family on a multi-step addition task, pass@k of
each size, GRPO vs S2L-PO vs high-temperature GRPO over seeds, rollout compute and rollout diversity.

Entry point: ``python -m s2l_trl.miniature {family,passk,rl,curves} ...`` (see ``results/miniature/README.md``).
"""
