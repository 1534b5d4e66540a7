"""EvaluationReport: every metric next to the reference's value, with what a good value is.

A report is plain data (JSON round-trips exactly): a list of :class:`MetricRow` (one per
number, each carrying a one-line ``good`` text), the per-seed runs behind them, curves for
the plots, timings per metric family and notes. ``table()`` renders it with rich,
``write(out_dir)`` writes ``report.md``, ``report.json`` and PNG plots (matplotlib, Agg
canvas; no global backend is changed).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from expunge.exceptions import InvalidParameterError

SECTIONS = ("Accuracy", "Membership inference", "Representation", "Distance to reference",
            "Across runs", "Cost")

#: how each kind of value is shown (all are stored as plain numbers)
KINDS = ("percent", "score", "distance", "seconds", "count", "bytes", "ratio")


@dataclass
class MetricRow:
    """One number of the report, for the evaluated model and its reference.

    Attributes:
        key: stable identifier (``"UA"``, ``"mia.loss.auc"``, ``"dist.js.forget"``...).
        section: one of ``SECTIONS``.
        name: display name, as the field names it.
        model / reference: the values (``None`` = not applicable or not computed).
        gap: ``|model - reference|`` where that comparison is the point, else ``None``.
        kind: display format: fractions shown as percent, scores (AUC...), distances,
            seconds, counts, bytes, ratios.
        good: one line: what a good value is, relative to the reference.
        model_std / reference_std / gap_std: standard deviations over runs (``None`` for a
            single run).
        model_ci / reference_ci / gap_ci: half-widths of 95 % confidence intervals of the
            mean: a t-interval over training seeds (each seed's runs averaged first), or
            over the runs when there is one training seed (``None`` for a single run).
        single: the row has one value, in ``model`` (a distance *to* the reference, a ratio
            of the two, Avg. Gap): the reference column is shown as "-".
    """

    key: str
    section: str
    name: str
    model: float | None
    reference: float | None = None
    gap: float | None = None
    kind: str = "score"
    good: str = ""
    model_std: float | None = None
    reference_std: float | None = None
    gap_std: float | None = None
    single: bool = False
    model_ci: float | None = None
    reference_ci: float | None = None
    gap_ci: float | None = None


def t_quantile(df: int, level: float = 0.975) -> float:
    """The ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(level, df))


def interval(values: list[float | None], groups: list[int] | None = None
             ) -> tuple[float | None, float | None, float | None]:
    """(mean, sample std, 95 % CI half-width) of the present values.

    With ``groups`` (the training seed of each value) holding two or more distinct seeds,
    the interval is a t-interval over the per-seed means (training seeds are the
    independent units; several unlearning seeds per training seed are averaged first).
    Otherwise it is a t-interval over the values themselves.
    """
    pairs = [(float(v), g) for v, g in zip(values, groups or [0] * len(values)) if v is not None]
    if not pairs:
        return None, None, None
    present = [v for v, _ in pairs]
    mean = sum(present) / len(present)
    if len(present) < 2:
        return mean, None, None
    # sample standard deviation (ddof=1): few seeds, so do not understate the spread
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1))
    by_group: dict[int, list[float]] = {}
    for v, g in pairs:
        by_group.setdefault(g, []).append(v)
    units = ([sum(vs) / len(vs) for vs in by_group.values()] if len(by_group) > 1
             else present)
    n = len(units)
    unit_mean = sum(units) / n
    unit_std = math.sqrt(sum((u - unit_mean) ** 2 for u in units) / (n - 1))
    return mean, std, t_quantile(n - 1) * unit_std / math.sqrt(n)


def aggregate_rows(runs: list[list[MetricRow]], groups: list[int] | None = None
                   ) -> list[MetricRow]:
    """Mean, std and 95 % CI (over runs) of rows with the same key, in the first run's
    order; ``groups`` is each run's training seed (see :func:`interval`)."""
    if len(runs) == 1:
        return [MetricRow(**asdict(r)) for r in runs[0]]
    by_key: dict[str, list[tuple[MetricRow, int]]] = {}
    order: list[str] = []
    for index, rows in enumerate(runs):
        group = groups[index] if groups else index
        for row in rows:
            if row.key not in by_key:
                order.append(row.key)
            by_key.setdefault(row.key, []).append((row, group))
    out = []
    for key in order:
        rows = [r for r, _ in by_key[key]]
        seeds = [g for _, g in by_key[key]]
        model, model_std, model_ci = interval([r.model for r in rows], seeds)
        reference, reference_std, reference_ci = interval([r.reference for r in rows], seeds)
        gap, gap_std, gap_ci = interval([r.gap for r in rows], seeds)
        first = rows[0]
        out.append(MetricRow(
            key=key, section=first.section, name=first.name, model=model, reference=reference,
            gap=gap, kind=first.kind, good=first.good, model_std=model_std,
            reference_std=reference_std, gap_std=gap_std, single=first.single,
            model_ci=model_ci, reference_ci=reference_ci, gap_ci=gap_ci,
        ))
    return out


def format_value(value: float | None, kind: str, std: float | None = None,
                 ci: float | None = None) -> str:
    """A value as shown in tables: percent for fractions, 4 decimals for scores...; then
    ``± std`` and ``(CI ±half-width)`` when given."""
    if value is None:
        return "n/a"

    def one(v: float) -> str:
        if kind == "percent":
            return f"{100 * v:.2f}%"
        if kind == "score":
            return f"{v:.4f}"
        if kind == "distance":
            return f"{v:.4g}"
        if kind == "seconds":
            return f"{v:.2f} s"
        if kind == "count":
            return f"{round(v):,}"
        if kind == "bytes":
            return _bytes(v)
        if kind == "ratio":
            return f"{v:.1f}x"
        return f"{v:.4g}"

    def bare(v: float) -> str:
        return f"{100 * v:.2f}" if kind == "percent" else one(v).rstrip("%sx ")

    text = one(value)
    if std is not None:
        text += " ± " + bare(std)
    if ci is not None:
        text += f" (CI ±{bare(ci)})"
    return text


def _bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"  # pragma: no cover


@dataclass
class EvaluationReport:
    """The result of :func:`expunge.evaluate`.

    Attributes:
        strategy / guarantee / params / fingerprint: what was evaluated (the fingerprint of
            the first run's model).
        status: ``"forgotten"`` (the strategy had forgotten the ids), ``"forgotten by
            evaluate"`` (``forget=True`` or ``seeds``), or ``"not forgotten yet"`` (the model
            still holds the forget set: a *before* baseline).
        n_forget / n_retain / n_test: sizes of ``D_f``, ``D_r`` and ``D_te``.
        forget_ids_sha256: identifies the forget set.
        removed_class: the class, when the forget set is a whole class, else ``None``.
        reference: how the reference was obtained (``None`` without one).
        attacks / checks / seeds / unlearn_seeds: what ran (one seed per run: the training
            seed, and the unlearning seed or ``None`` for the strategy's own).
        metrics: the rows (mean, std and 95 % CI over runs when several).
        runs: per run: ``{"seed", "unlearn_seed", "fingerprint", "status", "forget_report",
            "metrics"}``.
        timings: seconds per metric family, summed over seeds.
        curves: data of the plots (first seed): loss histograms, ROC curves, per-class
            accuracy.
        notes: caveats (clipping, subsampling, n/a reasons, shadow-model settings).
        versions / created_at: provenance.
    """

    strategy: str
    guarantee: str
    params: dict[str, Any]
    fingerprint: str
    status: str
    n_forget: int
    n_retain: int
    n_test: int
    forget_ids_sha256: str
    removed_class: int | None
    reference: dict[str, Any] | None
    attacks: list[str]
    seeds: list[int]
    metrics: list[MetricRow]
    unlearn_seeds: list[int | None] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""

    # ------------------------------------------------------------------ access
    def __getitem__(self, key: str) -> MetricRow:
        """The row with this key, e.g. ``report["UA"].model`` or ``report["mia.svc.efficacy"]``."""
        for row in self.metrics:
            if row.key == key:
                return row
        raise KeyError(f"no metric {key!r}; available: {', '.join(self.keys())}")

    def keys(self) -> list[str]:
        return [row.key for row in self.metrics]

    # ------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (rows as dicts)."""
        return json.loads(json.dumps(asdict(self), allow_nan=False))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameterError(
                f"not an EvaluationReport: unexpected keys {unknown}. Pass the output of "
                "to_dict() / to_json()."
            )
        values = dict(data)
        values["metrics"] = [MetricRow(**row) for row in data["metrics"]]
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        return cls.from_dict(json.loads(text))

    # ----------------------------------------------------------------- render
    def table(self, *, explain: bool = False) -> Any:
        """A ``rich.table.Table`` with every metric (``explain=True`` adds the "good" column).

        Example:
            >>> from rich import print  # doctest: +SKIP
            >>> print(report.table())   # doctest: +SKIP
        """
        from rich.table import Table

        seeds = f", seeds {self.seeds}" if len(self.seeds) > 1 else ""
        table = Table(
            title=f"{self.strategy} ({self.guarantee}) - {self.status}{seeds}",
            caption=self._caption(), show_lines=False,
        )
        table.add_column("metric")
        table.add_column("model", justify="right")
        table.add_column("reference", justify="right")
        table.add_column("|gap|", justify="right")
        if explain:
            table.add_column("good value", overflow="fold", ratio=1)
        for section in SECTIONS:
            rows = [r for r in self.metrics if r.section == section]
            if not rows:
                continue
            table.add_section()
            table.add_row(f"[bold]{section}[/bold]", "", "", "", *([""] if explain else []))
            for r in rows:
                cells = [
                    r.name, format_value(r.model, r.kind, r.model_std, r.model_ci),
                    "-" if r.single else format_value(r.reference, r.kind, r.reference_std,
                                                      r.reference_ci),
                    "" if r.gap is None and r.gap_std is None
                    else format_value(r.gap, r.kind, r.gap_std, r.gap_ci),
                ]
                table.add_row(*cells, *([r.good] if explain else []))
        return table

    def _caption(self) -> str:
        ref = self.reference or {}
        where = ("no reference" if not ref else
                 f"reference: {ref.get('strategy')} on {ref.get('n_train')} retained samples"
                 + (" (cached)" if ref.get("cached") else ""))
        return (f"|D_f|={self.n_forget}  |D_r|={self.n_retain}  |D_te|={self.n_test}; {where}")

    def timings_table(self) -> Any:
        """A ``rich.table.Table`` of seconds per metric family."""
        from rich.table import Table

        table = Table(title="seconds per metric family")
        table.add_column("family")
        table.add_column("seconds", justify="right")
        for name, seconds in self.timings.items():
            table.add_row(name, f"{seconds:.2f}")
        table.add_row("[bold]total[/bold]", f"{sum(self.timings.values()):.2f}")
        return table

    def to_text(self, *, explain: bool = False, width: int = 110) -> str:
        """The tables rendered as plain text."""
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
        console.print(self.table(explain=explain))
        console.print(self.timings_table())
        return console.export_text()

    def __str__(self) -> str:
        return self.to_text()

    def to_markdown(self, plots: list[str] | None = None, notes: list[str] | None = None) -> str:
        """``report.md``: header, one table per section, what each value means, plots, notes."""
        ref = self.reference or {}
        lines = [
            f"# Unlearning evaluation: {self.strategy}",
            "",
            f"- **Status:** {self.status}",
            f"- **Guarantee:** {self.guarantee}",
            f"- **Forget set:** {self.n_forget} samples (ids sha256 "
            f"`{self.forget_ids_sha256[:16]}`)"
            + (f", the whole class {self.removed_class}" if self.removed_class is not None else ""),
            f"- **Retained / test:** {self.n_retain} / {self.n_test} samples",
            "- **Reference:** " + (
                "none (gaps are not computed)" if not ref else
                f"{ref.get('strategy')} with the same model and training settings, trained on "
                f"the {ref.get('n_train')} retained samples"
                + (" (loaded from the store's cache)" if ref.get("cached") else "")),
            f"- **Attacks:** {', '.join(self.attacks) or 'none'}",
            f"- **Seeds:** {', '.join(map(str, self.seeds))}"
            + (" (mean ± std over seeds)" if len(self.seeds) > 1 else ""),
            f"- **Model fingerprint:** `{self.fingerprint[:16]}`",
            f"- **Created:** {self.created_at}; "
            + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "",
            "Every value is judged against the reference (a model retrained without the forget "
            "set), not against 0 or 1: the last column of each table says what is good.",
            "",
        ]
        for section in SECTIONS:
            rows = [r for r in self.metrics if r.section == section]
            if not rows:
                continue
            lines += [f"## {section}", "",
                      "| metric | model | reference | \\|gap\\| | good value |",
                      "|---|---:|---:|---:|---|"]
            for r in rows:
                gap = "" if r.gap is None else format_value(r.gap, r.kind, r.gap_std, r.gap_ci)
                reference = ("-" if r.single else format_value(r.reference, r.kind,
                                                                r.reference_std, r.reference_ci))
                lines.append(
                    f"| {r.name} | {format_value(r.model, r.kind, r.model_std, r.model_ci)} | "
                    f"{reference} | {gap} | "
                    f"{r.good} |"
                )
            lines.append("")
        lines += ["## Seconds per metric family", "", "| family | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in self.timings.items()]
        lines += [f"| **total** | {sum(self.timings.values()):.2f} |", ""]
        if plots:
            lines += ["## Plots", ""]
            lines += [f"![{Path(p).stem}]({Path(p).name})" + "\n" for p in plots]
        all_notes = [*self.notes, *(notes or [])]
        if all_notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in all_notes] + [""]
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``report.md``, ``report.json`` and the PNG plots into ``out_dir``.

        Plots (when matplotlib is installed, ``pip install expunge[plots]``): loss histograms
        of forget vs test samples for model and reference, ROC curves of the attacks, and
        per-class test accuracy. Returns the paths written.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from expunge.evaluation._plots import write_plots

        plots = write_plots(self, out)
        extra = [] if _has_matplotlib() else [
            "plots skipped: matplotlib is not installed (pip install expunge[plots])."]
        (out / "report.json").write_text(self.to_json() + "\n")
        (out / "report.md").write_text(self.to_markdown([p.name for p in plots], extra))
        return [out / "report.md", out / "report.json", *plots]


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

