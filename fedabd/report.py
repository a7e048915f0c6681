"""Run folders: resolved config, metrics (JSON lines + CSV) and plots a person reads at a glance."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from .artifacts import atomic_write_text


class RunDir:
    """An output folder. Metrics rows are appended to ``metrics.jsonl`` as they come (nothing is
    lost if the run dies) and mirrored to ``metrics.csv``."""

    def __init__(self, path: str | Path, name: str = "metrics") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.path / f"{name}.jsonl"
        self.csv = self.path / f"{name}.csv"
        self.rows: list[dict] = []

    def write_json(self, name: str, obj) -> Path:
        p = self.path / name
        atomic_write_text(p, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        return p

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        self._write_csv()

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the rows (e.g. the final, complete list after a resumed run) in both files."""
        self.rows = list(rows)
        atomic_write_text(self.jsonl, "".join(json.dumps(r, default=float) + "\n" for r in self.rows))
        self._write_csv()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())


def plot_curves(rows: Sequence[dict], x: str, series: dict[str, Sequence[dict]] | None, path: str | Path,
                title: str = "", ys: Sequence[str] = ("acc", "asr")) -> Path:
    """Acc / ASR (in %) against ``x``. ``series`` maps a label to its rows (several runs in one
    plot); with ``series=None`` the single ``rows`` are plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = series or {"": rows}
    fig, axes = plt.subplots(1, len(ys), figsize=(5 * len(ys), 3.6), squeeze=False)
    for ax, y in zip(axes[0], ys):
        for label, rs in series.items():
            pts = [(r[x], 100 * r[y]) for r in rs if r.get(y) is not None and x in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label or y)
        ax.set_xlabel(x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{y.upper().replace('_', '-')} %")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
