"""Explorer server URLs: checked and normalised before anything is contacted, and compared as servers.

Why a module of its own: the configuration checks them too (`S2LConfig` refuses a bad ``explorer_server_base_url``
and an explorer URL that is the learner's vLLM server before any work starts), without the HTTP machinery.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")
_URL_EXAMPLE = "e.g. http://127.0.0.1:8001, or several separated by commas: http://node1:8001,http://node2:8001"


def parse_server_urls(value: str | Sequence[str] | None, option: str = "explorer_server_base_url") -> list[str]:
    """The server URLs of ``value`` (one URL, a comma-separated string of URLs, or a list), checked and normalised
    (no trailing ``/``), without contacting anything.

    Each URL must be ``http(s)://host[:port]`` with no path: the explorer posts to ``<URL>/v1/completions`` itself,
    so an OpenAI-style ``.../v1`` base URL would miss. Any problem (empty value, empty item, no scheme, whitespace,
    a bad host or port, a path, a duplicate) is a ``ValueError`` naming ``option``, the bad value and the fix.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{option} is empty: give the explorer server's URL ({_URL_EXAMPLE}).")
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"{option} is an empty list: give at least one explorer server URL ({_URL_EXAMPLE}).")
    urls: list[str] = []
    for k, item in enumerate(items):
        problem = _url_problem(item)
        if problem:
            where = f" (item {k + 1} of {len(items)} in {value!r})" if len(items) > 1 else ""
            guess = f"http://{item.strip()}" if isinstance(item, str) else ""
            hint = f" Did you mean {guess!r}?" if "://" not in guess[7:] and _url_problem(guess) is None else ""
            raise ValueError(
                f"{option}: {item!r}{where} is not a server URL: {problem}. Give scheme, host and port only, "
                f"{_URL_EXAMPLE}.{hint}"
            )
        url = item.strip().rstrip("/")
        if url in urls:
            raise ValueError(f"{option}: {url!r} appears twice in {value!r}; give each explorer server once.")
        urls.append(url)
    return urls


def _url_problem(item: Any) -> str | None:
    """Why ``item`` is not an ``http(s)://host[:port]`` URL, or ``None`` when it is one."""
    if not isinstance(item, str):
        return f"it is a {type(item).__name__}, not a string"
    text = item.strip()
    if not text:
        return "it is empty (a stray comma?)"
    problems = []
    if any(c.isspace() for c in text):
        problems.append("it contains whitespace")
    if "://" not in text:
        problems.append("it has no scheme (http:// or https://)")
    if problems:
        return "; ".join(problems)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a port that is not a number in range, a malformed IPv6 literal
        return f"it does not parse ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme!r} (use http:// or https://)"
    host = parts.hostname or ""
    if not host:
        return "it has no host"
    if ":" in host:  # an IPv6 literal, given in brackets
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return f"its host {host!r} is not a valid IPv6 address"
    elif not _HOSTNAME.match(host):
        return f"its host {host!r} is not a valid host name or address"
    if port == 0:
        return "its port is 0"
    if parts.path not in ("", "/"):
        return f"it has a path ({parts.path!r}); the explorer adds /v1/completions itself, so give the server root"
    if parts.query or parts.fragment:
        return "it has a query or fragment"
    return None


def same_server(a: str, b: str) -> bool:
    """Whether two server URLs reach the same server: scheme-default ports filled in, host names compared without
    case, and every name of this machine's loopback (``localhost``, ``127.x.x.x``, ``::1``, ``0.0.0.0``, its own host
    name) taken as one host. Nothing is resolved over the network."""
    return _server_key(a) == _server_key(b)


def _server_key(url: str) -> tuple[str, int | None]:
    import socket

    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        port = None
    try:
        address = ipaddress.ip_address(host.split("%")[0])
        loopback = address.is_loopback or address.is_unspecified
    except ValueError:
        loopback = host in ("localhost", "localhost.localdomain", socket.gethostname().lower())
    return ("<this machine>" if loopback else host), port
