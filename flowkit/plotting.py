"""Figures: one style for every experiment, and the plots they share.

Every figure of the command line goes through this module: :func:`figure` makes it in
the house style (print sizes, readable fonts, no top/right spines), :func:`plot_curves`
draws curves that stay distinguishable when they coincide (a line style and a marker
each) with a band over seeds where there are several, :func:`reference_line` draws a
labelled reference, :func:`place_legend` puts the legend outside the axes so it never
covers data, :func:`log_axis` gives a log axis readable ticks, and :func:`save_figure`
writes a PNG at print resolution beside a vector PDF. :func:`figure_problems` lists what
a figure lacks (axis labels, legends) and is what the figure tests check.

Matplotlib is imported inside the functions and the caller's backend is respected, so
importing flowkit never opens a window.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["plot_snapshots", "plot_metrics", "plot_curves", "figure", "style",
           "reference_line", "place_legend", "log_axis", "save_figure", "figure_problems",
           "FIGURE_HOOKS", "LINESTYLES", "MARKERS", "PRINT_DPI"]

#: Resolution of the PNG files (the PDF beside them is vector).
PRINT_DPI = 300
#: Line styles cycled over curves, so that coinciding curves stay visible.
LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
#: Markers cycled over curves, with the line styles.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Callables ``hook(fig, stem)`` run by :func:`save_figure` before a figure is written
#: (the figure tests register one to inspect every figure an experiment saves).
FIGURE_HOOKS: list[Callable[[Any, str], None]] = []

_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays editable in a paper's figure
    "savefig.dpi": PRINT_DPI,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings of every flowkit figure, for the ``with`` block."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None,
           height: float = 2.6, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes (always a flat array) in the house style.

    ``width`` defaults to 3.2 inches per column (one column of a two-column paper for a
    single panel); the layout is matplotlib's constrained layout, which keeps room for
    labels and for legends placed by :func:`place_legend`.
    """
    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width or 3.2 * ncols, height),
                                 squeeze=False, layout="constrained", **kwargs)
    return fig, axes.ravel()


def log_axis(ax: Any, which: str = "y") -> None:
    """A log scale whose ticks read as plain numbers: 1-2-5 ticks (0.2, 0.5, 1, 2) on
    ranges up to three decades, powers of ten beyond (where 1-2-5 labels would overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    class ReadableLogLocator(LogLocator):
        def tick_values(self, vmin: float, vmax: float) -> Any:
            wide = vmin > 0 and vmax > 0 and max(vmin, vmax) / min(vmin, vmax) > 10**3
            self.set_params(subs=(1.0,) if wide else (1.0, 2.0, 5.0))
            return super().tick_values(vmin, vmax)

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(ReadableLogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def reference_line(ax: Any, value: float, label: str, *, axis: str = "y") -> Any:
    """A labelled reference line (horizontal at ``y = value`` or vertical at ``x = value``)."""
    kw = {"color": "0.35", "ls": (0, (1, 2)), "lw": 1.0, "label": label, "zorder": 1}
    return ax.axhline(value, **kw) if axis == "y" else ax.axvline(value, **kw)


def place_legend(fig: Any, axes: Any = None, *, loc: str = "outside right upper",
                 ncols: int | None = None) -> Any:
    """One legend for the figure, outside the axes, with each label once.

    ``loc`` is one of matplotlib's ``"outside ..."`` placements (constrained layout makes
    room for it), so the legend never covers a curve. Below or above the axes the
    entries are laid out in ``ncols`` columns (default 3).
    """
    axes = fig.axes if axes is None else list(axes)
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if ncols is None:
        ncols = 3 if ("lower" in loc or "upper center" in loc) and "right" not in loc else 1
    return fig.legend(handles, labels, loc=loc, ncols=ncols)


def plot_curves(ax: Any, curves: Mapping[str, tuple[Sequence[float], Any]], *,
                band: str = "std", markevery: int | None = None) -> None:
    """Curves ``{label: (xs, ys)}``; ``ys`` is one curve or a list of curves (seeds).

    Each curve gets its own colour, line style and marker, so curves that coincide stay
    distinguishable; with several seeds the mean is drawn with a band of +- one standard
    deviation (``band="std"``) or the min-max range (``band="range"``).
    """
    import numpy as np

    for i, (label, (xs, ys)) in enumerate(curves.items()):
        arr = np.asarray(ys, dtype=float)
        runs = arr if arr.ndim == 2 else arr[None]
        mean = runs.mean(0)
        every = markevery or max(1, len(mean) // 8)
        (line,) = ax.plot(list(xs), mean, ls=LINESTYLES[i % len(LINESTYLES)],
                          marker=MARKERS[i % len(MARKERS)], markevery=(i % every, every),
                          label=label if len(runs) == 1 else f"{label} (mean of {len(runs)})")
        if len(runs) > 1:
            if band == "std":
                low, high = mean - runs.std(0, ddof=1), mean + runs.std(0, ddof=1)
            else:
                low, high = runs.min(0), runs.max(0)
            if ax.get_yscale() == "log":
                low = np.maximum(low, np.nanmin(runs[runs > 0]) if (runs > 0).any() else 1e-300)
            ax.fill_between(list(xs), low, high, color=line.get_color(), alpha=0.2, lw=0)


def _to_xy(x: Tensor) -> Any:
    return x.detach().flatten(1)[:, :2].to("cpu").numpy()


def plot_snapshots(snapshots: Mapping[Any, Tensor], data: Tensor | None = None, *,
                   title: str | None = None, lim: float | None = None,
                   step_label: str = "step", ncols: int | None = None) -> Any:
    """One panel per step with the particles (first two coordinates) over the data.

    Parameters
    ----------
    snapshots : mapping step -> particles
        E.g. ``{0: x0, 25: x25, 50: x50, 100: x100}``; keys may also be panel titles
        (with ``step_label=""``).
    data : Tensor, optional
        Target sample, drawn as small grey crosses *under* the particles in every panel:
        data left uncovered shows, and particles that sit on the data stay visible (drawn
        above, the crosses hid a well-fitted flow); a legend outside the panels names both.
    title : str, optional
        Title above the panels.
    lim : float, optional
        Every panel shows ``[-lim, lim]^2``.
    step_label : str
        What the snapshot keys count (``"step"``, ``"critic step"``).
    ncols : int, optional
        Panels per row (default: all in one row); more snapshots wrap into rows.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from flowkit.validation import check_int

    cols = len(snapshots) if ncols is None else min(check_int(ncols, "ncols"), len(snapshots))
    with style():
        return _plot_snapshots(snapshots, data, title, lim, step_label, max(cols, 1))


def _plot_snapshots(snapshots: Mapping[Any, Tensor], data: Tensor | None, title: str | None,
                    lim: float | None, step_label: str, ncols: int) -> Any:
    nrows = -(-len(snapshots) // ncols)
    fig, axes = figure(ncols, nrows, width=1.75 * ncols + 1.1, height=2.1 * nrows,
                       sharex=True, sharey=True)
    ref = None if data is None else _to_xy(data)
    for ax in axes[len(snapshots):]:
        ax.set_visible(False)
    for i, (ax, (step, x)) in enumerate(zip(axes, snapshots.items())):
        p = _to_xy(x)
        ax.scatter(p[:, 0], p[:, 1], s=3, c="tab:blue", lw=0, alpha=0.7, label="particles",
                   zorder=3)
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=5, c="0.45", marker="x", lw=0.4,
                       label="data", zorder=2)
        ax.set_title(f"{step_label} {step}".strip())
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.tick_params(labelbottom=True)
        if i % ncols == 0:
            ax.set_ylabel("$x_2$")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    place_legend(fig, axes[:1])
    if title:
        fig.suptitle(title)
    return fig


def plot_metrics(curves: Mapping[str, tuple[Sequence[float], Any]], *,
                 xlabel: str = "step", ylabel: str = "", logy: bool = True,
                 title: str | None = None,
                 references: Mapping[str, float] | None = None) -> Any:
    """Metric curves ``{label: (xs, ys)}`` on one axis, in the house style.

    ``ys`` may hold one curve per seed (a band is drawn, see :func:`plot_curves`);
    ``references`` are labelled horizontal lines ``{label: value}``. Log scale by default.
    """
    with style():
        return _plot_metrics(curves, xlabel, ylabel, logy, title, references)


def _plot_metrics(curves: Mapping[str, tuple[Sequence[float], Any]], xlabel: str, ylabel: str,
                  logy: bool, title: str | None, references: Mapping[str, float] | None) -> Any:
    fig, (ax,) = figure(width=4.6)
    if logy:
        log_axis(ax)
    plot_curves(ax, curves)
    for label, value in (references or {}).items():
        reference_line(ax, value, label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    place_legend(fig)
    return fig


def save_figure(fig: Any, folder: Any, stem: str, *, formats: Sequence[str] = ("png", "pdf"),
                close: bool = True) -> list[Path]:
    """Write ``fig`` as ``stem.png`` (``PRINT_DPI``) and ``stem.pdf`` (vector) into a run folder.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    folder : flowkit.RunFolder or path
        A run folder (files are never overwritten) or a directory.
    stem : str
        File name without extension.
    formats : sequence of str
        Extensions to write.
    close : bool
        Close the figure afterwards (long runs make many).

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib.pyplot as plt

    for hook in FIGURE_HOOKS:
        hook(fig, stem)
    written = []
    with style():
        for ext in formats:
            name = f"{stem}.{ext}"
            target = folder.file(name) if hasattr(folder, "file") else Path(folder) / name
            fig.savefig(target, dpi=PRINT_DPI, bbox_inches="tight")
            written.append(Path(target))
    if close:
        plt.close(fig)
    return written


def figure_problems(fig: Any) -> list[str]:
    """What a figure lacks to be pasted into a paper; empty when nothing.

    Checked: every axes with data has an x label, and a y label unless it shares the y
    axis of a labelled panel in its row (an axes drawn without axis lines, such as an
    image grid with ``ax.axis("off")``, shows no labels and needs none); when an axes
    holds more than one labelled line or collection a legend exists; no legend overlaps an
    axes (legends go outside) or a title; every reference line (a labelled ``axhline``/``axvline``)
    has a label.
    """
    problems = []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [leg for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg]
    legend_labels = {t.get_text() for leg in legends for t in leg.get_texts()}
    for k, ax in enumerate(fig.axes):
        if not ax.has_data():
            continue
        name = f"axes {k} ({ax.get_title() or 'untitled'})"
        if not ax.axison and not (ax.lines or ax.collections):
            continue  # a picture (image grid): nothing to label
        if not ax.get_xlabel():
            problems.append(f"{name}: no x label")
        shared = ax.get_shared_y_axes().get_siblings(ax)
        if not ax.get_ylabel() and not any(o.get_ylabel() for o in shared if o is not ax):
            problems.append(f"{name}: no y label")
        labelled = [a.get_label() for a in [*ax.lines, *ax.collections]
                    if not a.get_label().startswith("_")]
        if len(labelled) > 1 and not legends:
            problems.append(f"{name}: {len(labelled)} labelled curves and no legend")
        missing = [lab for lab in labelled if legends and lab not in legend_labels
                   and not any(t.startswith(lab) for t in legend_labels)]
        if missing:
            problems.append(f"{name}: {missing} not in any legend")
        for line in ax.lines:
            xs, ys = line.get_xdata(), line.get_ydata()
            is_reference = len(xs) == 2 and (tuple(xs) == (0, 1) or tuple(ys) == (0, 1))
            if is_reference and line.get_label().startswith("_"):
                problems.append(f"{name}: an unlabelled reference line")
    axes_boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.has_data()]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ab in axes_boxes:
            if box.overlaps(ab) and not _inside_empty(box, ab):
                problems.append("a legend overlaps an axes")
                break
        for title in (ax.title for ax in fig.axes):
            if title.get_text() and box.overlaps(title.get_window_extent(renderer)):
                problems.append(f"a legend overlaps the title {title.get_text()!r}")
                break
    return problems


def _inside_empty(box: Any, ab: Any) -> bool:
    # touching edges (constrained layout puts an outside legend flush with the axes)
    return math.isclose(box.x0, ab.x1, abs_tol=1.0) or math.isclose(box.y1, ab.y0, abs_tol=1.0)
