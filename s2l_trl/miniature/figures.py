"""Figures of the miniature reports: matplotlib on its file-only backend, saved one way."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`matplotlib.pyplot.subplots` on the Agg backend (PNG files only: no display on a training node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig: Any, output: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``output`` (PNG, 120 dpi; parent folders made) and free it."""
    import matplotlib.pyplot as plt

    output = Path(output)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
