"""The report's plot: cumulative epsilon over time per team and policy, as inline SVG.

Drawn by matplotlib on its SVG backend through a ``Figure`` of its own (never ``pyplot``, whose
global state is not safe to share), with text as paths so that the page needs no font. The SVG
is made self-contained for inline use: no XML prolog or DOCTYPE (which name a DTD by URL) and
no RDF metadata block (which names vocabularies by URL); ids are salted with a fixed string so
that the same report gives the same bytes.
"""

from __future__ import annotations

import datetime
import io
import re
from collections.abc import Sequence

import matplotlib
import numpy
from matplotlib import dates as mdates
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from hush.report import model

_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def spend_svg(series: Sequence[model.Series], *, title: str = "") -> str:
    """One step line per series (epsilon after each entry); "" when there is nothing to draw."""
    drawn = [item for item in series if item.points]
    if not drawn:
        return ""
    with matplotlib.rc_context(
        {"svg.fonttype": "path", "svg.hashsalt": "hush-report", "font.size": 9}
    ):
        figure = Figure(figsize=(9.0, 4.2), layout="constrained")
        FigureCanvasSVG(figure)
        axes = figure.add_subplot()
        # The dataset's line first, under the others: with one consumer they coincide.
        for item in sorted(drawn, key=lambda item: bool(item.team)):
            # UTC as naive datetime64: what matplotlib's date axis plots (and mypy accepts).
            times = numpy.array(
                [moment.astimezone(datetime.UTC).replace(tzinfo=None) for moment, _ in item.points],
                dtype="datetime64[us]",
            )
            values = [value for _, value in item.points]
            dataset = not item.team
            axes.step(
                times,
                values,
                where="post",
                marker="o",
                markersize=3,
                linewidth=3.0 if dataset else 1.6,
                color="#9a9a9a" if dataset else None,
                zorder=1 if dataset else 2,
                linestyle="--" if dataset else "-",
                label=item.label,
            )
        # matplotlib.dates ships without annotations on these two constructors.
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(
            mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        )
        axes.set_ylabel("epsilon spent (cumulative, as the accountant counts)")
        axes.set_xlabel("time (UTC)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        if title:
            axes.set_title(title)
        axes.legend(loc="upper left", fontsize=8, frameon=True)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = _PROLOG.sub("", text, count=1)
    return _METADATA.sub("", text, count=1).strip()
