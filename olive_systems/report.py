"""report.html: one self-contained page per run, a Pareto plot, a table of candidates and the failures.

The page has no scripts and loads nothing: the plot is SVG drawn here and its tooltips are SVG
<title>s, so it opens anywhere (an air-gapped machine, a CI artifact), and user text (model ids,
errors) is escaped once, on the way in, and can only ever be shown as text.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

from .errors import OliveSystemsError
from .ranking import priority_metrics

WIDTH, HEIGHT = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 140, 20, 56  # plot margins: tick labels, axis titles, the legend on the right

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pareto td:first-child { border-left: 4px solid #d9480f; }
tr.missed { color: #888; }
ol.passes { margin: 0; padding-left: 1.2em; }
code { font-size: 12px; } code.searched { background: #fff3bf; font-weight: bold; }
svg .axis { stroke: #555; } svg .grid { stroke: #eee; } svg text { font-size: 12px; fill: #333; }
svg .candidate { fill: #7a8ca5; stroke: #fff; } svg .candidate.pareto { fill: #d9480f; }
svg .front { fill: none; stroke: #d9480f; stroke-width: 2; }
svg .input-model { fill: none; stroke: #111; stroke-width: 2; }
.note { color: #555; }
pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; }
"""


def write_report(folder: Path, data: dict | None = None) -> Path:
    """Write <folder>/report.html from the run's data (read from workflow_output.json when None)."""
    folder = Path(folder)
    if data is None:
        source = folder / "workflow_output.json"
        if not source.is_file():
            raise OliveSystemsError(f"'{folder}' has no workflow_output.json, so it is not an olive-systems output "
                                    "folder", "give the output folder of a finished run (its engine.output_dir)")
        data = json.loads(source.read_text())
    path = folder / "report.html"
    path.write_text(render(data), encoding="utf-8")
    return path


def render(data: dict) -> str:
    models = sorted(data.get("models") or [], key=lambda m: (m.get("rank") is None, m.get("rank") or 0))
    info = _metric_info(data.get("input_model_metrics"), models)
    failures = data.get("failures") or []
    title = f"olive-systems run: {data.get('output_dir') or ''}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{len(models)} candidates, {len(failures)} failed flows.</p>',
        "<h2>Candidates by priority metric</h2>", _plot_section(models, info, data.get("input_model_metrics")),
        "<h2>Candidates</h2>", _table(models, info, data.get("input_model_metrics")),
        _failures(failures), "</body></html>", ""])


def _e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _metric_info(input_metrics: dict | None, models: list[dict]) -> dict:
    """metric key -> its entry (priority, higher_is_better); candidates may not all have the same metrics."""
    info: dict = {}
    for metrics in [input_metrics or {}] + [m.get("metrics") or {} for m in models]:
        for key, entry in metrics.items():
            info.setdefault(key, entry)
    return info


def _value(metrics: dict | None, key: str) -> float | None:
    """A plottable value, or None (missing, not a number, NaN or infinite)."""
    value = ((metrics or {}).get(key) or {}).get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else "—" if value is None else str(value)


def _axis_title(key: str, info: dict) -> str:
    return f"{key} ({'higher' if info[key].get('higher_is_better') else 'lower'} is better)"


def _plot_section(models: list[dict], info: dict, input_metrics: dict | None) -> str:
    keys = priority_metrics(info)
    if not models:
        return _no_plot("No candidate finished, so there is nothing to plot.")
    if not info:
        return _no_plot("The run measured no metrics (the recipe has no evaluator), so there is nothing to plot.")
    if not keys:
        return _no_plot("No metric has a priority, so nothing ranks and there is no plot; the table lists the values.")
    notes = []
    if len(keys) > 2:
        notes.append(f"The Pareto front is over all {len(keys)} priority metrics ({', '.join(keys)}); the plot "
                     "shows the first two, so a front candidate can look dominated here.")
    x_key, y_key = (keys + [None])[:2]
    if y_key is None:  # one priority metric: plot it per candidate, one row per rank
        notes.append(f"Only one metric has a priority ({x_key}), so the plot shows it per candidate"
                     + (f"; the input model scores {_fmt(_value(input_metrics, x_key))}." if input_metrics else "."))
        points = [(m, _value(m.get("metrics"), x_key), float(row)) for row, m in enumerate(models, start=1)]
        input_point = None
    else:
        points = [(m, _value(m.get("metrics"), x_key), _value(m.get("metrics"), y_key)) for m in models]
        input_point = (_value(input_metrics, x_key), _value(input_metrics, y_key))
        if None in input_point:
            input_point = None
            notes += ["The input model lacks one of these metrics, so it is not plotted."] if input_metrics else []
    missing = [str(m.get("model_id")) for m, x, y in points if x is None or y is None]
    if missing:
        notes.append(f"Not plotted (no value for {x_key}{' or ' + y_key if y_key else ''}): {', '.join(missing)}.")
    points = [(m, x, y) for m, x, y in points if x is not None and y is not None]
    y_title = _axis_title(y_key, info) if y_key else "rank (1 is best)"
    svg = _svg(points, input_point, _axis_title(x_key, info), y_title, x_key, y_key) if points else ""
    return svg + "".join(f'<p class="note">{_e(note)}</p>' for note in notes)


def _no_plot(reason: str) -> str:
    return f'<p class="note" id="no-plot">{_e(reason)}</p>'


LOG_SPAN = 10  # an axis whose positive values span more than this factor is drawn on a log scale


def _ticks(lo: float, hi: float, count: int = 5) -> list[tuple[float, str]]:
    """Round tick values between lo and hi, with their labels."""
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    decimals = max(0, -math.floor(math.log10(step)))
    return [(t, f"{t:.{decimals}f}") for t in (first + i * step for i in range(int((hi - first) / step + 1e-9) + 1))]


def _log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """1-2-5 ticks per decade between lo and hi (decades only when that gives too many)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** d for d in decades for m in mantissas if lo <= m * 10.0 ** d <= hi]
        if len(ticks) <= 9:
            break
    return [(t, f"{t:g}") for t in ticks]


def _scale(values: list[float], start: float, end: float, log_ok: bool = True):
    """Map the values' range (padded, so no point sits on an axis) onto pixels start..end; log-scaled when
    the values are positive and span more than LOG_SPAN (an input model far slower than every candidate
    would otherwise squash the candidates into one corner). Returns (map, ticks, is_log)."""
    lo, hi = min(values), max(values)
    if log_ok and lo > 0 and hi / lo > LOG_SPAN:
        l, h = math.log10(lo), math.log10(hi)
        pad = (h - l) * 0.08
        l, h = l - pad, h + pad
        return (lambda v: start + (math.log10(v) - l) / (h - l) * (end - start)), _log_ticks(10 ** l, 10 ** h), True
    pad = (hi - lo) * 0.08 or abs(lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    return (lambda v: start + (v - lo) / (hi - lo) * (end - start)), _ticks(lo, hi), False


def _spread(pixels: list[tuple[float, float]], radius: float = 7.0) -> list[tuple[float, float]]:
    """Markers that would cover each other (within 3 px) are set around a small ring, so each stays visible."""
    placed: list[tuple[float, float]] = []
    for x, y in pixels:
        twins = sum(abs(x - px) < 3 and abs(y - py) < 3 for px, py in pixels[:len(placed)])
        if twins:
            angle = twins * 2 * math.pi / 6
            x, y = x + radius * math.cos(angle), y + radius * math.sin(angle)
        placed.append((x, y))
    return placed


LABEL_OFFSETS = [(8, -6, "start"), (8, 16, "start"), (-8, -6, "end"), (-8, 16, "end"), (0, -12, "middle"),
                 (0, 24, "middle"), (14, 5, "start"), (-14, 5, "end")]


def _label_box(x: float, y: float, text: str, anchor: str) -> tuple[float, float, float, float]:
    width = 7.5 * len(text)
    left = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
    return left, y - 11, left + width, y + 2


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(markers: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """A label per marker at the first offset that overlaps no marker and no placed label (else the least bad)."""
    boxes = [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in markers]
    placed = []
    for x, y, text in markers:
        def clashes(option):
            box = _label_box(x + option[0], y + option[1], text, option[2])
            outside = box[0] < LEFT or box[2] > WIDTH - RIGHT + 30 or box[1] < 0 or box[3] > HEIGHT - BOTTOM
            return sum(_overlap(box, other) for other in boxes) + 10 * outside
        dx, dy, anchor = min(LABEL_OFFSETS, key=clashes)  # min keeps the first of equals: the usual spot
        boxes.append(_label_box(x + dx, y + dy, text, anchor))
        placed.append((x + dx, y + dy, anchor))
    return placed


def _svg(points, input_point, x_title: str, y_title: str, x_key: str, y_key: str | None) -> str:
    # The front is drawn last, so a dominated marker never hides a Pareto one.
    points = sorted(points, key=lambda p: bool(p[0].get("pareto")))
    xs = [x for _, x, _ in points] + ([input_point[0]] if input_point else [])
    ys = [y for _, _, y in points] + ([input_point[1]] if input_point else [])
    sx, x_ticks, x_log = _scale(xs, LEFT, WIDTH - RIGHT)
    sy, y_ticks, y_log = _scale(ys, HEIGHT - BOTTOM, TOP, log_ok=y_key is not None)
    if y_key is None:  # the rank axis: whole ranks only
        y_ticks = [(y, f"{y:.0f}") for y in sorted(set(ys))]
    x_title += " (log scale)" if x_log else ""
    y_title += " (log scale)" if y_log else ""
    out = [f'<svg id="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(x_title)} against {_e(y_title)}" '
           f'data-x-scale="{"log" if x_log else "linear"}" data-y-scale="{"log" if y_log else "linear"}">']
    for t, label in x_ticks:
        out.append(f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
                   f'<text x="{sx(t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{label}</text>')
    for t, label in y_ticks:
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{label}</text>')
    bottom, middle_x, middle_y = HEIGHT - BOTTOM, (LEFT + WIDTH - RIGHT) / 2, (TOP + HEIGHT - BOTTOM) / 2
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}"/>'
               f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>'
               f'<text id="x-title" x="{middle_x}" y="{HEIGHT - 12}" text-anchor="middle">{_e(x_title)}</text>'
               f'<text id="y-title" transform="translate(18 {middle_y}) rotate(-90)" text-anchor="middle">{_e(y_title)}</text>')
    pixels = _spread([(sx(x), sy(y)) for _, x, y in points])
    markers = [(px, py, str(model.get("rank"))) for (model, _, _), (px, py) in zip(points, pixels)]
    if input_point:  # a hollow diamond under the markers: a candidate that scores the same stays visible
        x, y = sx(input_point[0]), sy(input_point[1])
        tip = f"input model\n{x_key}: {_fmt(input_point[0])}\n{y_key}: {_fmt(input_point[1])}"
        out.append(f'<path class="input-model" d="M{x:.1f},{y - 10:.1f} l10,10 l-10,10 l-10,-10 z">'
                   f'<title>{_e(tip)}</title></path>')
        markers.append((x, y, "input"))
    labels = _place_labels(markers)
    # The front joined in order along x, drawn under the markers.
    front = sorted((px, py) for (m, _, _), (px, py) in zip(points, pixels) if m.get("pareto"))
    if len(front) > 1:
        out.append(f'<polyline class="front" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in front)}"/>')
    for (model, x, y), (px, py) in zip(points, pixels):
        where = f"rank {model.get('rank')}, {model.get('device')} / {model.get('execution_provider')}"
        tip = "\n".join([str(model.get("model_id")), where, f"{x_key}: {_fmt(x)}"] + ([f"{y_key}: {_fmt(y)}"] if y_key else []))
        classes = "candidate pareto" if model.get("pareto") else "candidate"
        out.append(f'<circle class="{classes}" data-model-id="{_e(model.get("model_id"))}" '
                   f'cx="{px:.1f}" cy="{py:.1f}" r="6"><title>{_e(tip)}</title></circle>')
    for (_, _, text), (lx, ly, anchor) in zip(markers, labels):
        out.append(f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">{_e(text)}</text>')
    legend = [("candidate", 'fill="#7a8ca5"'), ("Pareto front", 'fill="#d9480f"')]
    legend += [("input model", 'fill="none" stroke="#111" stroke-width="2"')] if input_point else []
    for i, (label, style) in enumerate(legend):
        out.append(f'<rect {style} x="{WIDTH - RIGHT + 20}" y="{TOP + 4 + i * 18}" width="10" height="10"/>'
                   f'<text x="{WIDTH - RIGHT + 36}" y="{TOP + 13 + i * 18}">{label}</text>')
    return "".join(out) + "</svg>"


STEP_SOURCES = {"local": "from the cache", "shared": "from the shared cache",
                "this run": "reused: another candidate of this run made it"}


def _passes(history: list[dict]) -> str:
    if not history:
        return "—"
    items = []
    for step in history:
        searched = set(step.get("searched") or [])
        settings = [f'<code class="{"searched" if k in searched else "setting"}">{_e(k)}={_e(json.dumps(v, default=str))}'
                    f'{" (searched)" if k in searched else ""}</code>' for k, v in (step.get("config") or {}).items()]
        if step.get("cached"):
            how = STEP_SOURCES.get(step.get("source") or "local", "from the cache")
        else:
            how = f"computed in {step['seconds']:.1f} s" if isinstance(step.get("seconds"), (int, float)) else "computed"
        settings = f"<br>{', '.join(settings)}" if settings else ""
        items.append(f'<li><b>{_e(step.get("pass"))}</b> ({_e(step.get("type"))}) '
                     f'<small class="step-source">{_e(how)}</small>{settings}</li>')
    return f'<ol class="passes">{"".join(items)}</ol>'


def _fused(model: dict) -> str:
    """The fused-operator counts the fusion pass recorded on the model (— when it was not fused)."""
    counts = (((model.get("model_config") or {}).get("config") or {}).get("model_attributes") or {}).get("fused_operators")
    shown = [f"{op} ×{n}" for op, n in (counts or {}).items() if n]
    return "<br>".join(_e(s) for s in shown) if shown else ("none" if counts else "—")


def _metric_head(key: str, entry: dict, ranks: bool) -> str:
    better = "higher" if entry.get("higher_is_better") else "lower"
    priority = f"<br><small>priority {_e(entry.get('priority'))}</small>" if ranks else ""
    return f'<th title="{better} is better">{_e(key)} {"↑" if better == "higher" else "↓"}{priority}</th>'


SPEED_SPREAD_SHOWN = 0.1  # per-round medians of one model further apart than this: shown beside the shape


def _interval(entry: dict) -> str:
    low_high = entry.get("interval")
    if not (low_high and len(low_high) == 2 and all(isinstance(v, (int, float)) for v in low_high)):
        return ""
    return f" [{low_high[0]:.4g}, {low_high[1]:.4g}]"


def _metric_cell(entry: dict) -> str:
    """The value with its 95% interval, and per workload shape its own figure and the rank it would have there."""
    lines = [f'{_e(_fmt(entry.get("value")))}<small class="interval">{_e(_interval(entry))}</small>']
    for shape, figure in (entry.get("by_shape") or {}).items():
        rank = f", rank {figure['rank']}" if figure.get("rank") is not None else ""
        ratio = ""
        if isinstance(figure.get("median_ratio"), (int, float)):  # timed side by side with the first candidate
            ratio = f", x{figure['median_ratio']:.3g}{_interval({'interval': figure.get('median_ratio_interval')})}"
        spread = figure.get("speed_spread")
        drift = (f", the machine's speed varied {spread:.0%} over the rounds"
                 if isinstance(spread, (int, float)) and spread > SPEED_SPREAD_SHOWN else "")
        lines.append(f'<small class="shape" title="shape: figure [95% interval], rank at this shape, median ratio to '
                     f'the first candidate timed in the same rounds; a speed that varied can change a close order">'
                     f'{_e(shape)}: {_e(_fmt(figure.get("value")))}{_e(_interval(figure))}{_e(rank)}{_e(ratio)}'
                     f'{_e(drift)}</small>')
    return f'<td class="num">{"<br>".join(lines)}</td>'


def _table(models: list[dict], info: dict, input_metrics: dict | None) -> str:
    ranked = priority_metrics(info)
    keys = ranked + [k for k in info if k not in ranked]
    head = "".join(_metric_head(k, info[k], k in ranked) for k in keys)
    rows = []
    for m in models:
        metrics = m.get("metrics") or {}
        meets = m.get("meets_goals", True)
        goals = "meets" if meets else "missed:<br>" + "<br>".join(_e(g) for g in m.get("missed_goals") or [])
        runtime = m.get("runtime") or {}
        if runtime:
            runtime = f'<br><small>{_e(runtime.get("package"))} {_e(runtime.get("version"))}</small>'
        classes = "candidate" + (" pareto" if m.get("pareto") else "") + ("" if meets else " missed")
        rows.append(f'<tr class="{classes}" data-model-id="{_e(m.get("model_id"))}"><td class="num">{_e(m.get("rank"))}</td>'
                    f'<td class="model-id">{_e(m.get("model_id"))}</td><td>{_e(m.get("device"))}</td>'
                    f'<td>{_e(m.get("execution_provider"))}{runtime or ""}</td><td>{_passes(m.get("run_history") or [])}</td>'
                    f'<td class="fused">{_fused(m)}</td>'
                    + "".join(_metric_cell(metrics.get(k) or {}) for k in keys)
                    + f'<td>{goals}</td><td>{"yes" if m.get("pareto") else "no"}</td></tr>')
    foot = ""
    if input_metrics:
        foot = ('<tfoot><tr class="input-model"><td></td><td>input model</td><td colspan="4"></td>'
                + "".join(f'<td class="num">{_e(_fmt((input_metrics.get(k) or {}).get("value")))}</td>' for k in keys)
                + "<td></td><td></td></tr></tfoot>")
    return (f'<table id="candidates"><thead><tr><th>rank</th><th>model id</th><th>device</th><th>execution provider</th>'
            f'<th>passes</th><th>fused operators</th>{head}<th>goals</th><th>Pareto</th></tr></thead><tbody>{"".join(rows)}</tbody>{foot}</table>')


def _failures(failures: list[dict]) -> str:
    if not failures:
        return ""
    rows = []
    for f in failures:
        log = f.get("log_tail") or []
        log = "\n".join(map(str, log)) if isinstance(log, list) else str(log)
        rows.append(f'<tr class="failure"><td>{_e(f.get("model_id"))}</td>'
                    f'<td>{_e(f.get("device"))} / {_e(f.get("execution_provider"))}</td><td>{_e(f.get("error"))}'
                    f'{f"<details><summary>log</summary><pre>{_e(log)}</pre></details>" if log else ""}</td>'
                    f'<td>{_e(f.get("fix"))}</td></tr>')
    return ('<h2>Failed flows</h2><table id="failures"><thead><tr><th>model id</th><th>device / execution provider</th>'
            f'<th>error</th><th>fix</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
