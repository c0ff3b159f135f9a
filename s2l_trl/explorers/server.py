"""Explorer behind an OpenAI-compatible vLLM server (`trl vllm-serve` or `vllm serve`): frozen, never weight-synced."""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .base import ExplorerError, ExplorerOutput, SamplingSettings

logger = logging.getLogger(__name__)


class _TimeoutAdapter(HTTPAdapter):
    """HTTPAdapter with a default timeout: `VLLMClient` posts without one, and a hung server must not hang training."""

    def __init__(self, timeout: float, **kwargs):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


class ServerExplorer:
    """Samples from a frozen model served by vLLM, through TRL's `VLLMClient` (token-id prompts in and out).

    Args:
        base_url: server URL, e.g. ``http://127.0.0.1:8001``.
        sampling: sampling settings of every request.
        startup_timeout: seconds to wait for ``/health`` before raising an error that names the URL.
        request_timeout: seconds one request may take before it is retried.
        max_retries: retries of a failed request (connection errors, 5xx, time-outs), with exponential back-off.
    """

    def __init__(
        self,
        base_url: str,
        sampling: SamplingSettings | None = None,
        startup_timeout: float = 240.0,
        request_timeout: float = 600.0,
        max_retries: int = 3,
        backoff_factor: float = 1.0,
    ):
        from trl.generation.vllm_client import VLLMClient

        self.base_url = base_url.rstrip("/")
        self.sampling = sampling or SamplingSettings()
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.last_latency_s = 0.0
        try:
            self.client = VLLMClient(base_url=self.base_url, connection_timeout=startup_timeout)
        except ConnectionError as exc:
            raise ExplorerError(
                f"The explorer server at {self.base_url} did not answer {self.base_url}/health within "
                f"{startup_timeout:.0f} s. Start it first, e.g. `trl vllm-serve --model <explorer> --port <port>`, "
                "and set explorer_server_base_url to its address."
            ) from exc
        except Exception as exc:  # e.g. /v1/models missing: not a vLLM OpenAI-compatible server
            raise ExplorerError(
                f"The explorer server at {self.base_url} answered /health but could not be used "
                f"as an OpenAI-compatible vLLM server: {exc}"
            ) from exc
        # Replace VLLMClient's session adapter: bounded retries with back-off, and a per-request timeout.
        retry = Retry(
            total=max_retries,
            connect=max_retries,
            read=max_retries,
            status=max_retries,
            status_forcelist=[500, 502, 503, 504],
            backoff_factor=backoff_factor,
            allowed_methods=["GET", "POST"],
            raise_on_status=False,
        )
        adapter = _TimeoutAdapter(request_timeout, max_retries=retry, pool_maxsize=8)
        self.client.session.mount("http://", adapter)
        self.client.session.mount("https://", adapter)
        self.model = self.client.model

    def generate(
        self, prompt_ids: list[list[int]], n: int, inputs: list[dict[str, Any]] | None = None
    ) -> ExplorerOutput:
        if not prompt_ids:
            return ExplorerOutput(completion_ids=[], logprobs=[])
        s = self.sampling
        generation_kwargs: dict[str, Any] = {}
        if s.presence_penalty:
            generation_kwargs["presence_penalty"] = s.presence_penalty
        if s.seed is not None:
            generation_kwargs["seed"] = s.seed
        start = time.perf_counter()
        try:
            out = self.client.generate(
                prompts=prompt_ids,
                n=n,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=-1 if s.top_k is None else s.top_k,
                max_tokens=s.max_tokens,
                repetition_penalty=s.repetition_penalty,
                logprobs=0,
                generation_kwargs=generation_kwargs or None,
            )
        except (requests.RequestException, OSError) as exc:
            raise ExplorerError(
                f"The explorer server at {self.base_url} failed a generation request after {self.max_retries} "
                f"retries (timeout {self.request_timeout:.0f} s each): {exc}"
            ) from exc
        except Exception as exc:  # VLLMClient raises plain Exception on a non-200 answer
            raise ExplorerError(f"The explorer server at {self.base_url} rejected a generation request: {exc}") from exc
        self.last_latency_s = time.perf_counter() - start
        completion_ids = [list(ids) for ids in out["completion_ids"]]
        if len(completion_ids) != len(prompt_ids) * n:
            raise ExplorerError(
                f"The explorer server at {self.base_url} returned {len(completion_ids)} completions "
                f"for {len(prompt_ids)} prompts x n={n}."
            )
        logprobs = None
        if out.get("logprobs") is not None:
            # logprobs=0 asks for the sampled token only: one entry per position; None marks an unscorable token.
            logprobs = [
                [float("nan") if lp is None or lp[0] is None else float(lp[0]) for lp in seq] for seq in out["logprobs"]
            ]
        return ExplorerOutput(completion_ids=completion_ids, logprobs=logprobs)
