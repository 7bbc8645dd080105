"""The evaluation report: one self-contained HTML file (images inline, plots as inline SVG)
and a Markdown summary (the Prefect artifact)."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from e4t.evaluation.methods import METHODS
from e4t.evaluation.results import FEW_FACES, METRICS, EvalResult, count_faces, thumb_key

# the MLflow run and the promotion decision are known only after the report is written
# (the run logs it); the job swaps the section between these markers afterwards
TRACKING_START = "<!--e4t:tracking-->"
TRACKING_END = "<!--/e4t:tracking-->"

# each method's colour, label and description are its registry entry's
COLOURS = {name: method.colour for name, method in METHODS.items()}
LABELS = {
    "identity": "identity (no face = 0)",
    "identity_detected": "identity (faces found)",
    "identity_std": "identity std",
    "face_rate": "face rate",
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "diversity": "diversity",
    "tune_seconds": "tuning s / concept",
    "artifact_bytes": "bytes / concept",
}

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px}
th{background:#f3f3f3} td.l,th.l{text-align:left}
img.t{width:120px;height:120px;object-fit:cover;display:block}
.plots{display:flex;flex-wrap:wrap;gap:16px}
.muted{color:#777;font-size:13px}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:8px 12px;max-width:900px}
"""


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 or value.is_integer() else f"{value:.3f}"
    return html.escape(str(value))


def _img(data: bytes, alt: str) -> str:
    src = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return f'<img class="t" src="{src}" alt="{html.escape(alt)}">'


def _table(headers: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """A table; ``headers=None``: no header row (a key/value table)."""
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{h}</th>' for i, h in enumerate(headers or [])
    )
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def svg_plot(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    lines: bool = True,
    width: int = 420,
    height: int = 280,
) -> str:
    """A small line/scatter chart as inline SVG (no plotting library needed)."""
    points = [(x, y) for pts in series.values() for x, y in pts if not math.isnan(y)]
    pad_l, pad_b, pad_t, pad_r = 56, 40, 28, 120
    xs = _finite([p[0] for p in points]) or [0.0, 1.0]
    ys = _finite([p[1] for p in points]) or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_b - pad_t)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="4" y="16" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" '
        'stroke="#444"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#444"/>',
        f'<text x="{(pad_l + width - pad_r) / 2}" y="{height - 6}" text-anchor="middle" '
        f'font-size="11">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{(height - pad_b + pad_t) / 2}" font-size="11" '
        f'transform="rotate(-90 12 {(height - pad_b + pad_t) / 2})" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>",
    ]
    for value, anchor in ((x0, "start"), (x1, "end")):
        parts.append(
            f'<text x="{sx(value)}" y="{height - pad_b + 14}" font-size="10" '
            f'text-anchor="{anchor}">{value:.3g}</text>'
        )
    for value in (y0, y1):
        parts.append(
            f'<text x="{pad_l - 4}" y="{sy(value) + 4}" font-size="10" text-anchor="end">'
            f"{value:.3g}</text>"
        )
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS.get(name, "#555")
        good = [(x, y) for x, y in pts if not math.isnan(y)]
        if lines and len(good) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            parts.append(f'<polyline fill="none" stroke="{colour}" points="{path}"/>')
        for x, y in good:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}"/>')
        ly = pad_t + 16 * i
        parts.append(
            f'<rect x="{width - pad_r + 10}" y="{ly}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{width - pad_r + 24}" y="{ly + 9}" font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def warnings(result: EvalResult) -> list[str]:
    """Why the numbers of this evaluation mean little, in plain text (empty: nothing to say).

    A model that draws no faces (the tiny preset's random model) scores identity 0 on every
    sample, and a random CLIP scores CLIP-T 0: the tables still rank the methods."""
    out = []
    found, scored = count_faces(result.samples)
    if result.samples and not scored:
        out.append("No input had a detected face: identity was not scored.")
    elif scored and found < FEW_FACES * scored:
        out.append(
            f"The face detector found a face in only {found} of {scored} generated samples "
            f"({100 * found / scored:.0f} %). Identity counts 0 where no face is found, so the "
            "identity columns measure the detector, not the likeness, and no method's lead "
            "(CLIP-I included) says anything about faces: this model does not draw faces "
            "(the tiny preset's random model never does)."
        )
    clip_t = _finite([v["clip_t"] for by in result.summary.values() for v in by.values()])
    if clip_t and all(v == 0.0 for v in clip_t):
        out.append(
            "CLIP-T is 0 for every method and budget: the CLIP model scores no text-image "
            "agreement (the tiny preset's random CLIP), so prompt alignment is not measured."
        )
    return out


def _describe_promotion(decision: dict[str, Any]) -> str:
    value = decision.get("candidate_value")
    shown = "" if value is None else f" ({decision.get('metric')} = {fmt(value)})"
    alias = decision.get("alias", "champion")
    verdict = "promoted to @" + str(alias) if decision.get("promoted") else "not promoted"
    return f"{verdict}{shown}: {decision.get('reason')}"


def render_tracking(
    run_id: str | None, run_url: str | None, decision: dict[str, Any] | None
) -> tuple[str, str]:
    """The MLflow run and the promotion decision, as (HTML, Markdown), each between the
    tracking markers; the report is written with ``(None, None, None)``: not tracked."""
    if run_id is None:
        run_html = run_md = "none (this evaluation was not tracked)"
    else:
        url = html.escape(run_url or "")
        link = f' — <a href="{url}">{url}</a>' if url.startswith("http") else ""
        run_html = f"<code>{html.escape(run_id)}</code>{link}"
        run_md = f"`{run_id}`" + (f" — {run_url}" if run_url else "")
    said = "none" if decision is None else _describe_promotion(decision)
    section = f'<p class="tracking">MLflow run: {run_html}<br>Promotion: {html.escape(said)}</p>'
    markdown = f"MLflow run: {run_md}\n\nPromotion: {said}"
    return (
        TRACKING_START + section + TRACKING_END,
        TRACKING_START + "\n" + markdown + "\n" + TRACKING_END,
    )


def replace_tracking(text: str, section: str) -> str:
    """``text`` (a report or summary) with its tracking section replaced by ``section``."""
    start, end = text.find(TRACKING_START), text.find(TRACKING_END)
    if start < 0 or end < start:
        raise ValueError("the report has no tracking section (written by another version?)")
    return text[:start] + section + text[end + len(TRACKING_END) :]


def method_rows(names: list[str]) -> list[list[str]]:
    """A row per evaluated method: its name, label and description (the registry's)."""
    rows = []
    for name in names:
        method = METHODS.get(name)
        label, said = (method.label, method.description) if method else ("", "")
        rows.append([f"<code>{html.escape(name)}</code>", html.escape(label), html.escape(said)])
    return rows


def _final_rows(result: EvalResult) -> list[list[str]]:
    rows = []
    for method, by_steps in result.summary.items():
        steps = max(by_steps)
        rows.append([method, str(steps)] + [fmt(by_steps[steps][m]) for m in METRICS])
    return rows


def render_html(result: EvalResult, meta: dict[str, Any]) -> str:
    cfg = result.config
    prompts: list[str] = cfg["prompts"]
    steps_list: list[int] = cfg["steps"]
    headers = ["method", "steps"] + [LABELS[m] for m in METRICS]
    by_steps_rows = [
        [method, str(steps)] + [fmt(values[m]) for m in METRICS]
        for method, by_steps in result.summary.items()
        for steps, values in sorted(by_steps.items())
    ]
    plots = [
        svg_plot(
            {
                m: [(v["clip_t"], v["identity"]) for _, v in sorted(by.items())]
                for m, by in result.summary.items()
            },
            "identity vs prompt alignment (each point: a budget)",
            "CLIP-T",
            "identity",
        )
    ]
    for metric in ("identity", "clip_t", "clip_i"):
        plots.append(
            svg_plot(
                {
                    m: [(float(k), v[metric]) for k, v in sorted(by.items())]
                    for m, by in result.summary.items()
                },
                f"{LABELS[metric]} vs tuning steps",
                "tuning steps",
                LABELS[metric],
            )
        )
    grids = []
    for concept in result.concepts:
        cid = concept["concept_id"]
        rows = []
        for method, by_steps in result.summary.items():
            for steps in sorted(by_steps):
                cells = [f"{html.escape(method)}<br><span class=muted>{steps} steps</span>"]
                for prompt in prompts:
                    data = result.thumbnails.get(thumb_key(cid, method, steps, prompt))
                    cells.append(_img(data, f"{cid} {method} {steps} {prompt}") if data else "–")
                rows.append(cells)
        face = "" if concept["reference_has_face"] else " (no face found in the input by the "
        face += "" if concept["reference_has_face"] else "identity model: identity not scored)"
        grids.append(
            f"<h3>{html.escape(cid)}</h3>"
            f'<p class="muted">input: {html.escape(concept["source"])}{face}</p>'
            + _img(result.inputs[cid], f"{cid} input")
            + _table(["method / budget"] + [html.escape(p) for p in prompts], rows, "grid")
        )
    rejected = (
        _table(
            ["concept", "reason"],
            [
                [html.escape(r["concept_id"]), html.escape(str(r["reason"]))]
                for r in result.rejected
            ],
        )
        if result.rejected
        else "<p>none</p>"
    )
    info = [[html.escape(k), html.escape(str(v))] for k, v in meta.items()]
    warned = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings(result))
    tracking, _ = render_tracking(None, None, None)
    info.append(["config hash", result.config_hash])
    info.append(["seeds", html.escape(str(cfg["seeds"]))])
    info.append(["budgets (steps)", html.escape(str(steps_list))])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>E4T evaluation — {html.escape(str(meta.get('model_uri', '')))}</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>E4T evaluation</h1>"
        + warned
        + tracking
        + _table(None, info, "meta")
        + "<h2>Methods</h2>"
        + _table(None, method_rows(list(cfg["methods"])), "methods")
        + "<h2>At the largest budget</h2>"
        + _table(headers, _final_rows(result), "summary")
        + "<h2>Plots</h2><div class=plots>"
        + "".join(plots)
        + "</div><h2>Every budget</h2>"
        + _table(headers, by_steps_rows, "steps")
        + "<h2>Concepts</h2>"
        + "".join(grids)
        + "<h2>Rejected inputs</h2>"
        + rejected
        + "</body></html>"
    )


def render_markdown(result: EvalResult, meta: dict[str, Any]) -> str:
    lines = [f"# E4T evaluation of `{meta.get('model_uri', '')}`", ""]
    lines += [line for w in warnings(result) for line in (f"> **Warning**: {w}", "")]
    lines += [render_tracking(None, None, None)[1], ""]
    lines += [
        f"{len(result.concepts)} concepts, {len(result.rejected)} rejected; "
        f"prompts × seeds = {len(result.config['prompts'])} × {len(result.config['seeds'])}.",
        "",
        "| method | steps | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 2),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _final_rows(result)]
    lines += ["", "Methods:"]
    lines += [
        f"- `{name}`: {METHODS[name].label}" if name in METHODS else f"- `{name}`"
        for name in result.config["methods"]
    ]
    if meta.get("report_url"):
        lines += ["", f"Report: `{meta['report_url']}`"]
    return "\n".join(lines) + "\n"
