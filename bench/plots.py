"""Headline plots for the README, drawn from the saved benchmark results (no re-measuring).

    .venv/bin/python bench/plots.py

- ``docs/img/quality_per_stage.png``: Caltech-101 class-level mAP and P@10 per stage
  (bench/results/retrieval_quality.json, plus the default retrieval options from
  retrieval_options_class.json).
- ``docs/img/latency_vs_n.png``: single-query p50 latency against N per backend, each backend at its
  default setting (bench/results/vector_search.json).
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS, ROOT  # noqa: E402

IMG = ROOT / "docs" / "img"
#: Stages shown in the quality plot: (label, row name in retrieval_quality.json).
STAGES = [
    ("pixel 32x32\n(baseline)", "pixel 32x32"),
    ("CNN avg", "mobilenet_v2 avg"),
    ("CNN GeM", "mobilenet_v2 gem"),
    ("GeM + PCA-128", "mobilenet_v2 gem + PCA-128"),
]


def _rows(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def quality_plot() -> None:
    by_stage = {r["stage"]: r for r in _rows("retrieval_quality") if "stage" in r}
    labels, maps, p10s = [], [], []
    for label, stage in STAGES:
        if stage in by_stage and by_stage[stage].get("mAP") is not None:
            labels.append(label)
            maps.append(by_stage[stage]["mAP"])
            p10s.append(by_stage[stage]["P@10"])
    for row in _rows("retrieval_options_class"):  # the default options: DBA 3 + alpha-QE 3
        if row.get("scales") == "1" and row.get("PCA") == 128 and row.get("DBA n") == 3 and row.get("αQE n") == 3:
            labels.append("+ DBA 3, αQE 3\n(default)")
            maps.append(row["mAP all"])
            p10s.append(row["P@10 all"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], maps, 0.4, label="mAP")
    ax.bar([x + 0.2 for x in xs], p10s, 0.4, label="P@10")
    for x, m in zip(xs, maps):
        ax.text(x - 0.2, m + 0.01, f"{m:.3f}", ha="center", fontsize=7)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Caltech-101 class-level retrieval per stage (MobileNetV2, ImageNet weights)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "quality_per_stage.png", dpi=110)


def _default_row(rows: list[dict], n: int, prefix: str) -> dict | None:
    candidates = [r for r in rows if r["N"] == n and r["backend"].startswith(prefix)]
    preferred = [r for r in candidates if "(default)" in r["backend"]]
    return (preferred or candidates or [None])[0]


def latency_plot() -> None:
    rows = _rows("vector_search")
    sizes = sorted({r["N"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for label, prefix in [
        ("exact (numpy)", "exact numpy"),
        ("K-means IVF (default nprobe)", "kmeans IVF"),
        ("Milvus Lite FLAT", "Milvus Lite FLAT"),
        ("Milvus Lite IVF_FLAT", "Milvus Lite IVF_FLAT"),
    ]:
        points = [(n, row["p50 ms"]) for n in sizes if (row := _default_row(rows, n, prefix)) and row.get("p50 ms")]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors in the index (N), 128-d")
    ax.set_ylabel("p50 ms per query")
    ax.set_title("Single-query latency against N per backend (2-core CPU)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "latency_vs_n.png", dpi=110)


if __name__ == "__main__":
    IMG.mkdir(parents=True, exist_ok=True)
    quality_plot()
    latency_plot()
    print("wrote", IMG / "quality_per_stage.png", IMG / "latency_vs_n.png")
