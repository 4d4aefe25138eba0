"""Figure saving (selfmodels.report.figures): PNGs written atomically, and plotting modules that leave the
user's matplotlib backend and pyplot state alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from selfmodels.report.figures import colormap, colors, save_figure, subplots

ROOT = Path(__file__).resolve().parents[1]


def test_save_figure_writes_a_png_atomically_and_returns_its_name(tmp_path):
    fig, axes = subplots(1, 2, figsize=(4, 2), squeeze=False)
    axes[0][0].plot([0, 1], [1, 0], color=colors()[0])
    axes[0][1].plot([0, 1], [0, 1], color=colormap("viridis", 3)(2))
    assert save_figure(fig, tmp_path / "sub" / "plot.png") == "plot.png"
    assert (tmp_path / "sub" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["plot.png"]  # no temporary file left behind


def test_a_pyplot_figure_is_closed_when_saved(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    assert plt.fignum_exists(fig.number)
    save_figure(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_plot_modules_keep_the_users_backend_and_never_load_pyplot(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')  # the user's (a notebook's) choice, made before our modules are imported\n"
        "import selfmodels.complexity.llc_plots, selfmodels.selfmodeling.plots, selfmodels.selfmodeling.report\n"
        "from selfmodels.report.figures import save_figure, subplots\n"
        "fig, ax = subplots()\n"
        "ax.plot([0, 1])\n"
        "save_figure(fig, sys.argv[1])\n"
        "assert matplotlib.get_backend().lower() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"  # a PNG still, rendered without switching the backend
