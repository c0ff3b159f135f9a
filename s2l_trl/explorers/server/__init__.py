"""The explorer behind one or several vLLM servers (:class:`ServerExplorer`), split by concern:

* :mod:`.explorer`: :class:`ServerExplorer` itself: its settings, seeds and checkpoint state, start-up in order,
  ``generate`` / ``cancel`` / ``close``;
* :mod:`.urls`: server URLs checked before anything is contacted (the configuration uses them too);
* :mod:`.startup_checks`: health waits, model and tokenizer identity, the log-probs mode and probe;
* :mod:`.scheduler`: one call chunked over the servers: dispatch, retries, hung servers, progress lines;
* :mod:`.completions`: one ``/v1/completions`` request: its body, its answer decoded and checked;
* :mod:`.servers`: what is known about each server, and its ``/metrics`` token counters;
* :mod:`.transport`: HTTP on an event loop in a daemon thread, and what a failed request is;
* :mod:`.log`: the package's logger (``s2l_trl.explorers.server``) and its progress lines.

The names below are the package's public ones (they were those of the single ``server`` module).
"""

from .explorer import ServerExplorer
from .log import show_progress_logs
from .scheduler import ExplorerCancelled
from .startup_checks import IDENTITY_PROBE, PROCESSED_LOGPROBS, classify_logprobs
from .urls import parse_server_urls, same_server

__all__ = [
    "IDENTITY_PROBE",
    "PROCESSED_LOGPROBS",
    "ExplorerCancelled",
    "ServerExplorer",
    "classify_logprobs",
    "parse_server_urls",
    "same_server",
    "show_progress_logs",
]
