"""What the benchmarks share: a plain-text table of results."""

from __future__ import annotations

__all__ = ["print_table"]


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell; the first left-aligned, numbers right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(_row(header, widths))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(_row(r, widths))
