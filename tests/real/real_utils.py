"""Helpers of the real-model tier: MATH500 subsets as training data, short S2L-PO runs on SmolLM2 that record the
explorer tokens and the learner's view of them, and an independent computation of the top-p nucleus mass.

Run as a script, it performs one such run and writes its record as JSON (the in-process `vllm` explorer is checked in
a child process, so that vLLM's state never touches the pytest process):

    python tests/real/real_utils.py RESULT.json CONFIG.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPERATURE = 0.8  # learner and explorer alike: at top-p 1 their distributions are then the same
COMPLETION_TOKENS = 24


def math500_rows(shared_eval_data: Path, n: int) -> list[tuple[int, dict[str, Any]]]:
    """The ``n`` shortest MATH500 problems (short prompts keep the CPU steps cheap), with their line numbers."""
    rows = [json.loads(line) for line in (shared_eval_data / "math500.jsonl").read_text().splitlines() if line]
    return sorted(enumerate(rows), key=lambda item: (len(item[1]["question"]), item[0]))[:n]


def math500_subset(shared_eval_data: Path, path: Path, n: int) -> Path:
    """The ``n`` shortest MATH500 problems as a training file (`prompt`, `solution`, `prompt_id`)."""
    with open(path, "w") as f:
        for i, row in math500_rows(shared_eval_data, n):
            prompt = row["question"] + "\nPut the final answer in \\boxed{}."
            f.write(json.dumps({"prompt": prompt, "solution": str(row["answer"]), "prompt_id": f"math500-{i}"}) + "\n")
    return path


def read_rollouts(path: Path) -> list[dict[str, Any]]:
    """The lines of a rollout file written by `s2l-sample`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def train_dataset(path: Path, **data_overrides):
    """The data set exactly as `s2l-train` builds it from ``path`` (`s2l_trl.data.load_train_dataset`)."""
    from s2l_trl.data import PromptDataArguments, load_train_dataset

    return load_train_dataset(PromptDataArguments(dataset_name=str(path), **data_overrides))


def step_kwargs(output_dir: Path, **overrides) -> dict[str, Any]:
    """S2LConfig keyword arguments of one short alpha-1 step on SmolLM2 (G = 2, one prompt, float32, CPU)."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "learning_rate": 1e-6,
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": COMPLETION_TOKENS,
        "max_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        "temperature": TEMPERATURE,
        "explorer_temperature": TEMPERATURE,
        "mix_schedule": "constant",
        "mix_steps": 1,
        "explorer_importance_sampling": "token_truncate",
        "explorer_importance_sampling_clip_max": None,
        "dataloader_num_workers": 0,
        **overrides,
    }


def nucleus(logits, top_p: float):
    """``(log mass of the top-p nucleus, kept mask)`` per row of ``logits`` (already divided by the temperature):
    tokens sorted by probability are kept while the mass before them is <= top_p (vLLM's and transformers' rule, the
    token that crosses top_p included). Written here independently of the library's own warping."""
    import torch

    probs = torch.softmax(logits.double(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = before <= top_p
    mass = (sorted_probs * keep_sorted).sum(-1)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return mass.log(), keep


class _RoundScored(Exception):
    """Raised once the first mixed round is scored: what the checks need is known, the optimizer step is not."""


def record_step(model_path: str, dataset_path: str, config: dict[str, Any], data: dict[str, Any] | None = None):
    """Run the first round of training with ``config`` (S2LConfig keyword arguments) up to its explorer terms (the
    optimizer step is skipped) and return what the explorer rows looked like: per explorer token the learner's
    log-prob (TRL's, at generation time), the explorer's, the learner's nucleus log mass at the explorer's top-p (our
    own forward pass) and whether the token lies in that nucleus; and the S2L metrics of the round."""
    import torch

    from s2l_trl import S2LConfig, S2LTrainer
    from s2l_trl.rewards import accuracy_reward

    top_p = config.get("explorer_top_p", 0.95)
    temperature = config.get("temperature", 1.0)
    tokens: list[dict[str, float]] = []
    rows: list[dict[str, Any]] = []

    class RecordingTrainer(S2LTrainer):
        def _weigh_explorer_tokens(self, output, learner_logps, explorer_logps, is_explorer):
            with torch.no_grad():
                for i in torch.nonzero(is_explorer).flatten().tolist():
                    prompt = output["prompt_ids"][i][output["prompt_mask"][i].bool()].tolist()
                    mask = output["completion_mask"][i].bool()
                    completion = output["completion_ids"][i][mask].tolist()
                    ids = torch.tensor([prompt + completion], device=self.model.device)
                    logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
                    log_mass, keep = nucleus(logits, top_p)
                    own = torch.log_softmax(logits.double(), -1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
                    rows.append({"prompt_ids": prompt, "completion_ids": completion})
                    for t, token in enumerate(completion):
                        tokens.append(
                            {
                                "learner": float(learner_logps[i][mask][t]),
                                "explorer": float(explorer_logps[i][mask][t]),
                                "own": float(own[t]),
                                "log_mass": float(log_mass[t]),
                                "in_nucleus": bool(keep[t, token]),
                            }
                        )
            return super()._weigh_explorer_tokens(output, learner_logps, explorer_logps, is_explorer)

        def _explorer_off_policy_terms(self, output, rnd, is_explorer):
            super()._explorer_off_policy_terms(output, rnd, is_explorer)
            raise _RoundScored

    dataset = train_dataset(Path(dataset_path), **(data or {}))
    trainer = RecordingTrainer(model_path, [accuracy_reward], args=S2LConfig(**config), train_dataset=dataset)
    try:
        trainer.train()
    except _RoundScored:
        pass
    else:
        raise AssertionError("the run scored no mixed round")
    finally:
        trainer.close_explorer()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("s2l/") and v}
    return {"tokens": tokens, "rows": rows, "metrics": metrics}


def summarize(record: dict[str, Any]) -> dict[str, float]:
    """Means over the explorer tokens: the gap (learner - explorer), the predicted gap (log nucleus mass), the IS
    weight exp(gap), the largest per-token mismatch of the prediction, and the share of tokens outside the nucleus."""
    tokens = [t for t in record["tokens"] if math.isfinite(t["explorer"])]
    n = len(tokens)
    gap = [t["learner"] - t["explorer"] for t in tokens]
    return {
        "tokens": n,
        "gap": sum(gap) / n,
        "predicted_gap": sum(t["log_mass"] for t in tokens) / n,
        "is_weight": sum(math.exp(g) for g in gap) / n,
        "max_token_error": max(abs(g - t["log_mass"]) for g, t in zip(gap, tokens)),
        "outside_nucleus": sum(not t["in_nucleus"] for t in tokens) / n,
        "own_vs_trl": max(abs(t["own"] - t["learner"]) for t in tokens),
    }


if __name__ == "__main__":
    result_path, config_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(config_path).read_text())
    out = record_step(spec["model"], spec["dataset"], spec["config"], spec.get("data"))
    Path(result_path).write_text(json.dumps(out))
