"""Commands over the charts: zoom, which metrics, smoothing and log-y; and metric summaries for the agent."""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from twinkle_tui.commands.chart_settings import MAX_CHARTS, ChartSettings
from twinkle_tui.commands.registry import command, slash
from twinkle_tui.commands.results import CommandError, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.runs.progress import format_value

MIN_WINDOW = 2.0  # steps: a narrower window would draw one column
PREFERRED = ("loss", "reward", "grad_norm", "learning rate", "lr", "learning_rate")


def default_metrics(names: list[str]) -> list[str]:
    """Up to four metrics: loss, reward, grad_norm, learning rate first (by name match), then the others."""
    chosen: list[str] = []
    for pref in PREFERRED:
        for name in names:
            leaf = name.lower().rsplit("/", 1)[-1]
            if name not in chosen and (leaf == pref or (pref in ("loss", "reward") and leaf.endswith(pref))):
                chosen.append(name)
                break
    for name in names:
        if len(chosen) >= MAX_CHARTS:
            break
        if name not in chosen and name not in ("step time",):
            chosen.append(name)
    return chosen[:MAX_CHARTS]


def shown_metrics(settings: ChartSettings, names: list[str]) -> list[str]:
    """The metrics the charts show for a run that logs `names`: the user's choice where the run has them, else the
    defaults (reading, never changing, the settings)."""
    if settings.user_chose_metrics:
        chosen = [m for m in settings.metrics if m in names]
        if chosen:
            return chosen
    return default_metrics(names)


def step_range(s: Session, run_id: str | None = None) -> tuple[float, float] | None:
    """First and last step of the metrics charted (or of any metric) of a run."""
    view = s.view(run_id or s.target({}))
    with s.store.lock:
        wanted = shown_metrics(s.settings, view.metrics.names()) or view.metrics.names()
        ranges = [view.metrics.series[m].snapshot()[0] for m in wanted]
        ranges = [r for r in ranges if len(r)]
        if not ranges:
            return None
        return float(min(r[0] for r in ranges)), float(max(r[-1] for r in ranges))


def clamp_zoom(lo: float, hi: float, full: tuple[float, float]) -> tuple[float, float]:
    """The window [lo, hi] limited to the run's steps and at least MIN_WINDOW wide; CommandError if it misses
    the data altogether."""
    a, b = full
    if hi < a or lo > b:
        raise CommandError(f"steps {lo:g}–{hi:g} are outside this run's steps {a:g}–{b:g}")
    lo, hi = max(lo, a), min(hi, b)
    if hi - lo < MIN_WINDOW:
        mid = (lo + hi) / 2
        lo, hi = max(a, mid - MIN_WINDOW / 2), min(b, mid + MIN_WINDOW / 2)
        if hi - lo < MIN_WINDOW:
            hi = lo + MIN_WINDOW
    return lo, hi


@command("zoom_metrics", "Zoom every chart to a step range, zoom in or out by a factor, or reset to all steps.", "view",
         {"start": {"type": "number"}, "end": {"type": "number"},
          "factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 100,
                     "description": "below 1 zooms in, above 1 zooms out (around center)"},
          "center": {"type": "number", "description": "the step to zoom around (default: the window's middle)"},
          "reset": {"type": "boolean", "description": "show every step again"}})
def zoom_metrics(s: Session, a: dict[str, Any]) -> Reply:
    if a.get("factor") is not None:
        zoom_by(s, float(a["factor"]), a.get("center"))
        return Reply(_window_text(s), redraw={"charts"})
    if a.get("reset") or ("start" not in a and "end" not in a):
        s.settings.zoom = None
        return Reply("zoom reset: all steps", redraw={"charts"})
    full = step_range(s)
    if full is None:
        raise CommandError("this run has no metrics to zoom into yet")
    lo = float(a.get("start", full[0]))
    hi = float(a.get("end", full[1]))
    if hi <= lo:
        raise CommandError("the zoom range needs start < end")
    s.settings.zoom = clamp_zoom(lo, hi, full)
    lo, hi = s.settings.zoom
    return Reply(f"showing steps {lo:g}–{hi:g}", redraw={"charts"})


def zoom_by(s: Session, factor: float, center: float | None = None) -> None:
    """Zoom in (factor < 1) or out around center (default: the middle of the window)."""
    full = step_range(s)
    if full is None:
        return
    lo, hi = s.settings.zoom or full
    center = (lo + hi) / 2 if center is None else center
    half = (hi - lo) * factor / 2
    if factor > 1 and half * 2 >= full[1] - full[0]:
        s.settings.zoom = None
        return
    s.settings.zoom = clamp_zoom(center - half, center + half, full)


def _window_text(s: Session) -> str:
    return f"showing steps {s.settings.zoom[0]:g}–{s.settings.zoom[1]:g}" if s.settings.zoom else "showing all steps"


@command("pan_metrics", "Move a zoomed chart window left (negative) or right by a fraction of its width.", "view",
         {"fraction": {"type": "number", "minimum": -10, "maximum": 10}}, ("fraction",), agent=False)
def pan_metrics(s: Session, a: dict[str, Any]) -> Reply:
    pan(s, float(a["fraction"]))
    return Reply(_window_text(s), redraw={"charts"})


def pan(s: Session, fraction: float) -> None:
    """Move a zoomed window by a fraction of its width, stopping at the run's ends."""
    full = step_range(s)
    if s.settings.zoom is None or full is None:
        return
    lo, hi = s.settings.zoom
    width = hi - lo
    shift = width * fraction
    lo = min(max(lo + shift, full[0]), full[1] - width)
    s.settings.zoom = clamp_zoom(lo, lo + width, full)


def match_metrics(wanted: list[str], known: list[str]) -> list[str]:
    """Each wanted name matched to a metric: exactly, ignoring case, by a unique part, or by a close spelling."""
    out = []
    lower = {k.lower(): k for k in known}
    for name in wanted:
        key = name.strip().lower()
        if key in lower:
            out.append(lower[key])
            continue
        parts = [k for k in known if key in k.lower()]
        if len(parts) == 1:
            out.append(parts[0])
            continue
        close = difflib.get_close_matches(key, list(lower), n=1, cutoff=0.6)
        if close and len(parts) <= 1:
            out.append(lower[close[0]])
            continue
        hint = f" (it matches {', '.join(parts[:4])})" if parts else ""
        raise CommandError(f"unknown metric {name!r}{hint}; this run logs: {', '.join(known) or 'nothing yet'}")
    return list(dict.fromkeys(out))


@command("select_metrics", f"Choose the metrics the charts show (up to {MAX_CHARTS}); names may be approximate.",
         "view", {"names": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, ("names",))
def select_metrics(s: Session, a: dict[str, Any]) -> Reply:
    view = s.view(s.target({}))
    with s.store.lock:
        known = view.metrics.names()
    names = match_metrics(a["names"], known)
    if len(names) > MAX_CHARTS:
        raise CommandError(f"at most {MAX_CHARTS} charts at once ({len(names)} asked for)")
    s.settings.metrics = names
    s.settings.user_chose_metrics = True
    s.save_settings()
    return Reply("charting " + ", ".join(names), redraw={"charts"})


@command("set_chart_options", "Turn smoothing (TensorBoard's debiased EMA, weight 0-0.999) and a logarithmic y "
         "axis on or off.", "view",
         {"smoothing": {"type": "boolean"}, "smoothing_weight": {"type": "number", "minimum": 0, "maximum": 0.999},
          "log_y": {"type": "boolean"}, "toggle": {"type": "string", "enum": ["smoothing", "log_y"]}})
def set_chart_options(s: Session, a: dict[str, Any]) -> Reply:
    st = s.settings
    if a.get("toggle") == "smoothing":
        st.smoothing = not st.smoothing
    if a.get("toggle") == "log_y":
        st.log_y = not st.log_y
    if "smoothing_weight" in a:
        st.smoothing_weight, st.smoothing = float(a["smoothing_weight"]), True
    if "smoothing" in a:
        st.smoothing = bool(a["smoothing"])
    if "log_y" in a:
        st.log_y = bool(a["log_y"])
    s.save_settings()
    return Reply(f"smoothing {'on' if st.smoothing else 'off'} (weight {st.smoothing_weight:g}) · "
                 f"log-y {'on' if st.log_y else 'off'}", redraw={"charts"})


def describe_series(steps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Count, first/last/min/max/mean, non-finite count, and the trend (least-squares slope per 100 steps)."""
    finite = np.isfinite(values)
    out: dict[str, Any] = {"points": int(len(values)), "non_finite": int((~finite).sum())}
    if not finite.any():
        return out
    x, y = steps[finite].astype(np.float64), values[finite]
    out.update(first=float(y[0]), last=float(y[-1]), min=float(y.min()), max=float(y.max()), mean=float(y.mean()),
               first_step=int(x[0]), last_step=int(x[-1]))
    if len(y) >= 3 and x[-1] > x[0]:
        slope = float(np.polyfit(x, y, 1)[0])
        out["slope_per_100_steps"] = slope * 100
        spread = float(np.std(y)) or 1.0
        change = slope * (x[-1] - x[0]) / spread
        out["trend"] = "falling" if change < -0.5 else "rising" if change > 0.5 else "flat"
    return out


@command("get_metrics", "Summary statistics and trend of named metrics over a step range (all logged metrics if "
         "none named).", "read",
         {"run_id": {"type": "string"}, "names": {"type": "array", "items": {"type": "string"}},
          "start": {"type": "number"}, "end": {"type": "number"}})
def get_metrics(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    view = s.view(run_id)
    with s.store.lock:
        known = view.metrics.names()
        names = match_metrics(a["names"], known) if a.get("names") else known[:12]
        lo, hi = a.get("start", -np.inf), a.get("end", np.inf)
        rows, data = [], {}
        for name in names:
            steps, values = view.metrics.series[name].snapshot()
            keep = (steps >= lo) & (steps <= hi)
            d = describe_series(steps[keep], values[keep])
            data[name] = d
            if "last" not in d:
                rows.append(f"| {name} | {d['points']} | – | – | – | – | {d['non_finite']} NaN/Inf |")
                continue
            rows.append(f"| {name} | {d['points']} | {format_value(d['first'])} → {format_value(d['last'])} | "
                        f"{format_value(d['min'])} | {format_value(d['max'])} | {format_value(d['mean'])} | "
                        f"{d.get('trend', '–')}" + (f", {d['non_finite']} NaN/Inf" if d["non_finite"] else "") + " |")
    if not rows:
        return Reply(f"`{run_id}` has no metrics yet", data={})
    window = "" if "start" not in a and "end" not in a else f" (steps {a.get('start', '…')}–{a.get('end', '…')})"
    head = f"`{run_id}`{window}\n\n| metric | points | first → last | min | max | mean | trend |\n|---|---|---|---|---|---|---|"
    return Reply(head + "\n" + "\n".join(rows), data=data)


def _zoom_args(args: list[str]) -> dict[str, Any]:
    if len(args) != 2:
        raise CommandError("usage: /zoom A B (steps)")
    try:
        lo, hi = float(args[0]), float(args[1])
    except ValueError:
        raise CommandError("usage: /zoom A B, where A and B are step numbers") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CommandError("zoom steps must be finite numbers")
    if hi <= lo:
        raise CommandError("zoom range must have A < B")
    return {"start": lo, "end": hi}


def _metrics_args(args: list[str]) -> dict[str, Any]:
    names = [n.strip() for n in ",".join(args).split(",") if n.strip()]
    if not names:
        raise CommandError("usage: /metrics name1,name2 (up to 4; names with spaces in quotes)")
    return {"names": names}


def _smooth_args(args: list[str]) -> dict[str, Any]:
    if not args:
        return {"toggle": "smoothing"}
    try:
        weight = float(args[0])
    except ValueError:
        raise CommandError("usage: /smooth [weight between 0 and 0.999]") from None
    if not 0 <= weight <= 0.999:
        raise CommandError("smoothing weight must be between 0 and 0.999")
    return {"smoothing_weight": weight}


slash("zoom", "zoom_metrics", "/zoom A B", "show steps A to B on every chart", _zoom_args)
slash("reset", "zoom_metrics", "/reset", "show every step again", lambda args: {"reset": True})
slash("metrics", "select_metrics", "/metrics a,b", "chart these metrics (up to 4)", _metrics_args)
slash("smooth", "set_chart_options", "/smooth [w]", "toggle smoothing, or set its weight (0–0.999)", _smooth_args)
slash("logy", "set_chart_options", "/logy", "toggle a logarithmic y axis", lambda args: {"toggle": "log_y"})
