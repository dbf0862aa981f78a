"""A table for the review commands: a rich table on a terminal, tab-separated lines elsewhere.

Piped into grep, awk or a file, a rich table would be cut to 80 columns with "…"; the
tab-separated form prints every value whole, one row per line, under a header line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


@dataclass
class Listing:
    title: str
    columns: list[tuple[str, str]]  # (name, justify)
    rows: list[list[Cell]] = field(default_factory=list)
    wrap: tuple[str, ...] = ()  # columns that may wrap on a terminal (the others never do)

    def __rich__(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for name, justify in self.columns:
            table.add_column(name, justify=justify, no_wrap=name not in self.wrap)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*row)
        return table

    def tsv(self) -> str:
        lines = [[name for name, _ in self.columns]]
        lines += [[_plain(cell) for cell in row] for row in self.rows]
        return "".join("\t".join(line) + "\n" for line in lines)


def print_listing(console: Console, listing: Listing) -> None:
    """The table on a terminal; whole values, tab-separated, anywhere else."""
    if console.is_terminal:
        console.print(listing)
    else:
        console.file.write(listing.tsv())
        console.file.flush()


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.split()) if "\t" in text or "\n" in text else text
