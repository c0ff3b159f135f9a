"""Offline rollouts as a memory-mapped Arrow table: converted once per version of the file, validated while streaming,
indexed by prompt, and read one round at a time.

Why: as Python lists a rollout costs ~87 bytes of heap per stored token (~49 GB for the paper's 17.4k prompts x 16
samples x ~2k tokens). Here the token ids and log-probs live in an Arrow IPC file that is memory-mapped (page cache,
shared, evictable), the main process holds only a prompt -> rows index (a few bytes per *row*), and a round turns
just the rows it draws into Python lists.

Layout of a cache entry (a folder in ``cache_dir``, named after the source file and its identity):

* ``rows.arrow``: one row per rollout, in file order (Arrow IPC stream, the format `datasets` memory-maps):
  ``line`` (JSONL line number, or row number for parquet / `save_to_disk`), ``response_ids`` (list<int32>),
  ``small_model_log_probs`` (list<float32>, NaN for unscored tokens, null when not stored), ``response`` (string),
  ``prompt_ids`` (list<int32>);
* ``index.npz``: per lookup key kind (``prompt_id``, whole prompt, user text of plain-string prompts, user text of
  every prompt), the sorted 128-bit hashes of the keys and, for each, the rows holding it (file order); a zip whose
  members carry CRC-32 checksums, checked as it loads;
* ``meta.json``: what was converted (source, identity, counts, token-id range, log-prob counts, and an XXH3-128
  checksum of ``rows.arrow``, verified whenever the entry is opened), written last: an entry without it is torn and
  is converted again.

The package, by concern:

* :mod:`.rows`: what a rollout row is: its fields, the rules every reader applies to every row, its prompt keys;
* :mod:`.sources`: a rollout file or folder (JSONL, parquet, ``save_to_disk``): its identity and its rows, streamed;
* :mod:`.conversion`: rows into Arrow record batches, checked vectorised on the way, and the statistics kept of them;
* :mod:`.index`: the prompt-key index: built from the rows' keys, and looked up;
* :mod:`.cache`: cache entries on disk: where, their ``meta.json``, the checksum of ``rows.arrow``, locks, pruning;
* :mod:`.store`: :class:`RolloutStore`: opening (in memory, or through the cache), the run's checks, reading rows;
* :mod:`.progress`: the package's logger (``s2l_trl.explorers.rollout_store``) and the progress lines of long passes.

The names below are the package's public ones (they were those of the single ``rollout_store`` module). A setting
read at run time (``PROGRESS_INTERVAL_S``, ``CACHE_MIN_BYTES``) is changed on the module that reads it
(``rollout_store.progress.PROGRESS_INTERVAL_S``): setting the name re-exported here changes nothing.
"""

from .cache import STORE_VERSION, default_cache_dir
from .conversion import option_problems
from .index import KEY_ID, KEY_PROMPT, KEY_TEXT, KEY_USER
from .progress import PROGRESS_INTERVAL_S, Progress
from .rows import MAX_LISTED_ERRORS, ROLLOUT_FIELDS, ProblemList, prompt_key, prompt_text_key, validate_rollout
from .sources import RolloutSource, iter_validated_rows
from .store import CACHE_MIN_BYTES, RolloutStore

__all__ = [
    "CACHE_MIN_BYTES",
    "KEY_ID",
    "KEY_PROMPT",
    "KEY_TEXT",
    "KEY_USER",
    "MAX_LISTED_ERRORS",
    "PROGRESS_INTERVAL_S",
    "ROLLOUT_FIELDS",
    "STORE_VERSION",
    "ProblemList",
    "Progress",
    "RolloutSource",
    "RolloutStore",
    "default_cache_dir",
    "iter_validated_rows",
    "option_problems",
    "prompt_key",
    "prompt_text_key",
    "validate_rollout",
]
