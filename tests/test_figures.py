"""Every figure an experiment saves is fit for a paper: axis labels, legends outside the
data, labelled reference lines, PNG at print resolution beside a vector PDF."""

from __future__ import annotations

import matplotlib
import pytest

from flowkit import cli, plotting

matplotlib.use("Agg")

QUICK = {
    "demo": (["demo"], {"snapshots"}),
    "toy": (["reproduce", "toy", "--steps", "4", "--critic-steps", "5"],
            {"figure2", "wgangp", "w2"}),
    "cg": (["reproduce", "cg", "--gan-iters", "20", "--saddle-steps", "50"],
           {"saddle", "gan_w2"}),
    "games": (["reproduce", "games", "--steps", "200"], {"interaction"}),
    "noisy-mmd": (["reproduce", "noisy-mmd", "--seeds", "2"], {"mmd2"}),
    "kernelized-flow": (["reproduce", "kernelized-flow"], {"curves"}),
    "divergences": (["reproduce", "divergences"], {"w2_time", "particles"}),
    "digits": (["reproduce", "digits"],
               {"pretrain", "figure3", "samples_start", "samples_algorithm_1",
                "samples_algorithm_1_mmd", "samples_wgan-gp_continued", "samples_real"}),
    "cg-digits": (["reproduce", "cg-digits"], {"fd"}),
}
NEEDS_SKLEARN = {"digits", "cg-digits"}  # the digits data set and metrics


@pytest.fixture
def saved_figures(monkeypatch):
    seen: dict[str, list[str]] = {}
    monkeypatch.setattr(plotting, "FIGURE_HOOKS",
                        [lambda fig, stem: seen.setdefault(stem, plotting.figure_problems(fig))])
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK))
def test_experiment_figures_are_paper_ready(tmp_path, capsys, saved_figures, name):
    if name in NEEDS_SKLEARN:
        pytest.importorskip("sklearn")
    argv, stems = QUICK[name]
    assert cli.main([*argv, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert set(saved_figures) == stems
    assert {stem: p for stem, p in saved_figures.items() if p} == {}
    (run,) = tmp_path.iterdir()
    from PIL import Image

    for stem in stems:
        assert (run / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        with Image.open(run / f"{stem}.png") as png:
            dpi = png.info.get("dpi", (0, 0))[0]
            assert round(dpi) == plotting.PRINT_DPI and png.width >= 900, (stem, png.size)


def test_figure_problems_finds_what_is_missing():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 2, 3], label="a")
    ax.plot([0, 1, 2], [2, 3, 4], label="b")
    ax.axhline(1.5)
    ax.legend(loc="center")  # inside, over the curves
    problems = plotting.figure_problems(fig)
    assert any("no x label" in p for p in problems)
    assert any("no y label" in p for p in problems)
    assert any("unlabelled reference line" in p for p in problems)
    assert any("legend overlaps" in p for p in problems)
    plt.close(fig)

    fig, (ax,) = plotting.figure()
    plotting.plot_curves(ax, {"a": ([0, 1, 2], [1, 2, 3]), "b": ([0, 1, 2], [[1, 2, 3],
                                                                            [2, 3, 4]])})
    plotting.reference_line(ax, 1.5, "reference")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    plotting.place_legend(fig)
    assert plotting.figure_problems(fig) == []
    # identical curves get different line styles and markers; seeds get a band
    a, b = ax.lines[:2]
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())
    assert len(ax.collections) == 1
    assert "mean of 2" in b.get_label()
    plt.close(fig)


def test_an_image_grid_needs_no_axis_labels_but_a_hidden_plot_does():
    fig, (ax,) = plotting.figure()
    ax.imshow([[0.0, 1.0], [1.0, 0.0]])
    ax.axis("off")
    assert plotting.figure_problems(fig) == []
    ax.plot([0, 1], [1, 0], label="a curve")  # data drawn on hidden axes stays checked
    assert any("no x label" in p for p in plotting.figure_problems(fig))
    matplotlib.pyplot.close(fig)


def test_log_axis_ticks_read_as_plain_numbers():
    fig, (ax,) = plotting.figure()
    ax.plot([0, 1], [0.2, 0.8])
    plotting.log_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all("times" not in lab and "^" not in lab for lab in labels), labels
    assert "0.5" in labels
    matplotlib.pyplot.close(fig)


def test_snapshot_particles_that_fit_the_data_stay_visible():
    # regression: the data crosses were drawn above the particles, so a flow whose
    # particles landed on the data (the Sinkhorn flow of examples/plot_1_divergences.py)
    # showed an empty-looking panel of data only
    import numpy as np
    import torch

    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 0.01
    fig = plotting.plot_snapshots({"fit": data.clone(), "start": data + 1.0}, data, lim=2.0,
                                  step_label="")
    for ax in fig.axes:
        by_label = {c.get_label(): c for c in ax.collections}
        assert by_label["particles"].get_zorder() > by_label["data"].get_zorder()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    blue = (rgb[..., 2] > rgb[..., 0] + 60) & (rgb[..., 2] > rgb[..., 1] + 20)
    left = blue[:, : rgb.shape[1] // 3]  # the "fit" panel (the legend sits on the right)
    assert left.sum() > 5, "the particles of the fitted panel are not visible"  # 0 before
    assert plotting.figure_problems(fig) == []
    matplotlib.pyplot.close(fig)


def test_snapshots_wrap_into_rows():
    import torch

    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    fig = plotting.plot_snapshots({f"m{i}": x + i for i in range(5)}, x, step_label="",
                                  ncols=3)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 5 and len(fig.axes) == 6
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2
    assert plotting.figure_problems(fig) == []
    with pytest.raises(ValueError, match="ncols"):
        plotting.plot_snapshots({"a": x}, ncols=0)
    matplotlib.pyplot.close(fig)


def test_log_axis_over_many_decades_keeps_only_powers_of_ten():
    # 1-2-5 ticks over six decades overlapped into an unreadable row (the divergences
    # figure's wall-time axis, 0.002 to 2000 s)
    fig, (ax,) = plotting.figure()
    ax.plot([0.002, 2000.0], [1.0, 2.0])
    plotting.log_axis(ax, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and not any(lab.lstrip("0.").startswith(("2", "5")) for lab in labels), labels
    matplotlib.pyplot.close(fig)


def test_a_legend_over_a_title_is_a_problem():
    # a long title runs past the axes' right edge, where an outside legend sits
    fig, (ax,) = plotting.figure(width=4.0, height=3.0)
    for k in range(6):
        ax.plot([0, 1], [k, k + 1], label=f"a rather long curve label {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.set_title("a title long enough to run past the right edge of the axes, and more")
    plotting.place_legend(fig)
    assert any("legend overlaps the title" in p for p in plotting.figure_problems(fig))
    fig.legends.clear()
    plotting.place_legend(fig, loc="outside lower center")
    assert plotting.figure_problems(fig) == []
