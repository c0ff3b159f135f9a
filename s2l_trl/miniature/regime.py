"""Regimes chosen by measured accuracy, not by SFT step: a model's starting checkpoint is the first saved checkpoint of
its size whose held-out accuracy (measured when the family was built, ``Family.heldout_curve``) falls in a named
band, so that an experiment starts in the same regime on any machine and any family build.

Why: the SFT trajectory depends on the processor's float results and on the build's seed; a fixed step (e.g. L at
step 500) sat on the steep part of L's learning curve and started at 25.8% greedy on one machine and at 2.3% on
another. A band names the regime itself ("the learner answers 20-35% of held-out problems greedily").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .family import Family

METRICS = ("greedy_accuracy", "pass@1", "greedy_coherent")


class RegimeError(ValueError):
    """No checkpoint of a family falls in the band an experiment asks for."""


@dataclass(frozen=True)
class Band:
    """Held-out accuracy between ``low`` and ``high`` percent (both included) on ``metric``."""

    low: float
    high: float
    metric: str = "greedy_accuracy"

    @classmethod
    def parse(cls, text: str, option: str = "band") -> Band:
        """``"20,35"`` (greedy accuracy in [20, 35]%) or ``"pass@1:20,35"``."""
        metric = "greedy_accuracy"
        body = text.strip()
        if ":" in body:
            metric, body = (part.strip() for part in body.split(":", 1))
        parts = [p.strip() for p in body.split(",")]
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"{option}={text!r} is not a band; write LOW,HIGH in percent, e.g. '20,35' (greedy accuracy), or "
                f"METRIC:LOW,HIGH with METRIC one of {METRICS}."
            ) from None
        if metric not in METRICS:
            raise ValueError(f"{option}={text!r}: unknown metric {metric!r}; use one of {METRICS}.")
        if not 0 <= low <= high <= 100:
            raise ValueError(f"{option}={text!r}: need 0 <= LOW <= HIGH <= 100 (percent), got {low} and {high}.")
        return cls(low, high, metric)

    def __contains__(self, fraction: float) -> bool:
        return self.low <= 100 * fraction <= self.high

    def __str__(self) -> str:
        return f"{self.metric} in [{self.low:g}, {self.high:g}]%"


@dataclass(frozen=True)
class Selection:
    """The checkpoint a band picked (recorded in every run.json)."""

    size: str
    step: int
    path: str
    band: str
    greedy_accuracy: float
    pass_at_1: float
    greedy_coherent: float
    weights_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


def select(family: Family, size: str, band: Band) -> Selection:
    """The first checkpoint of ``size`` (SFT steps in order, the final one last) whose held-out ``band.metric`` lies
    in ``band``; :class:`RegimeError` naming the measured curve when none does."""
    curve = family.heldout_curve(size)
    for point in curve:
        if point[band.metric] in band:
            step = None if point["step"] == family.spec.sft_steps else point["step"]
            return Selection(
                size=size,
                step=point["step"],
                path=str(family.path(size, step)),
                band=str(band),
                greedy_accuracy=point["greedy_accuracy"],
                pass_at_1=point["pass@1"],
                greedy_coherent=point["greedy_coherent"],
                weights_sha256=point["weights_sha256"],
            )
    raise RegimeError(
        f"no checkpoint of {size} in the family at {family.root} has held-out {band}; measured "
        f"{describe_curve(curve, band.metric)}. Pick a band that this curve crosses, or build a family with denser "
        "checkpoints (--checkpoint_every)."
    )


def describe_curve(curve: list[dict], metric: str, most: int = 12) -> str:
    """``'0.8% (step 25), 3.1% (step 50), ...'``, thinned to at most ``most`` points (the first and last kept)."""
    points = curve
    if len(curve) > most:
        stride = (len(curve) - 1) / (most - 1)
        points = [curve[round(i * stride)] for i in range(most)]
    return ", ".join(f"{100 * p[metric]:.1f}% (step {p['step']})" for p in points)


def selection_of(path: Path | str, family: Family, size: str) -> dict | None:
    """What the family recorded about the checkpoint at ``path`` (its step, held-out scores, checksum), if any."""
    if size not in family.manifest.get("heldout", {}):
        return None
    for point in family.heldout_curve(size):
        step = None if point["step"] == family.spec.sft_steps else point["step"]
        if Path(family.path(size, step)) == Path(path):
            return dict(point)
    return None
