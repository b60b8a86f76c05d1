"""Helpers shared by the benchmark scripts: data locations, timing, table output into the docs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CALTECH = SHARED / "data" / "caltech101"
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / "cache"


def seed_torch_cache() -> None:
    """Use the team's offline torch cache when TORCH_HOME is not set (users download as usual)."""
    if "TORCH_HOME" not in os.environ and (SHARED / "models" / "torch").is_dir():
        os.environ["TORCH_HOME"] = str(SHARED / "models" / "torch")


def caltech_split(name: str) -> list[tuple[str, str]]:
    """(absolute path, label) for each line of train.txt / test.txt; Faces_easy merged into Faces."""
    if not CALTECH.is_dir():
        raise SystemExit(f"Caltech-101 not found at {CALTECH}; benchmarks need the team share ../shared")
    rows = []
    for line in (CALTECH / f"{name}.txt").read_text().split():
        label = line.split("/")[-2]
        rows.append((str(CALTECH / "101_ObjectCategories" / line), "Faces" if label == "Faces_easy" else label))
    return rows


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with the given column order."""

    def fmt(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, rows: list[dict], table: str, meta: dict) -> None:
    """Save raw results (JSON) and the markdown table, then splice the table into the docs."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    splice_into_readme(name, table)
    print(table)


DOCS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")


def splice_into_readme(name: str, table: str) -> None:
    """Replace the text between ``<!-- bench:NAME -->`` markers in README.md and docs/benchmarks.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    for doc in DOCS:
        text = doc.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            tail = rest.split(end, 1)[1]
            doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":  # re-splice every saved table (e.g. after editing the README by hand)
    for md in sorted(RESULTS.glob("*.md")):
        splice_into_readme(md.stem, md.read_text().strip())
