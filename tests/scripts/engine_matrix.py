"""Run by tests/test_engine_matrix.py under `accelerate launch` with 2 CPU processes: every explorer backend and
CoDistill under one engine, at alpha 1, 0.5 and 0, one optimizer step each.

    engine_matrix.py WORKDIR ddp|fsdp2|zero2|zero3 TINY_DIR SERVER_URL [CONFIG ...]

CONFIG is `<backend>:<alpha>` with backend `server` (the fake vLLM server at SERVER_URL, started by the test),
`offline`, `local` or `codistill` (default: all twelve). One launch per engine keeps the cost of starting two
processes and the engine's set-up to one per engine; each configuration is a fresh trainer.

Engines are set up as the recipes set them up (recipes/accelerate_configs): FSDP2 with cpu-RAM-efficient loading
(every process but the first loads zeros, FSDP broadcasts the first's weights), DeepSpeed ZeRO-2 and ZeRO-3; the
test-only shims (fsdp2_cpu_shim.py, deepspeed_cpu_shim.py) let accelerate take those paths over gloo. Row counts are
unequal between the processes: S2L-PO runs G = 4 with 6 rows per process (a group split 2 + 2, explorer and learner
rows in different numbers on each process at alpha 0.5); CoDistill runs 2 rows per process (at alpha 0.5 one process
holds only small-model rows, the other only large-model rows). Clipping is on (`max_grad_norm` 0.05, the small model's
0.02): both models' gradients are larger, so each is clipped by its own norm; plain SGD at learning rate 1 makes the
step the clipped gradient itself. CoDistill trains the small model with the exact KL term (`kd_mode="full_kl"`,
`kd_coef` 50, so that it dominates the small model's gradient): at alpha 0.5 one process computes it over no positions
while the other does (the sampled-token reward's metric under the sharded engines: tests/test_codistill_distributed.py).

Each rank writes rank<i>.json: per configuration, the weights of every model at the first step (after the engine was
set up; gathered, per parameter: sum and sum of squares), the explorer's calls (state before, request, rows), the
rows the learner and the small model sampled, the logged norms and losses, the full weights after the step and how far
each trained model moved; for CoDistill under ZeRO-3, how many parameter elements were gathered while the large model
generated.
"""

import gc
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState
from transformers import AutoTokenizer, TrainerCallback

from s2l_trl import S2LConfig, S2LTrainer
from s2l_trl.codistill import CoDistillConfig, CoDistillTrainer
from s2l_trl.devtools.tiny import build_tiny_setup, tiny_training_kwargs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from trainer_utils import digit_reward, tiny_dataset  # noqa: E402

ENGINE = "ddp"  # set by main
BACKENDS = ("server", "offline", "local", "codistill")
ALPHAS = (1.0, 0.5, 0.0)
MAX_GRAD_NORM, SMALL_MAX_GRAD_NORM = 0.05, 0.02
EXPLORER_TOKENS = 4


def install_shim(engine: str) -> None:
    """Before accelerate's state exists: the test-only shim that lets accelerate take the engine's path on CPU."""
    if engine == "fsdp2":
        from fsdp2_cpu_shim import install

        install()
        # What `accelerate launch` with recipes/accelerate_configs/fsdp.yaml puts in every process's environment from
        # the start: Transformers then loads every model after the first process's with zeros (cpu-RAM-efficient
        # loading), for FSDP to broadcast the first process's weights.
        os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    elif engine in ("zero2", "zero3"):
        from deepspeed_cpu_shim import install

        install()


def explorer_settings(backend: str, work: Path, tiny, server_url: str) -> dict:
    """The `S2LConfig` fields of an explorer backend (also what the test rebuilds the explorer from)."""
    return {
        "server": dict(explorer_mode="server", explorer_server_base_url=server_url),
        "offline": dict(explorer_mode="offline", explorer_rollouts=str(work / "rollouts.jsonl")),
        "local": dict(explorer_mode="local", explorer_model=str(tiny["explorer"])),
    }[backend] | {"explorer_max_tokens": EXPLORER_TOKENS}


def engine_kwargs() -> dict:
    def deepspeed(stage: int) -> dict:
        zero = {"stage": stage}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        return {
            "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }

    if ENGINE == "fsdp2":
        fsdp = {"fsdp_version": 2, "reshard_after_forward": True, "cpu_ram_efficient_loading": True}
        return {"fsdp": "full_shard", "fsdp_config": fsdp}
    if ENGINE in ("zero2", "zero3"):
        return {"deepspeed": deepspeed(int(ENGINE[-1]))}
    return {}


def write_rollouts(tiny, path: Path, per_prompt: int = 6) -> None:
    """Offline rollouts with distinct stored completions per prompt (so repeated draws show), with more or fewer
    digits (so that their rewards, and the learner's gradient at alpha 1, are not all equal)."""
    tok = AutoTokenizer.from_pretrained(tiny["learner"])
    lines = []
    for row in tiny_dataset(tiny):
        for k in range(per_prompt):
            ids = tok(f"{k} is {'7' * k}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            lines.append(
                {
                    "prompt_id": row["prompt_id"],
                    "prompt": row["prompt"],
                    "prompt_ids": [],
                    "response": "x",
                    "response_ids": ids,
                    "small_model_log_probs": [-1.0] * len(ids),
                    "reward": 0.0,
                    "is_correct": False,
                    "data_source": "tiny-addition",
                    "ground_truth": row["solution"],
                }
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


# ------------------------------------------------------------------ gathered weights, whatever the engine
def full_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of `module`, whole on every process (a collective under FSDP2 and ZeRO-3)."""
    params = dict(module.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().clone() for name, p in params.items()}
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for name, p in params.items()}


def fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: [float(t.double().sum()), float(t.double().square().sum())] for name, t in sorted(tensors.items())}


def final_state(trainer) -> dict:
    """The trained weights, gathered onto the main process (empty elsewhere)."""
    if ENGINE == "fsdp2":
        return trainer.accelerator.get_state_dict(trainer.model) or {}
    if ENGINE == "zero3":
        return trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}
    return trainer.model.state_dict()


class FirstStepWeights(TrainerCallback):
    """At the first optimizer step (the engine is set up by then): every model's weights, gathered."""

    def __init__(self, models: dict):
        self.models, self.full = models, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.full is None:
            self.full = {role: full_parameters(model()) for role, model in self.models.items()}


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> float:
    """How far a model moved in the step: the norm of the change of its (untied) parameters."""
    return float(torch.stack([(after[prefix + k] - v).double().norm() for k, v in before.items()]).norm())


# ------------------------------------------------------------------ one configuration
def run(backend: str, alpha: float, work: Path, tiny, server_url: str) -> dict:
    codistill = backend == "codistill"
    common = dict(
        output_dir=str(work / "out" / f"{backend}-{alpha}"),
        max_steps=1,
        mix_schedule="constant",
        mix_alpha_start=alpha,
        max_completion_length=EXPLORER_TOKENS,
        per_device_train_batch_size=2 if codistill else 6,
        max_grad_norm=MAX_GRAD_NORM,
        # Plain SGD: the step is the clipped gradient itself (Adam's first step hardly depends on the gradient's
        # scale), so the weights after it show which norm each model was clipped by.
        optim="sgd",
        learning_rate=1.0,
        **engine_kwargs(),
    )
    if codistill:
        kd = dict(kd_mode="full_kl", kd_coef=50.0)
        args = CoDistillConfig(
            small_model=str(tiny["explorer"]),
            small_max_grad_norm=SMALL_MAX_GRAD_NORM,
            **kd,
            **tiny_training_kwargs(**common),
        )
        trainer = CoDistillTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
        models = {"large": lambda: trainer.codistill.large, "small": lambda: trainer.codistill.small}
    else:
        explorer = explorer_settings(backend, work, tiny, server_url)
        args = S2LConfig(**tiny_training_kwargs(**common, **explorer))
        trainer = S2LTrainer(str(tiny["learner"]), [digit_reward], args=args, train_dataset=tiny_dataset(tiny))
        models = {"learner": lambda: trainer.accelerator.unwrap_model(trainer.model)}
        if backend == "local":
            models["explorer"] = lambda: trainer.explorer.model

    calls: list[dict] = []
    explorer = trainer.explorer
    generate = explorer.generate

    def recording(prompt_ids, n, inputs=None):
        before = explorer.state_dict() if hasattr(explorer, "state_dict") and not codistill else None
        out = generate(prompt_ids, n, inputs=inputs)
        calls.append(
            {
                "state": before,
                "prompt_ids": [list(p) for p in prompt_ids],
                "n": n,
                "inputs": inputs,
                "ids": [list(c) for c in out.completion_ids],
            }
        )
        return out

    explorer.generate = recording
    rounds: list[dict] = []
    generate_and_score = trainer._generate_and_score_completions

    def scored(inputs):
        out = generate_and_score(inputs)
        if trainer.model.training:
            ids, mask = out["completion_ids"], out["completion_mask"].bool()
            rounds.append(
                {
                    "is_explorer": out["s2l_is_explorer"].tolist() if "s2l_is_explorer" in out else None,
                    "rows": [row[m].tolist() for row, m in zip(ids, mask)],
                }
            )
        return out

    trainer._generate_and_score_completions = scored
    gathered: list[int] = []
    if codistill and ENGINE == "zero3":
        # How many parameter elements are whole on this process while the large model generates its rows.
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        large = trainer.codistill.large
        large_generate = large.generate

        def counting(*a, **k):
            available = ZeroParamStatus.AVAILABLE
            gathered.append(sum(p.ds_numel for p in trainer.codistill.parameters() if p.ds_status == available))
            return large_generate(*a, **k)

        large.generate = counting
    first = FirstStepWeights(models)
    trainer.add_callback(first)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history

    def logged(key: str) -> list[float]:
        return [h[key] for h in history if key in h]

    end = final_state(trainer)
    trained = {"large": "large.", "small": "small.", "learner": ""}
    result = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "weights": {role: fingerprint(tensors) for role, tensors in first.full.items()},
        # On the main process, which holds the gathered trained weights: each trained model's step (SGD at lr 1: its
        # clipped gradient).
        "moved": {r: moved(first.full[r], end, trained[r]) for r in first.full if r in trained and end},
        "calls": calls,
        "rounds": rounds,
        "after": {k: [float(v.double().sum()), float(v.double().square().sum())] for k, v in sorted(end.items())},
        "grad_norm": logged("grad_norm"),
        "large_norm": logged("codistill/grad_norm/large"),
        "small_norm": logged("codistill/grad_norm/small"),
        "kd_kl": logged("codistill/kd_kl"),
        "loss": logged("loss"),
        "learner_rows": logged("s2l/learner_rows_generated"),
        "gathered_while_large_generates": gathered,
        "module_numel": sum(p.ds_numel if hasattr(p, "ds_id") else p.numel() for p in trainer.model.parameters()),
    }
    if codistill:
        result["large_numel"] = sum(
            p.ds_numel if hasattr(p, "ds_id") else p.numel() for p in trainer.codistill.large.parameters()
        )
    # A fresh engine for the next configuration: drop this one's, and accelerate's state (the shims set it up again).
    trainer.close_explorer()
    trainer.accelerator.free_memory()
    return result


def main(workdir: str, engine: str, tiny_dir: str, server_url: str, configs: list[str]) -> None:
    global ENGINE
    ENGINE = engine
    install_shim(engine)
    # A collective mismatch fails within 3 minutes instead of gloo's default 30 (the group is made here, first).
    state = PartialState(cpu=True, timeout=timedelta(seconds=180))
    work = Path(workdir)
    tiny = build_tiny_setup(tiny_dir)  # built by the test: only read here
    if state.is_main_process:
        write_rollouts(tiny, work / "rollouts.jsonl")
    state.wait_for_everyone()
    wanted = configs or [f"{b}:{a}" for b in BACKENDS for a in ALPHAS]
    out = {"world_size": state.num_processes, "rank": state.process_index, "engine": ENGINE, "configs": {}}
    start = time.perf_counter()
    for config in wanted:
        backend, alpha = config.split(":")
        out["configs"][config] = run(backend, float(alpha), work, tiny, server_url)
        gc.collect()  # the trainer and its engine
        AcceleratorState._reset_state(reset_partial_state=False)
        state.wait_for_everyone()
    out["seconds"] = time.perf_counter() - start
    assert torch.distributed.is_initialized()
    (work / f"rank{state.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
