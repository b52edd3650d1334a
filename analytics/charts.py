"""Charts of the reports: one description of the bars, drawn by plotly (HTML) or matplotlib (PNG).

Both work offline: the HTML carries plotly's JavaScript from the installed package (inline
for a file, or the console's own ``/console/static/plotly.min.js``), never a CDN.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI: draw to files only

import matplotlib.pyplot as plt
import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.utils import PlotlyJSONEncoder
from pydantic import BaseModel

from analytics.forecast_model import Forecast
from analytics.funnel import FunnelRow, ReactionTimes
from analytics.money import CostRow, SavingsReport

TEMPLATE = "plotly_white"
HEIGHT = 380
FUNNEL_STAGES = ("sent", "delivered", "opened", "clicked", "converted")


class BarChart(BaseModel):
    """Grouped bars: one series per legend entry, one value per category."""

    title: str
    categories: list[str]
    series: dict[str, list[float]]
    y_label: str = ""


def _label(key: dict[str, str | int | None]) -> str:
    return " / ".join("(none)" if v is None else str(v) for v in key.values()) or "all"


def funnel_chart(rows: list[FunnelRow], title: str = "Funnel") -> BarChart:
    """Bars of each funnel stage per group."""
    return BarChart(
        title=title,
        categories=list(FUNNEL_STAGES),
        series={_label(row.key): [float(getattr(row, stage)) for stage in FUNNEL_STAGES] for row in rows},
        y_label="messages",
    )


def cost_chart(rows: list[CostRow], title: str = "Cost") -> BarChart:
    """Cost per group, in the shop's currency."""
    currency = rows[0].currency if rows else ""
    return BarChart(
        title=title,
        categories=[_label(r.key) for r in rows],
        series={"cost": [r.cost for r in rows]},
        y_label=currency,
    )


def savings_chart(report: SavingsReport, title: str = "Cascade against sending everywhere") -> BarChart:
    """Actual cost against both counterfactuals, per journey."""
    names = list(report.groups)
    groups = [report.groups[n] for n in names]
    return BarChart(
        title=title,
        categories=names,
        series={
            "cascade (actual)": [g.actual for g in groups],
            "every usable channel": [g.all_usable for g in groups],
            "dearest channel only": [g.dearest_usable for g in groups],
        },
        y_label=report.currency,
    )


def reaction_chart(times: list[ReactionTimes], title: str = "Time to react") -> BarChart:
    """Histogram of the delay to the first reaction, per channel."""
    labels = list(times[0].buckets) if times else []
    return BarChart(
        title=title,
        categories=labels,
        series={t.channel: [float(t.buckets[b]) for b in labels] for t in times},
        y_label="reactions",
    )


def figure(chart: BarChart) -> go.Figure:
    """The plotly figure of a chart."""
    fig = go.Figure([go.Bar(name=name, x=chart.categories, y=values) for name, values in chart.series.items()])
    fig.update_layout(title=chart.title, barmode="group", yaxis_title=chart.y_label, template=TEMPLATE, height=HEIGHT)
    return fig


def html_page(chart: BarChart) -> str:
    """A whole HTML page with plotly's JavaScript inline (opens offline)."""
    return str(figure(chart).to_html(full_html=True, include_plotlyjs=True))


@functools.cache
def _template_json() -> str:
    # The template is a constant of the installed plotly (the same for every chart);
    # building a go.Figure just to serialise it again cost ~50 ms per chart per page.
    return _script_json(json.loads(json.dumps(pio.templates[TEMPLATE].to_plotly_json(), cls=PlotlyJSONEncoder)))


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' that could close it."""
    text = json.dumps(value, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_fragment(chart: BarChart, div_id: str) -> str:
    """A <div> for a page that loads plotly.min.js itself (the console).

    The same figure as :func:`figure` (bars, layout, plotly_white template), written as
    plotly.js's JSON directly: the console draws several per page and plotly's Python
    figure validation was most of a page's time.
    """
    if not div_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"div_id {div_id!r}: letters, digits, '-' and '_' only")
    data = [{"type": "bar", "name": name, "x": chart.categories, "y": values} for name, values in chart.series.items()]
    layout = {
        "title": {"text": chart.title},
        "barmode": "group",
        "yaxis": {"title": {"text": chart.y_label}},
        "height": HEIGHT,
    }
    return (
        f'<div id="{div_id}" class="plotly-graph-div" style="height:{HEIGHT}px; width:100%;"></div>'
        '<script type="text/javascript">'
        f"(function() {{ var layout = {_script_json(layout)}; layout.template = {_template_json()};"
        f' if (document.getElementById("{div_id}")) {{ Plotly.newPlot("{div_id}", {_script_json(data)}, layout,'
        ' {"responsive": true}); } })();</script>'
    )


def png(chart: BarChart) -> bytes:
    """The chart as a PNG (matplotlib)."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        count = max(len(chart.series), 1)
        width = 0.8 / count
        for i, (name, values) in enumerate(chart.series.items()):
            xs = [c + (i - (count - 1) / 2) * width for c in range(len(chart.categories))]
            ax.bar(xs, values, width=width, label=name)
        ax.set_xticks(range(len(chart.categories)), chart.categories, rotation=20, ha="right")
        ax.set_title(chart.title)
        ax.set_ylabel(chart.y_label)
        if chart.series:
            ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the installed plotly package."""
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def forecast_chart(forecast: Forecast) -> BarChart:
    """The three scenarios' totals side by side."""
    stages = ("sent", "delivered", "opened", "clicked", "converted")
    return BarChart(
        title=f"Forecast for {forecast.audience} customers",
        categories=list(stages),
        series={s.name: [float(getattr(s.total, stage)) for stage in stages] for s in forecast.scenarios},
        y_label="messages",
    )
