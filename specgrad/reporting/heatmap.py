"""Pictures of where a gradient is wrong, for the HTML report.

A tensor is cut into 2-D slices over its last two axes, laid out as a grid: the batch axis
(or the leading axes together) down, the channel axis across. Three blocks of that grid,
one above the other: the analytical gradient, the numerical one (on one colour scale, so
a transposed or mis-signed gradient shows as a different pattern), and |difference| with
the out-of-bound elements dotted, so a border-only bug, a single wrong channel or one
wrong sample is visible at a glance. matplotlib is an optional extra (`specgrad[html]`);
`unavailable()` says why pictures cannot be drawn.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from specgrad.results import Evidence

#: at most this many slice rows and columns are drawn; where a tensor has more, those with
#: the largest share of their bound used are kept (in their order)
MAX_ROWS = 8
MAX_COLS = 12


@cache
def unavailable() -> str:
    """Why no pictures can be drawn ("" where they can)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return "matplotlib is not installed, so the report has no heatmaps (pip install 'specgrad[html]')"
    except Exception as exc:  # noqa: BLE001 - a broken install or setting (MPLBACKEND) must not stop the report
        return f"matplotlib cannot be loaded ({type(exc).__name__}: {exc}), so the report has no heatmaps"
    return ""


@dataclass(frozen=True)
class Grid:
    """A tensor as rows x cols panels of 2-D slices (shape [rows, cols, height, width]),
    which of the tensor's slices the panels are, and how to name them."""

    rows: tuple[int, ...]  # indices into the tensor's leading (row) slices
    cols: tuple[int, ...]
    row_count: int  # how many there are in all (rows is a selection where it is shorter)
    col_count: int
    row_label: str  # the axes the rows run over
    col_label: str
    lead_shape: tuple[int, ...]  # the shape of the row axes (several: their flat index)

    def name_row(self, r: int) -> str:
        if not self.lead_shape:
            return ""
        index = np.unravel_index(r, self.lead_shape)
        return f"{self.row_label}={', '.join(str(int(i)) for i in index)}"

    def name_col(self, c: int) -> str:
        return f"{self.col_label}={c}" if self.col_label else ""


def as_panels(array: np.ndarray) -> np.ndarray:
    """The tensor as [rows, cols, height, width]: a vector is one row of one panel, a
    matrix one panel, [C, H, W] one row of C panels, [N, C, H, W] N rows of C, and more
    leading axes are folded into the rows."""
    a = np.asarray(array)
    if a.ndim == 0:
        return a.reshape(1, 1, 1, 1)
    if a.ndim == 1:
        return a.reshape(1, 1, 1, -1)
    if a.ndim == 2:
        return a.reshape(1, 1, *a.shape)
    if a.ndim == 3:
        return a.reshape(1, *a.shape)
    return a.reshape(-1, *a.shape[-3:])


def grid(shape: tuple[int, ...], ratio: np.ndarray) -> Grid:
    """Which slices to draw: all of them up to MAX_ROWS x MAX_COLS, else the rows and
    columns whose worst element used the largest share of its bound."""
    panels = as_panels(np.nan_to_num(ratio, nan=-1.0, posinf=np.finfo(np.float64).max))
    r, c = panels.shape[:2]
    score_rows = panels.max(axis=(1, 2, 3))
    score_cols = panels.max(axis=(0, 2, 3))
    rows = _keep(score_rows, MAX_ROWS)
    cols = _keep(score_cols, MAX_COLS)
    lead = tuple(shape[:-3]) if len(shape) >= 4 else ()
    row_label = "dim0" if len(lead) == 1 else f"dims 0-{len(lead) - 1}"
    col_label = f"dim{len(lead)}" if len(shape) >= 3 else ""
    return Grid(rows, cols, r, c, row_label, col_label, lead)


def _keep(score: np.ndarray, limit: int) -> tuple[int, ...]:
    if score.size <= limit:
        return tuple(range(score.size))
    top = np.argsort(-score, kind="stable")[:limit]
    return tuple(int(i) for i in sorted(top))


def mosaic(panels: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...]) -> np.ndarray:
    """The chosen panels tiled into one 2-D array, one NaN row/column between neighbours
    (drawn over as a white gap): one image per block is what keeps a big tensor's picture
    fast to draw."""
    h, w = panels.shape[2:]
    out = np.full((len(rows) * (h + 1) - 1, len(cols) * (w + 1) - 1), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            out[i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = panels[r, c]
    return out


#: drawn over the heatmaps: values that are not finite (NaN or inf gradients), kept apart
#: from the grey of elements a sample left out
NON_FINITE = "#39ff14"


def png(ev: Evidence, title: str) -> bytes:
    """The heatmaps of one gradient check's evidence, as PNG bytes."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    g = grid(ev.shape, ev.ratio)
    checked = ~np.isnan(ev.error)
    analytical, numerical = as_panels(ev.analytical), as_panels(ev.numerical)
    error, ratio = as_panels(ev.error), as_panels(ev.ratio)
    h, w = analytical.shape[2:]
    scale = _finite_max(np.abs(np.concatenate([analytical.ravel(), numerical.ravel()])))
    worst = _finite_max(error.ravel())
    blocks = (
        ("analytical", analytical, "RdBu_r", -scale, scale),
        ("numerical", numerical, "RdBu_r", -scale, scale),
        (_difference_title(ev), error, "magma", 0.0, worst),
    )
    tiles = [mosaic(data, g.rows, g.cols) for _, data, *_ in blocks]
    shown = as_panels(checked)
    mask = mosaic(shown.astype(float), g.rows, g.cols) > 0  # checked elements (gaps: False)
    gaps = np.isnan(mosaic(np.zeros(analytical.shape), g.rows, g.cols))
    height, width = tiles[0].shape
    inches = min(12.0, max(4.0, 0.09 * width + 1.5))
    block = min(6.0, max(1.2, inches * height / max(width, 1) + 0.6))
    fig = Figure(figsize=(inches + 1.2, 3 * block + 0.8), dpi=80, layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(3, 1)
    for ax, tile, (name, _, cmap, lo, hi) in zip(axes, tiles, blocks, strict=True):
        finite = np.isfinite(tile)
        image = ax.imshow(
            np.ma.masked_where(~(finite & mask), tile),
            cmap=_cmap(cmap),
            vmin=lo,
            vmax=hi,
            aspect="auto",
            interpolation="nearest",
        )
        bad = mask & ~finite  # checked, but NaN or inf
        if bad.any():
            ax.imshow(
                np.ma.masked_where(~bad, np.ones_like(tile)),
                cmap=ListedColormap([NON_FINITE]),
                aspect="auto",
                interpolation="nearest",
            )
        if gaps.any():
            ax.imshow(  # dark between diverging panels (whose zero is white), white between the others
                np.ma.masked_where(~gaps, np.ones_like(tile)),
                cmap=ListedColormap(["#303030" if cmap == "RdBu_r" else "white"]),
                aspect="auto",
                interpolation="nearest",
            )
        if name.startswith("|"):  # the out-of-bound elements, dotted
            ys, xs = np.nonzero(np.nan_to_num(mosaic(ratio, g.rows, g.cols), nan=0.0, posinf=2.0) > 1)
            ax.scatter(
                xs, ys, s=max(1.0, 12.0 * 40 / max(width, height, 40)), c="cyan", marker="o", linewidths=0
            )
        ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(len(g.cols))])
        ax.set_xticklabels([g.name_col(c) for c in g.cols], fontsize=7)
        ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(len(g.rows))])
        ax.set_yticklabels([g.name_row(r) for r in g.rows], fontsize=7)
        ax.tick_params(length=0)
        ax.set_title(name + _shown(g), fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.9, aspect=20)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _difference_title(ev: Evidence) -> str:
    text = "|difference| (out of bound: dotted; NaN or inf: green; not checked: grey)"
    return text + "; at kinks: the distance to the one-sided interval" if ev.kinks else text


def _shown(g: Grid) -> str:
    parts = []
    if len(g.rows) < g.row_count:
        parts.append(f"{len(g.rows)} of {g.row_count} rows")
    if len(g.cols) < g.col_count:
        parts.append(f"{len(g.cols)} of {g.col_count} channels")
    return f" ({' and '.join(parts)}: those with the largest errors)" if parts else ""


def _finite_max(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 and math.isfinite(top) else 1.0


@cache
def _cmap(name: str):  # type: ignore[no-untyped-def]  # matplotlib's Colormap, imported lazily
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#bbbbbb")  # elements a sample left out
