"""Building blocks of ``report.md``: markdown tables, numbers, JSON lines, atomic PNG plots.

Each stage builds its own report section with these (a static ``report_section`` on the stage
class, see :mod:`carla_mr.stages`); :mod:`carla_mr.report` assembles the sections.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

from carla_mr.io import atomic_write_bytes


def read_jsonl(path: Path) -> list[dict]:
    """Every whole JSON line of ``path`` ([] when absent; a line cut by a crash is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def fmt(v: Any) -> str:
    """A table cell: '-' for None, 4 significant digits for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def md_table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_png(path: Path, draw: Callable[[Any], None], *, size: tuple[float, float] = (6.4, 3.6),
             legend_outside: bool = False) -> str:
    """Draw on one matplotlib Axes (``draw(ax)``), save ``path`` atomically; returns its name.

    ``legend_outside`` puts the legend to the right of the axes, never over the data.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        if legend_outside and ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path.name
