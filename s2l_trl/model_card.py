"""Model cards for S2L-PO checkpoints: TRL's card plus the run's S2L-PO provenance and the paper citation.

TRL writes a card from `trl/templates/lm_model_card.md` in `_BaseTrainer.create_model_card` (base model, data set,
W&B/Trackio links, framework versions, the trainer's `_paper` citation). S2L-PO keeps that card as it is and adds
what a reader needs to know which run produced the weights:

- the card metadata gets the `s2l-po` tag and an `s2l_po:` block (explorer id and mode, schedule, T_mix, alpha
  start/end, G, the explorer sampling settings, the explorer and learner importance-sampling policies, the advantage
  grouping), so the Hub can filter on it;
- the text gets an "S2L-PO provenance" section with the same facts and the resulting explorer rows per step;
- the citations get the S2L-PO paper (and the GRPO one it builds on, which TRL's template would otherwise carry).

`S2LTrainer` uses it with::

    _paper = S2L_PAPER

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        create_s2l_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

from .schedule import mix_alpha, split_group

S2L_PAPER_TITLE = "Smaller Models are Natural Explorers for Policy-Level Diversity in GRPO"
S2L_PAPER_ID = "2605.30789"

# Authors and arXiv id as listed on the arXiv/ICML 2026 pages of the paper.
S2L_CITATION = textwrap.dedent("""\
    @inproceedings{ren2026smaller,
        title        = {{Smaller Models are Natural Explorers for Policy-Level Diversity in GRPO}},
        author       = {Yiming Ren and Yiran Xu and Zicheng Lin and Chufan Shi and Yukang Chen and Dingdong Wang and Tianhe Wu and Junjie Wang and Yujiu Yang and Yu Qiao and Ruihang Chu},
        booktitle    = {Proceedings of the 43rd International Conference on Machine Learning},
        series       = {ICML},
        year         = 2026,
        eprint       = {arXiv:2605.30789},
    }""")

# The shape `_BaseTrainer.create_model_card` reads from a trainer's `_paper` class attribute.
S2L_PAPER = {"title": S2L_PAPER_TITLE, "id": S2L_PAPER_ID, "citation": S2L_CITATION}

GRPO_CITATION = textwrap.dedent("""\
    @article{shao2024deepseekmath,
        title        = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},
        author       = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo},
        year         = 2024,
        eprint       = {arXiv:2402.03300},
    }""")

S2L_TAG = "s2l-po"
SECTION_TITLE = "## S2L-PO provenance"


def s2l_model_card_metadata(args) -> dict[str, Any]:
    """The S2L-PO facts of a run, from its `S2LConfig`, as plain YAML-able values (the card's `s2l_po:` block)."""
    meta: dict[str, Any] = {
        "explorer_model": args.explorer_model,
        "explorer_mode": args.explorer_mode,
        "mix_schedule": args.mix_schedule,
        "mix_steps": args.mix_steps,
        "mix_alpha_start": args.mix_alpha_start,
        "mix_alpha_end": args.mix_alpha_end,
        "num_generations": args.num_generations,
        "explorer_temperature": args.explorer_temperature,
        "explorer_top_p": args.explorer_top_p,
        "explorer_top_k": args.explorer_top_k,
        "explorer_max_tokens": args.explorer_max_tokens,
        "explorer_importance_sampling": args.explorer_importance_sampling,
        "explorer_importance_sampling_clip_min": args.explorer_importance_sampling_clip_min,
        "explorer_importance_sampling_clip_max": args.explorer_importance_sampling_clip_max,
        "explorer_off_policy_mask": args.explorer_off_policy_mask,
        "advantage_grouping": args.advantage_grouping,
        # The learner's own rows keep TRL's vLLM importance sampling; record it next to the explorer's policy.
        "learner_importance_sampling": (
            args.vllm_importance_sampling_mode if args.use_vllm and args.vllm_importance_sampling_correction else "none"
        ),
        "loss_type": args.loss_type,
        "beta": args.beta,
        "paper": f"arXiv:{S2L_PAPER_ID}",
    }
    if args.explorer_mode == "server":
        meta["explorer_server_base_url"] = args.explorer_server_base_url
    if args.explorer_mode == "offline":
        meta["explorer_rollouts"] = args.explorer_rollouts
    return meta


def explorer_rows_per_step(args, max_listed: int = 12) -> list[tuple[int, float, int]]:
    """`(step, alpha, G_w)` for the first steps of the run's named schedule, until (and including) `G_w = 0`."""
    rows = []
    for step in range(1, min(args.mix_steps + 1, max_listed) + 1):
        alpha = mix_alpha(step, args.mix_schedule, args.mix_steps, args.mix_alpha_start, args.mix_alpha_end)
        rows.append((step, alpha, split_group(alpha, args.num_generations)[0]))
    return rows


def s2l_model_card_section(args) -> str:
    """The markdown "S2L-PO provenance" section of the card."""
    meta = s2l_model_card_metadata(args)
    explorer = meta["explorer_model"] or "(custom explorer object)"
    lines = [
        SECTION_TITLE,
        "",
        f"Trained with S2L-PO ([{S2L_PAPER_TITLE}](https://huggingface.co/papers/{S2L_PAPER_ID})): for the first "
        f"`T_mix = {args.mix_steps}` optimizer steps, `G_w = ceil(alpha_i * G)` of the `G = {args.num_generations}` "
        "completions of every GRPO group were sampled by a frozen smaller explorer model and scored and optimised "
        "like the learner's own; afterwards training was plain on-policy GRPO.",
        "",
        "| | |",
        "|---|---|",
        f"| Explorer | `{explorer}` ({meta['explorer_mode']}) |",
        f"| Schedule | `{args.mix_schedule}`, alpha {args.mix_alpha_start:g} -> {args.mix_alpha_end:g} over "
        f"T_mix = {args.mix_steps} steps |",
        f"| Explorer sampling | temperature {args.explorer_temperature:g}, top-p {args.explorer_top_p:g}"
        f"{'' if args.explorer_top_k is None else f', top-k {args.explorer_top_k}'}, "
        f"max tokens {args.explorer_max_tokens} |",
        f"| Explorer importance sampling | `{args.explorer_importance_sampling}`"
        + (
            ""
            if args.explorer_importance_sampling == "none"
            else f" (clip min {args.explorer_importance_sampling_clip_min}, "
            f"max {args.explorer_importance_sampling_clip_max})"
        )
        + f"; off-policy mask on explorer rows: {args.explorer_off_policy_mask} |",
        f"| Learner importance sampling | `{meta['learner_importance_sampling']}` |",
        f"| Advantage grouping | `{args.advantage_grouping}` |",
        f"| Loss | `{args.loss_type}`, beta {args.beta:g} |",
    ]
    if args.explorer_mode == "offline":
        lines.append(f"| Offline rollouts | `{args.explorer_rollouts}` |")
    rows = explorer_rows_per_step(args)
    lines += [
        "",
        "Explorer rows per group (`G_w`) at the first optimizer steps: "
        + ", ".join(f"step {s}: {g}" for s, _, g in rows)
        + (", ..." if args.mix_steps + 1 > len(rows) else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def add_s2l_provenance(card, args):
    """Add the S2L-PO tag, metadata block, provenance section and citations to a `huggingface_hub.ModelCard`."""
    tags = list(card.data.tags or [])
    if S2L_TAG not in tags:
        tags.append(S2L_TAG)
    card.data.tags = tags
    card.data["s2l_po"] = s2l_model_card_metadata(args)

    text = card.text
    section = s2l_model_card_section(args)
    if SECTION_TITLE in text:  # idempotent: a second save (push_to_hub after save) replaces the section
        start = text.index(SECTION_TITLE)
        end = text.find("\n## ", start + 1)
        end_framework = text.find("\n### Framework versions", start + 1)
        ends = [e for e in (end, end_framework) if e != -1]
        end = min(ends) if ends else len(text)
        text = text[:start] + section + "\n" + text[end + 1 :]
    elif "### Framework versions" in text:
        text = text.replace("### Framework versions", section + "\n### Framework versions", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    extra = []
    if S2L_CITATION not in text:
        extra.append(f"Cite S2L-PO as:\n\n```bibtex\n{S2L_CITATION}\n```")
    if GRPO_CITATION not in text:
        extra.append(f"Cite GRPO as:\n\n```bibtex\n{GRPO_CITATION}\n```")
    if extra:
        text = text.rstrip("\n") + "\n\n" + "\n\n".join(extra) + "\n"
    card.text = text
    return card


def build_s2l_model_card(
    args,
    *,
    base_model: str | None = None,
    model_name: str | None = None,
    hub_model_id: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    wandb_url: str | None = None,
    trackio_url: str | None = None,
    comet_url: str | None = None,
):
    """TRL's model card (`trl.trainer.utils.generate_model_card`) for an S2L-PO run, with the provenance added.

    Pure: no trainer, no network. `create_s2l_model_card` is the trainer-facing variant.
    """
    from trl.trainer.utils import generate_model_card

    card = generate_model_card(
        base_model=base_model,
        model_name=model_name,
        hub_model_id=hub_model_id,
        dataset_name=dataset_name,
        tags=[S2L_TAG, *(tags or [])],
        wandb_url=wandb_url,
        trackio_url=trackio_url,
        comet_url=comet_url,
        trainer_name="S2L-PO",
        trainer_citation=S2L_CITATION,
        paper_title=S2L_PAPER_TITLE,
        paper_id=S2L_PAPER_ID,
    )
    return add_s2l_provenance(card, args)


def create_s2l_model_card(
    trainer, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
) -> None:
    """`create_model_card` for `S2LTrainer`: TRL's own card (links, versions, Hub ids), then the S2L-PO provenance.

    Runs TRL's `_BaseTrainer.create_model_card` unchanged (so W&B/Trackio/Comet links, `hf_jobs`/unsloth tags and
    the base-model detection stay TRL's), then rewrites `<output_dir>/README.md` with `add_s2l_provenance`.
    `Trainer.push_to_hub` calls `create_model_card` before uploading, so pushed cards carry the provenance too.
    """
    from huggingface_hub import ModelCard
    from trl.trainer.base_trainer import _BaseTrainer

    tags = [tags] if isinstance(tags, str) else list(tags or [])
    _BaseTrainer.create_model_card(trainer, model_name=model_name, dataset_name=dataset_name, tags=[S2L_TAG, *tags])
    if not trainer.is_world_process_zero():
        return
    path = os.path.join(trainer.args.output_dir, "README.md")
    card = ModelCard.load(path)
    add_s2l_provenance(card, trainer.args).save(path)


# ---------------------------------------------------------------------- CoDistill-GRPO
CODISTILL_TAG = "codistill"
CODISTILL_SECTION_TITLE = "## CoDistill-GRPO provenance"


def codistill_card_section(args, role: str) -> str:
    """The "CoDistill-GRPO provenance" section of the `role` (`"large"` or `"small"`) model's card."""
    other = "small" if role == "large" else "large"
    kd = f"`kd_mode={args.kd_mode}`, `kd_coef={args.kd_coef}`, `kd_clip={args.kd_clip}`"
    return "\n".join(
        [
            CODISTILL_SECTION_TITLE,
            "",
            f"This is the **{role}** model of a CoDistill-GRPO run (trained together with the {other} model, both in "
            "one module and one optimizer).",
            "",
            f"- small model: `{args.small_model}`",
            f"- small model's share of each group: schedule `{args.mix_schedule}`, alpha start "
            f"{args.mix_alpha_start}, end {args.mix_alpha_end}, T_mix {args.mix_steps}",
            f"- large model's importance weights pi_large / pi_small: `{args.explorer_importance_sampling}` "
            f"(bounds {args.explorer_importance_sampling_clip_min}, {args.explorer_importance_sampling_clip_max})",
            f"- small model's KD reward: {kd}",
            f"- G = {args.num_generations}; LR large {args.learning_rate}, small {args.small_lr}; schedule large "
            f"`{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}`, small `{args.small_scheduler}`",
        ]
    )


def codistill_small_model_card(args, base_model: str | None) -> str:
    """The small model's card: front matter, what it is, and the run's CoDistill settings."""
    front = ["---", "library_name: transformers", "tags:", "- trl", "- grpo", f"- {CODISTILL_TAG}"]
    if base_model and not os.path.isdir(base_model):
        front.append(f"base_model: {base_model}")
    front.append("---")
    body = [
        "",
        "# Small model of a CoDistill-GRPO run",
        "",
        "Trained with GRPO on its own rollouts, with reward = verifiable reward + kd_coef x KD reward from the large "
        "model (`s2l_trl.codistill.CoDistillTrainer`).",
        "",
        codistill_card_section(args, role="small"),
        "",
    ]
    return "\n".join(front + body)
