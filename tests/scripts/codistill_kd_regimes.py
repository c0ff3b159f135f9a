"""Does CoDistill's KD update pull the small model toward the large one, when the two start close and far apart?

The setting of issue 16 (case 6), through the real `CoDistillTrainer`: zero verifiable reward (only the KD term
trains the small model), the large model frozen (`learning_rate=0`), `kd_coef=1`. The distance is the reverse KL
`KL(small || large)` per token, exact over the vocabulary, averaged over tokens the small model samples for a fixed
set of prompts (same seed before and after). Pairs, from the tiny test models (`s2l_trl.devtools.tiny`):

* far: the large model is the width-64 tiny model taught the answer format (peaked), the small one the random
  width-32 tiny model (~6.6 nats/token apart);
* close: the small model is the same taught model with Gaussian noise on its weights (~0.1-0.3 nats/token).

    python tests/scripts/codistill_kd_regimes.py WORKDIR [--steps 20] [--seeds 0 1 2] [--baselines mean none]
        [--kd_modes token full_kl] [--out RUNS.jsonl --plot CURVES.png] [--replot RUNS.jsonl --plot CURVES.png]

prints one JSON line per run (with its `codistill/kd_kl` curve: the exact KL on each step's own rollouts), appends it
to `--out` as it finishes, and draws every run's curve into `--plot`. `tests/test_codistill.py` and
`tests/test_codistill_full_kl.py` import `build_pair` and `run` for their regime tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for trainer_utils


def build_pair(root: Path, regime: str, tiny: dict) -> tuple[Path, Path]:
    """`(large, small)` model folders of the regime, built once under `root`."""
    from s2l_trl.devtools.tiny import warm_start

    root = Path(root)
    teacher = root / "teacher"
    if not (teacher / "warm_start.done").exists():
        shutil.copytree(tiny["learner"], teacher, dirs_exist_ok=True)
        warm_start(teacher, steps=60, seed=3)
        (teacher / "warm_start.done").write_text("60")
    if regime == "far":
        return teacher, Path(tiny["explorer"])
    if regime != "close":
        raise ValueError(f"regime must be 'far' or 'close', got {regime!r}")
    noisy = root / "teacher_noisy"
    if not (noisy / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(teacher)
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.5 * p.std().clamp(min=1e-3))
        model.save_pretrained(noisy)
        shutil.copy(teacher / "tokenizer.json", noisy / "tokenizer.json")
        for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
            if (teacher / name).exists():
                shutil.copy(teacher / name, noisy / name)
    return teacher, noisy


@torch.no_grad()
def reverse_kl(small, large, tokenizer, prompts: list[list[int]], seed: int = 1234, max_new_tokens: int = 8) -> float:
    """Mean exact `KL(small || large)` per token over completions the small model samples for `prompts`."""
    from trl.trainer.utils import pad

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ids = pad([torch.tensor(p) for p in prompts], padding_value=tokenizer.pad_token_id, padding_side="left")
        attention = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], padding_value=0, padding_side="left")
        out = small.generate(
            input_ids=ids, attention_mask=attention, do_sample=True, max_new_tokens=max_new_tokens, top_k=0, top_p=1.0
        )
    finally:
        torch.random.set_rng_state(state)
    width = ids.size(1)
    completion = out[:, width:]
    is_eos = completion == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = torch.cat([attention, (~after_eos).long()], dim=1)
    full = out.clone()
    full[mask == 0] = tokenizer.pad_token_id

    def log_probs(model):
        return torch.log_softmax(model(input_ids=full, attention_mask=mask).logits[:, width - 1 : -1].float(), -1)

    ls, ll = log_probs(small), log_probs(large)
    kl = (ls.exp() * (ls - ll)).sum(-1)
    keep = ~after_eos
    return float((kl * keep).sum() / keep.sum())


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def run(workdir: Path, tiny: dict, regime: str, kd_baseline: str = "mean", seed: int = 0, steps: int = 20, **over):
    """Train the small model by the KD term alone for `steps` steps; return the reverse KL before and after."""
    from trainer_utils import tiny_dataset
    from transformers import AutoTokenizer

    from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer
    from s2l_trl.devtools.tiny import tiny_training_kwargs

    large, small = build_pair(Path(workdir) / "pairs", regime, tiny)
    tokenizer = AutoTokenizer.from_pretrained(large)
    dataset = tiny_dataset(tiny)
    prompts = [
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for row in dataset.select(range(32))
    ]
    prompts = [list(p) for p in prompts for _ in range(2)]
    settings = dict(
        max_steps=steps,
        learning_rate=0.0,  # the large model stays where it is
        small_learning_rate=1e-3,
        kd_coef=1.0,
        kd_baseline=kd_baseline,
        lr_scheduler_type="constant",
        per_device_train_batch_size=16,
        max_completion_length=8,
        seed=seed,
    )
    settings.update(over)
    name = f"out-{regime}-{settings.get('kd_mode', 'token')}-{kd_baseline}-{seed}"
    args = CoDistillConfig(
        small_model=str(small), **tiny_training_kwargs(output_dir=str(Path(workdir) / name), **settings)
    )
    trainer = CoDistillTrainer(str(large), [zero_reward], args=args, train_dataset=dataset)
    before = reverse_kl(trainer.small_model, trainer.large_model, tokenizer, prompts)
    large_before = [p.detach().clone() for p in trainer.large_model.parameters()]
    trainer.train()
    after = reverse_kl(trainer.small_model, trainer.large_model, tokenizer, prompts)
    frozen = all(torch.equal(a, b) for a, b in zip(large_before, trainer.large_model.parameters()))
    curve = [[h["step"], h["codistill/kd_kl"]] for h in trainer.state.log_history if "codistill/kd_kl" in h]
    return {
        "regime": regime,
        "kd_mode": args.kd_mode,
        "kd_baseline": kd_baseline,
        "seed": seed,
        "steps": steps,
        "before": before,
        "after": after,
        "large_frozen": frozen,
        "kd_kl_curve": curve,
    }


def plot(results: list[dict], path: Path) -> None:
    """One panel per regime: each run's `codistill/kd_kl` per step, one colour per KD update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r["regime"] for r in results}, key=["far", "close"].index)
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4), squeeze=False)
    colours, labelled = {}, set()
    for ax, regime in zip(axes[0], regimes):
        for r in (r for r in results if r["regime"] == regime):
            label = f"{r['kd_mode']}" + (f" (baseline {r['kd_baseline']})" if r["kd_mode"] == "token" else "")
            colour = colours.setdefault(label, f"C{len(colours)}")
            steps, kl = zip(*r["kd_kl_curve"])
            ax.plot(steps, kl, color=colour, alpha=0.8, label=None if (regime, label) in labelled else label)
            labelled.add((regime, label))
        ax.set_title(f"{regime}: KL(small || large) per token, large model frozen")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("codistill/kd_kl (nats)")
        values = [v for r in results if r["regime"] == regime for _, v in r["kd_kl_curve"]]
        if max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baselines", nargs="+", default=["mean", "none"])
    parser.add_argument("--regimes", nargs="+", default=["far", "close"])
    parser.add_argument("--small_learning_rate", type=float, default=1e-3)
    parser.add_argument("--kd_modes", nargs="+", default=["token"], choices=["token", "sequence", "full_kl"])
    parser.add_argument("--out", type=Path, help="JSON lines file the runs are appended to as they finish")
    parser.add_argument("--plot", type=Path, help="PNG of every run's codistill/kd_kl curve")
    parser.add_argument("--replot", type=Path, help="draw --plot from this --out file of earlier runs, run nothing")
    a = parser.parse_args()
    if a.replot:
        plot([json.loads(line) for line in a.replot.read_text().splitlines() if line.strip()], a.plot)
        return
    torch.set_num_threads(1)
    from s2l_trl.devtools.tiny import build_tiny_setup

    tiny = build_tiny_setup(Path(a.workdir) / "tiny")
    from s2l_trl.miniature.numerics import environment_record

    results = []
    for regime in a.regimes:
        for mode in a.kd_modes:
            for baseline in a.baselines if mode == "token" else ["mean"]:  # the baseline is the token reward's
                for seed in a.seeds:
                    result = run(
                        Path(a.workdir),
                        tiny,
                        regime,
                        baseline,
                        seed,
                        a.steps,
                        small_learning_rate=a.small_learning_rate,
                        kd_mode=mode,
                    )
                    result["environment"] = environment_record()
                    results.append(result)
                    print(json.dumps({k: v for k, v in result.items() if k != "environment"}), flush=True)
                    if a.out:
                        with a.out.open("a") as f:
                            f.write(json.dumps(result) + "\n")
    if a.plot:
        plot(results, a.plot)


if __name__ == "__main__":
    main()
