"""One look for every figure of a report: sizes for a paper's column and page, fonts, colours, saving.

* ``COLUMN`` (3.3 in) and ``PAGE`` (6.9 in) are the CVPR column and text widths; a figure is drawn at the
  width it is printed at, so the font sizes below are the printed sizes (``MIN_FONT`` = 8 pt at least).
* ``context()`` is the rcParams context manager every figure is drawn in (``figure()`` opens one in it).
* ``preset_style(name)`` gives a preset its fixed colour and marker: the ladder (finetune, baseline, cn,
  cn_lf, lucir, lucir_cbf, joint) has fixed entries of the Okabe-Ito colour-blind-safe palette, any other
  name a deterministic fallback picked by hashing the name (never by its position in a figure).
* ``fmt_value`` prints a parameter value with 3 significant digits (labels, legends, tick labels).
* ``save(fig, path_without_ext, formats)`` writes PNG (300 dpi), PDF and SVG, each atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLUMN = 3.3   # inches: one column of a two-column paper (CVPR)
PAGE = 6.9     # inches: the full text width
MIN_FONT = 8.0
DPI = 300
FORMATS = ("png", "pdf", "svg")

#: Okabe & Ito (2008), safe for the common colour-vision deficiencies
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
#: the ladder's fixed colour and marker (the method of the paper in blue, the upper bound in black)
PRESETS: dict[str, dict[str, str]] = {
    "finetune": {"color": OKABE_ITO["vermillion"], "marker": "v"},
    "baseline": {"color": OKABE_ITO["orange"], "marker": "s"},
    "cn": {"color": OKABE_ITO["sky"], "marker": "^"},
    "cn_lf": {"color": OKABE_ITO["green"], "marker": "D"},
    "lucir": {"color": OKABE_ITO["blue"], "marker": "o"},
    "lucir_cbf": {"color": OKABE_ITO["purple"], "marker": "P"},
    "joint": {"color": OKABE_ITO["black"], "marker": "*"},
}
#: line styles: LUCIR+CBF dashed and LUCIR drawn on top, so neither hides the other where they overlap
LINESTYLES = {"lucir_cbf": "--", "joint": ":", "finetune": "-.", "baseline": "-.", "cn": "-", "cn_lf": "-",
              "lucir": "-"}
ZORDER = {"lucir": 5, "lucir_cbf": 4}
#: for names outside the ladder (Paul Tol's "muted" scheme, also colour-blind safe; none equals a ladder entry)
FALLBACK_COLORS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
                   "#AA4499", "#777777")
FALLBACK_MARKERS = ("X", "h", "<", ">", "p", "d", "8", "H")
#: roles in the search figures
ROLE = {"complete": OKABE_ITO["blue"], "pruned": "#888888", "best": OKABE_ITO["vermillion"],
        "zero": "#444444", "ci": OKABE_ITO["blue"]}
SEQUENTIAL = "viridis"  # trial number

RC: dict[str, Any] = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 9, "font.family": "DejaVu Sans",
    "axes.linewidth": 0.6, "lines.linewidth": 1.2, "lines.markersize": 4, "patch.linewidth": 0.5,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 3, "ytick.major.size": 3,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.axisbelow": True,
    "axes.spines.top": False, "axes.spines.right": False, "axes.facecolor": "white",
    "figure.facecolor": "white", "legend.frameon": False, "legend.handlelength": 1.6,
    "errorbar.capsize": 2, "savefig.dpi": DPI, "figure.dpi": 100,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",  # editable text in PDF / SVG
    "figure.constrained_layout.use": True,
}


@contextlib.contextmanager
def context() -> Iterator[None]:
    """The rcParams every report figure is drawn in."""
    with plt.rc_context(RC):
        yield


def figure(width: float = COLUMN, height: float | None = None, nrows: int = 1, ncols: int = 1,
           **kw: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` at a printed width (``COLUMN`` or ``PAGE``) in the report style (constrained layout).

    The style's rcParams are applied while the figure is created; call it inside ``context()`` so the
    text drawn afterwards gets them too."""
    height = height if height is not None else width * 0.72
    with context():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)
    return fig, axes


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big")


def preset_style(name: Any) -> dict[str, str]:
    """{"color", "marker"} of a preset: fixed for the ladder, a deterministic hash pick otherwise."""
    name = str(name)
    if name in PRESETS:
        return dict(PRESETS[name])
    h = _hash(name)
    return {"color": FALLBACK_COLORS[h % len(FALLBACK_COLORS)],
            "marker": FALLBACK_MARKERS[(h // len(FALLBACK_COLORS)) % len(FALLBACK_MARKERS)]}


def line_style(name: Any) -> dict[str, Any]:
    """{"color", "marker", "ls", "zorder"} of a preset's line in a curve figure."""
    st = preset_style(name)
    return {**st, "ls": LINESTYLES.get(str(name), "-"), "zorder": ZORDER.get(str(name), 3)}


def preset_color(name: Any) -> str:
    return preset_style(name)["color"]


def series_colors(n: int) -> list:
    """``n`` distinguishable colours for series that share a preset (configurations of one search)."""
    if n <= len(FALLBACK_COLORS):
        return list(FALLBACK_COLORS[:n])
    cmap = plt.get_cmap(SEQUENTIAL)
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def fmt_value(v: Any, digits: int = 3) -> str:
    """A parameter value for a label: floats with ``digits`` significant digits, the rest as ``str``."""
    try:
        import numpy as np

        if isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, np.integer):
            v = int(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def enforce_min_font(fig: Figure, size: float = MIN_FONT) -> None:
    """Raise every text of ``fig`` (titles, labels, ticks, legends, annotations) to at least ``size`` pt:
    for figures drawn by other libraries (Optuna) with their own font sizes."""
    for t in fig.findobj(matplotlib.text.Text):
        if t.get_fontsize() < size:
            t.set_fontsize(size)


def save(fig: Figure, path_without_ext: str | os.PathLike, formats: Iterable[str] = FORMATS,
         dpi: int = DPI) -> list[Path]:
    """Write ``fig`` as ``<path>.<fmt>`` for each format (PNG at ``dpi``), each to a temporary name renamed
    into place (a crash never leaves a half-written figure); close the figure; return the paths."""
    from lucir.checkpoint import atomic_write_bytes

    stem = Path(path_without_ext)
    if stem.suffix.lower().lstrip(".") in FORMATS:
        stem = stem.with_suffix("")
    formats = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"figure formats {bad} not supported; allowed: {', '.join(FORMATS)}")
    out = []
    try:
        for fmt in formats:
            buf = io.BytesIO()
            with context():  # at the figure's own size (no bbox_inches="tight": the width is the printed one)
                fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
            path = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write_bytes(path, buf.getvalue())
            out.append(path)
    finally:
        plt.close(fig)
    return out
