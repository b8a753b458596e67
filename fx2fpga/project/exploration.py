"""The design space a compile explored, for people: ``explore.json`` and ``explore.png``.

The plot puts each design point (``passes/explore.py``) at its load: the largest share of a resource's allowance
(``resources.allowance``: LUT, FF, DSP and BRAM36 by the calibrated RTL model, each against the share of the target
the explorer may fill) against its model-steps per second;
the Pareto front is joined by a line, the allowance's limit is a vertical line and the chosen point is
ringed: the "save resources at the cost of throughput" trade-off in one picture.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..passes import resources
from . import plots


def write(result, out_dir: str | Path, title: str, stem: str = "explore") -> list[Path]:
    """Write ``<stem>.json`` (and ``<stem>.png`` when matplotlib is installed) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json"]
    paths[0].write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if plot(result, title, out / f"{stem}.png"):
        paths.append(out / f"{stem}.png")
    return paths


def plot(result, title: str, png: Path) -> bool:
    """Draw the design points and their Pareto front to ``png``; False when matplotlib is not installed."""
    plt = plots.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = result.points
    ax.scatter([100 * p.load for p in pts], [p.model_steps_per_s for p in pts], c=["#4c72b0" if p.fits else "#999999"
                                                                                    for p in pts], s=18, zorder=2)
    front = sorted((p for p in pts if p.pareto), key=lambda p: p.load)
    ax.plot([100 * p.load for p in front], [p.model_steps_per_s for p in front], "-", color="#4c72b0", lw=1,
            label="Pareto front", zorder=1)
    for p in pts:
        ax.annotate(p.label, (100 * p.load, p.model_steps_per_s), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    chosen = result.chosen
    if chosen is not None:
        ax.scatter([100 * chosen.load], [chosen.model_steps_per_s], s=120, facecolors="none", edgecolors="#c44e52",
                   lw=1.5, label=f"chosen: {chosen.label} ({chosen.model_steps_per_s:,.0f}/s)", zorder=3)
    ax.axvline(100 * result.budget, color="k", ls="--", lw=1, label=f"allowance ({result.budget:.0%})")
    done = plots.save_log_log(fig, ax, png, f"share of {result.target}'s allowance, largest of LUT/FF/DSP/BRAM36 (%)"
                              f"\n(allowance: {resources.allowance_text()})",
                              "model-steps per second (RTL cycles + bus)",
                              title + "\n(labels: model lanes x lanes; grey: over the allowance)", title_size=9)
    plt.close(fig)
    return done
