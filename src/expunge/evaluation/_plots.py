"""PNG plots of a report, drawn on matplotlib's Agg canvas without touching pyplot's state.

* ``loss_histograms.png``: per-sample loss of forget vs test samples, model and reference
  side by side (the challenge kit's picture: overlapping histograms = forgotten);
* ``roc_curves.png``: each attack's ROC curve (log-log, as LiRA's paper recommends, so the
  low-FPR region is visible), model solid and reference dashed;
* ``per_class_accuracy.png``: test accuracy per class, model vs reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from expunge.evaluation._report import EvaluationReport


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def write_plots(report: EvaluationReport, out: Path) -> list[Path]:
    """Write the plots for which ``report.curves`` has data; ``[]`` without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    written = []
    for name, draw in (("loss_histograms.png", _loss_histograms),
                       ("roc_curves.png", _roc_curves),
                       ("per_class_accuracy.png", _per_class)):
        figure = draw(report)
        if figure is not None:
            path = out / name
            figure.savefig(path)
            written.append(path)
    return written


def _loss_histograms(report: EvaluationReport) -> Any:
    data = report.curves.get("loss_hist")
    if not data:
        return None
    sides = [s for s in ("model", "reference") if data.get(s)]
    figure = _figure(5.0 * len(sides), 3.6)
    edges = np.asarray(data["edges"])
    centers = (edges[1:] + edges[:-1]) / 2
    width = np.diff(edges)
    for i, side in enumerate(sides, start=1):
        ax = figure.add_subplot(1, len(sides), i)
        for split, color in (("test", "tab:blue"), ("forget", "tab:red")):
            counts = np.asarray(data[side][split], dtype=float)
            density = counts / max(counts.sum(), 1.0) / width
            ax.bar(centers, density, width=width, alpha=0.5, color=color, label=split)
        ax.set_title(f"{side}: loss of forget vs test samples")
        ax.set_xlabel("log10(per-sample loss)")
        ax.set_ylabel("density")
        ax.set_yscale("log")
        ax.legend()
    figure.tight_layout()
    return figure


def _roc_curves(report: EvaluationReport) -> Any:
    data = report.curves.get("roc") or {}
    if not data:
        return None
    names = list(data)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    figure = _figure(4.2 * cols, 3.8 * rows)
    for i, name in enumerate(names, start=1):
        ax = figure.add_subplot(rows, cols, i)
        for side, style in (("model", "-"), ("reference", "--")):
            curve = data[name].get(side)
            if curve:
                fpr = np.maximum(np.asarray(curve["fpr"]), 1e-4)
                tpr = np.maximum(np.asarray(curve["tpr"]), 1e-4)
                ax.plot(fpr, tpr, style, label=side)
        ax.plot([1e-4, 1], [1e-4, 1], ":", color="gray", label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(1e-4, 1)
        ax.set_ylim(1e-4, 1)
        ax.set_title(data[name].get("title", name), fontsize=9)
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def _per_class(report: EvaluationReport) -> Any:
    data = report.curves.get("per_class")
    if not data:
        return None
    classes = np.asarray(data["classes"])
    figure = _figure(max(5.0, 0.5 * len(classes) + 2), 3.6)
    ax = figure.add_subplot(1, 1, 1)
    sides = [s for s in ("model", "reference") if data.get(s)]
    width = 0.8 / len(sides)
    for j, side in enumerate(sides):
        values = np.asarray([np.nan if v is None else v for v in data[side]], dtype=float)
        ax.bar(classes + (j - (len(sides) - 1) / 2) * width, values, width=width, label=side)
    if report.removed_class is not None:
        ax.axvspan(report.removed_class - 0.45, report.removed_class + 0.45, color="red",
                   alpha=0.1, label="removed class")
    ax.set_xticks(classes)
    ax.set_xlabel("class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("per-class test accuracy")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
