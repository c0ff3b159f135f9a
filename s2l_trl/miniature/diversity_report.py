"""Policy-level vs token-level diversity of the rollouts of RL experiments, per source of rows: S2L-PO's explorer
rows, S2L-PO's and GRPO's learner rows, and high-temperature GRPO's learner rows (``diversity.json``, ``diversity.md``,
``diversity.png``; the measures are in :mod:`.diversity`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..jsonl import write_json_atomic
from .diversity import plot_source_diversity, source_diversity

# (method whose runs are read, source recorded in its rollouts) -> the name a table shows
SOURCES = {
    ("s2l_po", "explorer"): "S2L-PO explorer rows",
    ("s2l_po", "learner"): "S2L-PO learner rows",
    ("grpo", "learner"): "GRPO learner rows",
    ("grpo_high_temp", "learner_high_temp"): "GRPO learner rows, high T",
}


def read_rollouts(experiment_dir: str | Path, max_step: int | None) -> list[dict]:
    """Every rollout group of an RL experiment's runs of the methods in ``SOURCES`` (steps <= ``max_step``), with
    its source renamed as in ``SOURCES``."""
    records = []
    for (method, source), label in SOURCES.items():
        for run_dir in sorted(Path(experiment_dir).glob(f"runs/{method}-seed*")):
            for line in (run_dir / "rollouts.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec["source"] == source and (max_step is None or rec["step"] <= max_step):
                    records.append({**rec, "source": label, "run": run_dir.name})
    return records


def diversity_report(
    experiments: dict[str, str | Path], output_dir: str | Path, size: int = 4, max_step: int | None = 60
) -> dict:
    """Per experiment (title -> folder), :func:`source_diversity` of its rollouts; writes the report files."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    panels = {}
    for title, folder in experiments.items():
        records = read_rollouts(folder, max_step)
        if not records:
            raise ValueError(f"no rollouts of {sorted({m for m, _ in SOURCES})} under {folder}/runs.")
        per = source_diversity(records, size)
        panels[title] = {label: per[label] for label in SOURCES.values() if label in per}
    report = {
        "experiments": {t: str(f) for t, f in experiments.items()},
        "group_size": size,
        "steps": f"1..{max_step}" if max_step else "all",
        "sources": panels,
    }
    write_json_atomic(output_dir / "diversity.json", report)
    plot_source_diversity(panels, output_dir / "diversity.png")
    (output_dir / "diversity.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    size = report["group_size"]
    lines = [
        f"Groups of {size} rows of one source and prompt (steps {report['steps']}), mean over groups. Coherent: a "
        "correct derivation from the problem's own operands; consistent: sound arithmetic from whatever numbers the "
        "chain starts with. Prefix agreement: the share of pairs of rows of a prompt still identical after 1 / 2 / 5 "
        "/ 20 characters.",
        "",
        "| experiment | rows | groups | coherent (%) | consistent (%) | correct answer (%) | distinct correct paths "
        "| distinct answers | distinct paths | agree @1 / @2 / @5 / @20 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, per in report["sources"].items():
        for label, d in per.items():
            pa = d["prefix_agreement"]
            lines.append(
                f"| {title} | {label} | {d['groups']} | {100 * d['coherent_share']:.1f} | "
                f"{100 * d['consistent_share']:.1f} | {100 * d['correct_share']:.1f} | "
                f"{d['distinct_correct_paths']:.2f} | {d['distinct_answers']:.2f} | {d['distinct_paths']:.2f} | "
                f"{pa[0]:.2f} / {pa[1]:.2f} / {pa[4]:.2f} / {pa[19]:.2f} |"
            )
    return "\n".join(lines) + "\n"
