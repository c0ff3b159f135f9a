"""The explorer-thread race, at the level of single random draws (issue 17).

Before the fix, the miniature ran its in-process explorer in a background thread that sampled with torch's global
generator while the learner sampled with the same generator in the main thread. Two questions:

1. **Kernel level** (:func:`kernel_race`): when two threads call ``torch.multinomial`` (what ``generate`` samples with)
   on the global generator at the same time, does each call still consume its own contiguous block of the generator's
   stream, or can two calls be handed the same numbers? Two threads make ``calls`` calls each on the same
   probabilities; every output is looked up among the outputs of ``2 * calls`` calls made one after another from the
   same seed. An output found at a stream position no other call used is a call that got its own block; an output
   found nowhere, or a position used twice, would be shared or torn draws.
2. **Run level** (:func:`run_race`): in a real threaded S2L-PO run (with :class:`GlobalGeneratorExplorer`, the
   explorer of the time of the race), every ``torch.multinomial`` call is recorded (its
   thread, probabilities, output, and the generator state read just before and after it). Each call is then replayed
   on a private generator from candidate start states (the state it read, or the end of a call of the other thread
   that overlapped it in time); a call whose output is reproduced consumed a contiguous block starting there. Counted:
   calls reproduced, start states used twice (shared draws), learner calls whose block does not follow the previous
   learner call's (the explorer's draws cut in and moved the learner's stream), per step. The same is done on the
   foreground run of the same seed as a control. Each run is then repeated uninstrumented: the first step at which
   the repeat's losses or rewards differ.
3. **Outcome level** (:func:`seeds_by_mode`): final held-out accuracy of threaded and foreground S2L-PO over many
   seeds, with the seed-paired difference and Welch's test, to tell a real effect of the threaded mode from chance.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..jsonl import write_json_atomic
from . import rl_experiment, runs
from .family import Family
from .rl_experiment import run_one
from .settings import RLSettings
from .stats import paired_differences, welch


class GlobalGeneratorExplorer:
    """The in-process explorer as it was when the race happened (``LocalExplorer`` before commit 422fbe1): a frozen
    model sampled with ``generate``, i.e. with torch's *global* generator, which the learner samples with too. Kept
    here so that the race can be reproduced whatever the library's explorer does now. ``background``: whether the
    trainer runs it in a thread (the race) or in the foreground (where the trainer forks and seeds the generator per
    round, as it did then)."""

    def __init__(self, model_path, tokenizer, sampling, background: bool):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.runs_in_background = background
        eos = self.model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_token_id = tokenizer.pad_token_id

    def generate(self, prompt_ids, n, inputs=None):
        import torch
        from transformers import GenerationConfig

        from ..explorers.local import in_process_output, sampled_completions, warp_logits

        start = time.perf_counter()
        s = self.sampling
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            do_sample=True,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or 0,
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids),
            return_dict_in_generate=True,
            output_logits=True,
        )
        rows = [ids for ids in prompt_ids for _ in range(n)]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(r)) + list(r) for r in rows])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
        scores = warp_logits(torch.stack(out.logits, dim=1).float(), s.temperature, s.top_k, s.top_p)
        ids, logps = sampled_completions(out.sequences[:, width:], scores, self.eos_token_ids)
        return in_process_output(ids, logps, len(prompt_ids), start)


def global_generator_explorer(background: bool):
    """An ``explorer_factory`` for :func:`run_one`: the race-era explorer, threaded or in the foreground."""

    def build(model_path, tokenizer, sampling):
        return GlobalGeneratorExplorer(model_path, tokenizer, sampling, background)

    return build


def kernel_race(rows: int = 64, vocab: int = 266, calls: int = 400, seed: int = 0) -> dict:
    """Two threads sampling from torch's global generator at once: do their calls get disjoint blocks of its stream?"""
    import torch

    probs = torch.ones(rows, vocab)  # uniform: each call's output is a fingerprint of the numbers it drew
    torch.manual_seed(seed)
    serial = [tuple(torch.multinomial(probs, 1).squeeze(1).tolist()) for _ in range(2 * calls)]
    if len(set(serial)) != len(serial):
        raise RuntimeError("two serial calls gave the same output: raise `rows` so outputs identify their draws.")
    position = {out: i for i, out in enumerate(serial)}
    outputs: dict[str, list[tuple[int, ...]]] = {"A": [], "B": []}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        torch.set_num_threads(1)
        barrier.wait()  # start together, so that the calls overlap
        for _ in range(calls):
            outputs[name].append(tuple(torch.multinomial(probs, 1).squeeze(1).tolist()))

    torch.manual_seed(seed)
    threads = [threading.Thread(target=work, args=(name,)) for name in outputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = [(position.get(out), name) for name, outs in outputs.items() for out in outs]
    used = Counter(p for p, _ in found if p is not None)
    stream = sorted((p, name) for p, name in found if p is not None)
    return {
        "torch": torch.__version__,
        "calls_per_thread": calls,
        "rows_x_vocab": [rows, vocab],
        "calls_not_found_in_serial_stream": sum(p is None for p, _ in found),
        "positions_used_twice": sum(1 for c in used.values() if c > 1),
        "positions_used": len(used),
        "thread_switches_along_stream": sum(1 for a, b in zip(stream, stream[1:]) if a[1] != b[1]),
        "first_positions_of_A": [p for p, name in found if name == "A"][:12],
    }


@dataclass
class Draw:
    thread: str  # "main" or "worker" (the explorer's background thread)
    source: str  # "learner", "explorer" or "eval" (held-out evaluation, which reseeds a forked generator on purpose)
    step: int  # the optimizer step being generated for (1-based)
    index: int
    t0: float
    t1: float
    probs: object  # torch.Tensor
    output: object  # torch.Tensor
    before: object  # torch.ByteTensor (generator state read just before the call)
    after: object


class DrawRecorder:
    """Records every ``torch.multinomial`` call on the global generator while active (``generate`` samples with it),
    tagged with its thread, its source (learner, explorer or evaluation) and its optimizer step."""

    def __init__(self) -> None:
        self.draws: list[Draw] = []
        self.step = 1
        self._evaluating = False
        self._local = threading.local()  # .explorer: inside RecordingExplorer.generate, in this thread
        self._lock = threading.Lock()  # guards the list only; the draws themselves run unguarded, as in a real run
        self._patches: list[tuple[object, str, object]] = []

    def _patch(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        self._patches.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self) -> DrawRecorder:
        import torch

        def multinomial(original):
            def recorded(probs, num_samples, replacement=False, *, generator=None, out=None):
                if generator is not None or out is not None:
                    return original(probs, num_samples, replacement, generator=generator, out=out)
                t0 = time.perf_counter()
                before = torch.get_rng_state()
                result = original(probs, num_samples, replacement)
                after = torch.get_rng_state()
                t1 = time.perf_counter()
                thread = "main" if threading.current_thread() is threading.main_thread() else "worker"
                source = "explorer" if getattr(self._local, "explorer", False) else "learner"
                source = "eval" if self._evaluating and thread == "main" else source
                copy = (probs.detach().clone(), result.clone(), before, after)
                with self._lock:
                    self.draws.append(Draw(thread, source, self.step, len(self.draws), t0, t1, *copy))
                return result

            return recorded

        def explorer_generate(original):
            def tagged(explorer, *args, **kwargs):
                self._local.explorer = True
                try:
                    return original(explorer, *args, **kwargs)
                finally:
                    self._local.explorer = False

            return tagged

        def evaluate(original):
            # Held-out evaluation reseeds a forked generator with the run's seed each time (the same start state at
            # every evaluation, by design): its draws are tagged so that they are not mistaken for shared draws.
            def tagged(*args, **kwargs):
                self._evaluating = True
                try:
                    return original(*args, **kwargs)
                finally:
                    self._evaluating = False

            return tagged

        def flush(original):
            # The rollout recorder flushes once per optimizer step: the next draws belong to the next step.
            def counted(recorder, step):
                self.step = step + 1
                return original(recorder, step)

            return counted

        self._patch(torch, "multinomial", multinomial)
        self._patch(runs.RecordingExplorer, "generate", explorer_generate)
        self._patch(rl_experiment, "evaluate", evaluate)  # the name run_one calls
        self._patch(runs.RolloutRecorder, "flush", flush)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches = []


def _replay(state, draw: Draw):
    import torch

    g = torch.Generator()
    g.set_state(state)
    out = torch.multinomial(draw.probs, draw.output.shape[-1], generator=g)
    return torch.equal(out, draw.output), g.get_state()


def _decoys(count: int = 3) -> list:
    import torch

    return [torch.Generator().manual_seed(10**9 + k).get_state() for k in range(count)]


def reconstruct(draws: list[Draw]) -> dict:
    """Where in the generator's stream each recorded call drew from (see the module docstring, point 2).

    A call whose output is also reproduced from unrelated (decoy) generator states says nothing about where it drew
    (its distribution was nearly one-hot, so any numbers give the same token): it is counted as *uninformative* and
    left out of the shared-draw and cut-in counts, which use informative calls only.
    """
    decoys = _decoys()
    by_thread: dict[str, list[Draw]] = {}
    for d in draws:
        by_thread.setdefault(d.thread, []).append(d)
    informative = {d.index: not any(_replay(s, d)[0] for s in decoys) for d in draws}
    start: dict[int, bytes] = {}
    end: dict[int, object] = {}
    came_after: dict[int, int | None] = {}  # call index -> the other thread's call its block follows (None: its own)
    pending = sorted(draws, key=lambda d: d.t0)
    progress = True
    while pending and progress:
        progress = False
        left = []
        for d in pending:
            others = [
                o for name, ds in by_thread.items() if name != d.thread for o in ds if o.t0 <= d.t1 and o.t1 >= d.t0
            ]
            candidates = [(d.before, None)]
            candidates += [(end[o.index], o.index) for o in others if o.index in end]
            candidates += [(o.after, o.index) for o in others]
            for state, after in candidates:
                ok, finish = _replay(state, d)
                if ok:
                    start[d.index], end[d.index], came_after[d.index] = bytes(state.numpy()), finish, after
                    progress = True
                    break
            else:
                left.append(d)
        pending = left
    known = [d for d in draws if informative[d.index] and d.index in start]
    train_starts = Counter(start[d.index] for d in known if d.source != "eval")
    per_source = {}
    for source in ("learner", "explorer", "eval"):
        ds = sorted((d for d in draws if d.source == source), key=lambda d: d.t0)
        if not ds:
            continue
        # Consecutive calls of one source within a step whose blocks are not adjacent in the stream: the other
        # source's draws landed between them, so every later draw of this source is moved.
        displaced = [
            d
            for p, d in zip(ds, ds[1:])
            if p.step == d.step and p.index in end and start.get(d.index) != bytes(end[p.index].numpy())
        ]
        per_source[source] = {
            "calls": len(ds),
            "threads": sorted({d.thread for d in ds}),
            "informative_calls": sum(informative[d.index] for d in ds),
            "reproduced_from_one_contiguous_block": sum(d.index in start for d in ds),
            "informative_and_reproduced": sum(informative[d.index] and d.index in start for d in ds),
            "calls_not_adjacent_to_the_previous_call_of_their_step": len(displaced),
            "steps_with_such_calls": sorted({d.step for d in displaced}),
        }
    return {
        "calls": len(draws),
        "calls_not_reproduced": len(pending),
        "informative_training_calls": sum(informative[d.index] for d in draws if d.source != "eval"),
        # Two informative training calls that drew from the same point of the stream: shared random numbers.
        "start_states_shared_by_informative_training_calls": sum(1 for c in train_starts.values() if c > 1),
        # Calls whose block starts where a call of the other thread ended, between the state they read and their
        # own draw (the other thread cut in within that window).
        "calls_cut_in_by_the_other_thread": sum(came_after.get(d.index) is not None for d in known),
        "per_source": per_source,
    }


def _per_step(run_dir: Path) -> dict[int, dict[str, float]]:
    keys = ("loss", "reward", "s2l/reward/learner", "s2l/reward/explorer")
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: {k: h[k] for k in keys if k in h} for h in history if "loss" in h}


def first_difference(a: Path, b: Path) -> int | None:
    """The first optimizer step whose logged loss or rewards differ between two runs (None: identical)."""
    steps = [_per_step(a), _per_step(b)]
    differ = [s for s in sorted(steps[0]) if steps[0][s] != steps[1].get(s)]
    return differ[0] if differ else None


def run_race(family: Family, settings: RLSettings, seed: int, out_dir: str | Path) -> dict:
    """S2L-PO with the explorer forced into a thread and in the foreground, same seed, each instrumented once and run
    again uninstrumented: the draw-level reconstruction of each, and whether each repeats."""
    out_dir = Path(out_dir)
    report: dict = {"settings": asdict(settings), "seed": seed, "runs": {}, "first_step_differing_from_rerun": {}}
    for name, background in (("s2l_po_thread", True), ("s2l_po_foreground", False)):
        factory = global_generator_explorer(background)
        with DrawRecorder() as rec:
            run_one(family, settings, "s2l_po", seed, out_dir, name=name, explorer_factory=factory)
        report["runs"][name] = reconstruct(rec.draws)
        main = [d for d in rec.draws if d.thread == "main"]
        report["runs"][name]["worker_calls_overlapping_main_calls_in_time"] = sum(
            1 for e in rec.draws if e.thread == "worker" and any(d.t0 <= e.t1 and d.t1 >= e.t0 for d in main)
        )
        run_one(family, settings, "s2l_po", seed, out_dir, name=f"{name}_rerun", explorer_factory=factory)
        report["first_step_differing_from_rerun"][name] = first_difference(
            out_dir / "runs" / f"{name}-seed{seed}", out_dir / "runs" / f"{name}_rerun-seed{seed}"
        )
    report["steps_with_both_sources"] = [
        s["step"]
        for s in json.loads((out_dir / "runs" / f"s2l_po_foreground-seed{seed}" / "run.json").read_text())["per_step"]
        if s["learner_rows"] > 0 and s["explorer_tokens"] > 0
    ]
    return report


def seeds_by_mode(family: Family, settings: RLSettings, seeds: list[int], out_dir: str | Path) -> dict:
    """Final held-out greedy accuracy of threaded vs foreground S2L-PO over ``seeds`` (runs cached under out_dir)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    finals: dict[str, list[float]] = {"s2l_po_thread": [], "s2l_po_foreground": []}
    per_seed = []
    for seed in tqdm(seeds, desc="seeds"):
        row = {"seed": seed}
        for name, background in (("s2l_po_thread", True), ("s2l_po_foreground", False)):
            factory = global_generator_explorer(background)
            run = run_one(family, settings, "s2l_po", seed, out_dir, name=name, explorer_factory=factory)
            row[name] = run["evals"][-1]["greedy_accuracy"]
            finals[name].append(row[name])
        per_seed.append(row)
    return {
        "settings": asdict(settings),
        "per_seed": per_seed,
        "mean_sd": {k: [statistics.fmean(v), statistics.stdev(v)] for k, v in finals.items()},
        "thread_minus_foreground_welch": welch(finals["s2l_po_thread"], finals["s2l_po_foreground"]),
        "thread_minus_foreground_paired": paired_differences(
            {r["seed"]: r["s2l_po_thread"] for r in per_seed}, {r["seed"]: r["s2l_po_foreground"] for r in per_seed}
        ),
    }


def race_settings(base: RLSettings, steps: int) -> RLSettings:
    """The run-level experiment's settings: the early-learner regime, cut to ``steps`` steps, evaluated at the end."""
    return replace(base, steps=steps, eval_every=steps, seeds=[base.seeds[0]])


def write_report(out_dir: str | Path, name: str, data: dict) -> Path:
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return path
