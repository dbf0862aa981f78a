"""The merge table: val_bpb of each model on each corpus's validation split, as markdown and PNG.

Every cell comes from `bitnet.evaluate.evaluate_bpb` on the fixed validation bytes, the same
number a training run prints and the evaluator re-computes, so the table compares like with
like.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class BpbTable:
    models: tuple[str, ...]  # row labels, e.g. base, specialist names, merged
    corpora: tuple[str, ...]  # column labels (corpus specs)
    values: tuple[tuple[float, ...], ...]  # values[model][corpus], val_bpb

    def value(self, model: str, corpus: str) -> float:
        return self.values[self.models.index(model)][self.corpora.index(corpus)]

    def to_dict(self) -> dict:
        return {"models": list(self.models), "corpora": list(self.corpora),
                "val_bpb": [list(row) for row in self.values]}

    def markdown(self) -> str:
        """A markdown table; the best (lowest) value of each column in bold."""
        best = [min(row[j] for row in self.values) for j in range(len(self.corpora))]
        lines = ["| model | " + " | ".join(f"val_bpb on {c}" for c in self.corpora) + " |",
                 "|---|" + "---:|" * len(self.corpora)]
        for name, row in zip(self.models, self.values, strict=True):
            cells = [f"**{v:.4f}**" if v == best[j] else f"{v:.4f}" for j, v in enumerate(row)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, title: str) -> Path:
        """Grouped bars: one group per corpus, one bar per model (lower is better)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        width = 0.8 / len(self.models)
        fig, ax = plt.subplots(figsize=(4.2 + 0.45 * len(self.models) * len(self.corpora), 4.2))
        for i, (name, row) in enumerate(zip(self.models, self.values, strict=True)):
            xs = [j + (i - (len(self.models) - 1) / 2) * width for j in range(len(self.corpora))]
            bars = ax.bar(xs, row, width, label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.set_xticks(range(len(self.corpora)), [_short(c) for c in self.corpora])
        ax.set_ylabel("val_bpb (lower is better)")
        ax.set_title(title, fontsize=10)
        low = min(min(row) for row in self.values)
        ax.set_ylim(max(0.0, low * 0.9), max(max(row) for row in self.values) * 1.05)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the bars
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def bpb_table(models: Sequence[tuple[str, nn.Module]], corpora: Sequence[str],
              on_cell: Callable[[str, str], None] | None = None) -> BpbTable:
    """Evaluate every model on every corpus's validation split (`on_cell` after each cell)."""
    from bitnet.data import load_corpus
    from bitnet.evaluate import evaluate_bpb

    vals = {spec: load_corpus(spec).val for spec in dict.fromkeys(corpora)}
    rows = []
    for name, model in models:
        seq_len = model.config.max_position_embeddings
        row = []
        for spec in corpora:
            row.append(round(evaluate_bpb(model, vals[spec], seq_len)[0], 6))
            if on_cell is not None:
                on_cell(name, spec)
        rows.append(tuple(row))
    return BpbTable(tuple(n for n, _ in models), tuple(corpora), tuple(rows))


def _short(corpus: str) -> str:
    """text:/a/long/path/topic -> text:topic, for axis labels."""
    return f"text:{Path(corpus[5:]).name}" if corpus.startswith("text:") else corpus
