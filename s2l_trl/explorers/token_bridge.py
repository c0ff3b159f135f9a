"""Explorer tokens -> learner tokens: tokenizer compatibility, EOS sets, prompt rendering, re-tokenization, cutting,
range checks, and the start-up check that an explorer covers the training prompts.

Explorer token ids are used as learner ids when both tokenizers have the same vocabulary and EOS; otherwise explorer
completions are decoded and re-tokenized with the learner's tokenizer (and their log-probs dropped), and the explorer
sees prompts rendered with its own chat template. Either way an explorer completion then follows the learner's rules:
cut after the first EOS, capped at `max_completion_length`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..mixing import cut_completion
from .base import ExplorerError

logger = logging.getLogger(__name__)


def lookup_fields(example: dict[str, Any]) -> dict[str, Any]:
    """The fields of a data-set row an explorer may need to find its rollouts (kept small)."""
    return {k: example[k] for k in ("prompt_id", "prompt") if k in example}


class TokenBridge:
    """Converts between the explorer's and the learner's tokens.

    Args:
        learner_tokenizer: the learner's tokenizer (TRL's `processing_class` tokenizer).
        explorer_model: id or path of the explorer, to load its tokenizer (and generation config, for its EOS ids);
            `None`: explorer ids are taken as learner ids and only range-checked.
        eos_token_ids: the learner's EOS ids (a completion ends at the first of them).
        max_completion_length: the learner's completion cap.
        chat_template_kwargs: what TRL passes to the chat template (re-rendering for another explorer tokenizer).
        retokenizes_itself: the explorer backend re-tokenizes its completions itself (offline rollouts do).
    """

    def __init__(
        self,
        learner_tokenizer: Any,
        explorer_model: str | None,
        eos_token_ids: list[int],
        max_completion_length: int,
        chat_template_kwargs: dict[str, Any] | None = None,
        retokenizes_itself: bool = False,
    ):
        self.learner_tokenizer = learner_tokenizer
        self.explorer_model = explorer_model
        self.eos_token_ids = list(eos_token_ids)
        self.max_completion_length = max_completion_length
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.retokenizes_itself = retokenizes_itself
        self.explorer_tokenizer, self.explorer_eos_ids = _load_explorer_tokenizer(explorer_model)
        self.matches = self.explorer_tokenizer is None or tokenizers_match(self.explorer_tokenizer, learner_tokenizer)
        if not self.matches:
            logger.warning(
                "The explorer tokenizer (%s) differs from the learner's: explorer completions are decoded and "
                "re-tokenized, and their log-probs dropped.",
                explorer_model,
            )

    @property
    def explorer_vocab_size(self) -> int:
        """Size of the vocabulary explorer ids come from (the learner's when the tokenizers match)."""
        tok = self.explorer_tokenizer if self.explorer_tokenizer is not None else self.learner_tokenizer
        return len(tok)

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, learner_prompt_ids: list[int], example: dict[str, Any]) -> tuple[int, ...]:
        """The prompt in the explorer's tokens: the learner's ids when the tokenizers match, else re-rendered with
        the explorer's own chat template (its special tokens may differ from the learner's)."""
        if self.matches:
            return tuple(learner_prompt_ids)
        prompt = example["prompt"]
        tok = self.explorer_tokenizer
        if isinstance(prompt, list):
            rendered = tok.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **self.chat_template_kwargs
            )
            return tuple(rendered["input_ids"])
        return tuple(tok(prompt, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ completions
    def to_learner(self, ids: list[int], logps: list[float] | None) -> tuple[list[int], list[float] | None]:
        """Apply the learner's rules to an explorer completion: same tokenizer, EOS cut, length cap."""
        if not self.matches and not self.retokenizes_itself:
            ended = bool(ids) and ids[-1] in self.explorer_eos_ids
            text = self.explorer_tokenizer.decode(ids, skip_special_tokens=True)
            ids = self.learner_tokenizer(text, add_special_tokens=False)["input_ids"] + (
                [self.eos_token_ids[0]] if ended else []
            )
            logps = None
        vocab = len(self.learner_tokenizer)
        bad = next((t for t in ids if t < 0 or t >= vocab), None)
        if bad is not None:
            hint = (
                f"explorer_model={self.explorer_model!r} is declared, so the explorer in use does not serve that "
                "model (check the server or the rollout file)"
                if self.explorer_model
                else "set explorer_model to the explorer's id so its completions are re-tokenized"
            )
            raise ExplorerError(
                f"The explorer returned token id {bad}, outside the learner vocabulary (size {vocab}): {hint}."
            )
        return cut_completion(ids, logps, self.eos_token_ids, self.max_completion_length, self.eos_token_ids[0])

    # ------------------------------------------------------------------ start-up
    def check_coverage(
        self,
        explorer: Any,
        examples: list[dict[str, Any]],
        learner_prompt_ids: Callable[[Iterable[Any]], list[list[int]]],
        rows_per_prompt: int,
    ) -> None:
        """Refuse to start when the explorer cannot serve some training prompts (offline rollouts), naming all; when
        stored rollouts were sampled for another problem text under the same `prompt_id` (the data set was edited
        since sampling) or on other prompt token ids than this run builds, which would append explorer answers to
        prompts they were not sampled for; and when they were sampled with a smaller completion cap than
        `max_completion_length` (see `check_completion_cap`).

        Args:
            explorer: the backend; checked only when it has `missing(examples)` / `stored_prompt_ids(example)`.
            examples: the training rows' lookup fields (`lookup_fields`).
            learner_prompt_ids: prompts -> the learner's prompt ids, as the trainer builds them.
            rows_per_prompt: the most explorer rows a round asks per prompt (backends may warn when they hold fewer).
        """
        missing_fn = getattr(explorer, "missing", None)
        if callable(missing_fn):
            missing = _call_missing(missing_fn, examples, rows_per_prompt)
            if missing:
                shown = ", ".join(missing[:20]) + (f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "")
                raise ExplorerError(
                    f"The explorer has no rollouts for {len(missing)} of the {len(examples)} training prompts: "
                    f"{shown}. Sample them first (s2l-sample with the same data arguments as s2l-train)."
                )
        self.check_completion_cap(explorer)
        difference_fn = getattr(explorer, "prompt_difference", None)
        if callable(difference_fn):
            edited = [e for e in examples if difference_fn(e) == "problem"]
            if edited:
                raise ExplorerError(self._edited_message(explorer, edited, len(examples)))
        stored_fn = getattr(explorer, "stored_prompt_ids", None)
        if not callable(stored_fn) or not self.matches:
            return
        mismatched: list[tuple[dict[str, Any], list[int], list[int]]] = []
        for example in examples:
            stored = stored_fn(example)
            if stored is None:
                continue
            built = list(learner_prompt_ids([example["prompt"]])[0])
            if list(stored) != built:
                mismatched.append((example, list(stored), built))
        if mismatched:
            labels = ", ".join(str(e.get("prompt_id", e["prompt"]))[:80] for e, _, _ in mismatched[:5])
            raise ExplorerError(
                f"{len(mismatched)} of the {len(examples)} training prompts were sampled on other prompt token ids "
                f"than this run builds (e.g. {labels}): {self._explain(*mismatched[0])} Re-run s2l-sample with "
                "this run's model and data arguments."
            )

    def check_completion_cap(self, explorer: Any) -> None:
        """Refuse stored rollouts sampled with a smaller completion cap than `max_completion_length` (their rows stop
        where the learner's go on: the two sources would not be truncated alike), read from the backend's
        `completion_cap(eos_token_ids)` (offline rollouts: `sample_config.json`, else the stored lengths). With
        another explorer tokenizer the two caps count different tokens: a warning then."""
        cap_fn = getattr(explorer, "completion_cap", None)
        if not callable(cap_fn):
            return
        found = cap_fn(self.eos_token_ids if self.matches else None)
        if found is None or found[0] >= self.max_completion_length:
            return
        cap, how = found
        m = self.max_completion_length
        message = (
            f"The offline rollouts were sampled with at most {cap} completion tokens ({how}), fewer than "
            f"max_completion_length={m}: their completions stop at {cap} tokens where the learner's go on to {m}, so "
            f"the two sources are not truncated alike. Sample them again with s2l-sample --max_tokens {m} (into "
            f"another --output_dir), or set max_completion_length={cap}."
        )
        if self.matches:
            raise ExplorerError(message)
        logger.warning(
            "%s (The explorer's tokenizer differs from the learner's, so the caps count other tokens.)", message
        )

    def _edited_message(self, explorer: Any, edited: list[dict[str, Any]], total: int) -> str:
        example = edited[0]
        stored_fn = getattr(explorer, "stored_prompt_ids", None)
        stored = stored_fn(example) if callable(stored_fn) and self.matches else None
        was = ""
        if stored:
            was = f", sampled on {self.learner_tokenizer.decode(stored, skip_special_tokens=True).strip()[:100]!r}"
        ids = ", ".join(repr(e["prompt_id"]) for e in edited[:5]) + (", ..." if len(edited) > 5 else "")
        return (
            f"{len(edited)} of the {total} training prompts hold another problem than the rollouts stored under their "
            f"prompt_id ({ids}; e.g. prompt_id {example['prompt_id']!r} is now "
            f"{_prompt_text(example['prompt']).strip()[:100]!r}{was}): the data set was edited since the rollouts were "
            "sampled. Sample this data set again (s2l-sample into another --output_dir), or train on the data set the "
            "rollouts were sampled from."
        )

    def _explain(self, example: dict[str, Any], stored: list[int], built: list[int]) -> str:
        """Why stored prompt ids differ from the ones this run builds: another tokenizer, or another rendering."""
        vocab = len(self.learner_tokenizer)
        if any(t < 0 or t >= vocab for t in stored):
            return (
                f"the stored ids lie outside the learner's vocabulary (size {vocab}), so the rollouts were tokenized "
                "by another tokenizer (set explorer_model to the model that sampled them)."
            )
        decode = self.learner_tokenizer.decode
        if decode(stored, skip_special_tokens=False) == decode(built, skip_special_tokens=False):
            return (
                "the same text was tokenized differently, so the rollouts were tokenized by another tokenizer (set "
                "explorer_model to the model that sampled them)."
            )
        # Another template or system prompt still holds the prompt's own words; another tokenizer's ids, read
        # with the learner's, do not.
        words = "".join(_prompt_text(example["prompt"]).split())
        if words and words not in "".join(decode(stored, skip_special_tokens=True).split()):
            return (
                "read with the learner's tokenizer, the stored ids do not spell this prompt, so the rollouts were "
                "tokenized by another tokenizer (set explorer_model to the model that sampled them)."
            )
        return (
            "the prompt text differs, so the rollouts were made with another chat template, system prompt or "
            "chat_template_kwargs."
        )


def tokenizers_match(a: Any, b: Any) -> bool:
    """Whether token ids of one tokenizer mean the same to the other: the same vocabulary and EOS."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def _prompt_text(prompt: Any) -> str:
    """The words of a prompt: the text itself, or its messages' text contents (string or text parts)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt if isinstance(prompt, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return " ".join(parts)


def _call_missing(missing_fn: Callable[..., list[str]], examples: list[dict[str, Any]], n: int) -> list[str]:
    """`missing(examples, n=...)` where the backend takes `n` (it then warns once about prompts with fewer stored
    rows than a round asks for), else `missing(examples)`."""
    import inspect

    try:
        takes_n = "n" in inspect.signature(missing_fn).parameters
    except (TypeError, ValueError):  # builtins or C callables without a signature
        takes_n = False
    return missing_fn(examples, n=n) if takes_n else missing_fn(examples)


def _load_explorer_tokenizer(explorer_model: str | None) -> tuple[Any, set[int]]:
    """The explorer's tokenizer and EOS ids (its tokenizer's and its generation config's), or `(None, set())` when
    no explorer model is named or its tokenizer is not available here (an offline run may name one)."""
    if not explorer_model:
        return None, set()
    from transformers import AutoTokenizer, GenerationConfig

    try:
        tok = AutoTokenizer.from_pretrained(explorer_model)
    except Exception as exc:
        logger.warning(
            "Could not load the explorer tokenizer %r (%s); assuming it matches the learner's.", explorer_model, exc
        )
        return None, set()
    eos = {tok.eos_token_id} - {None}
    try:
        generation_eos = GenerationConfig.from_pretrained(explorer_model).eos_token_id
        eos |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos]) - {None}
    except Exception:  # no generation config: the tokenizer's EOS is all there is
        pass
    return tok, eos
