"""Inference runtimes side by side: PyTorch, ONNX Runtime (fp32) and ONNX Runtime int8 (static).

    .venv/bin/python bench/inference_runtimes.py [--images 256] [--quality]

Per backbone, in one run: the bare trunk + pooling on preloaded Caltech batches (images/s, the
three runtimes interleaved over several rounds, median), the end-to-end pipeline (files -> vectors),
and how close each runtime's GeM vectors are to PyTorch's (cosine). int8 is ONNX Runtime's static
QDQ quantisation (per-channel weights), calibrated on 64 Caltech *train* images. ``--quality`` also
embeds all of Caltech with MobileNetV2 int8 and reports mAP against the PyTorch vectors' mAP.
ResNets use random weights (speed does not depend on them; their cosines are not meaningful).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import Timer, caltech_split, markdown_table, seed_torch_cache, write_results

from revsearch import Embedder, EmbedderConfig
from revsearch.features.decode import load_image
from revsearch.features.trunks import OnnxTrunk

BACKBONES = [("mobilenet_v2", "IMAGENET1K_V1"), ("resnet18", None), ("resnet50", None)]
ROUNDS = 3


class Int8Embedder(Embedder):
    """An ONNX Runtime embedder whose trunk is statically quantised to int8 on calibration images."""

    def __init__(self, config: EmbedderConfig, calibration: np.ndarray):
        super().__init__(config)
        import onnxruntime
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        fp32: OnnxTrunk = self.trunk
        pre, int8 = fp32.path.with_suffix(".pre.onnx"), fp32.path.with_suffix(".int8.onnx")
        inputs = [self.network_input(calibration[i : i + 16]) for i in range(0, len(calibration), 16)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter({"images": x} for x in inputs)

            def get_next(self):
                return next(self.batches, None)

        quant_pre_process(str(fp32.path), str(pre))
        quantize_static(
            str(pre),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = fp32.session.get_session_options().intra_op_num_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        fp32.session = onnxruntime.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])


def prepared_batch(embedder: Embedder, paths: list[str]) -> np.ndarray:
    """Decoded, resized uint8 images, as the pipeline hands them to forward()."""
    return np.stack([embedder.prepare(load_image(p, min_side=embedder.min_side)) for p in paths])


def bare_rate(embedder: Embedder, batch: np.ndarray) -> float:
    with Timer() as t:
        embedder.forward(batch)
    return len(batch) / t.seconds


def bench_backbone(
    backbone: str, weights: str | None, paths: list[str], calib_paths: list[str], batch_size: int
) -> tuple[list[dict], dict[str, Embedder]]:
    config = dict(backbone=backbone, weights=weights, batch_size=batch_size)
    torch_e = Embedder(EmbedderConfig(**config, runtime="torch"))
    ort_e = Embedder(EmbedderConfig(**config, runtime="onnxruntime"))
    int8_e = Int8Embedder(EmbedderConfig(**config, runtime="onnxruntime"), prepared_batch(torch_e, calib_paths))
    embedders = {"torch fp32": torch_e, "onnxruntime fp32": ort_e, "onnxruntime int8": int8_e}
    batch = prepared_batch(torch_e, paths[:batch_size])
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    for e in embedders.values():
        e.forward(batch)  # warm-up
    for _ in range(ROUNDS):
        for name, e in embedders.items():
            rates[name].append(bare_rate(e, batch))
    reference = torch_e.embed_paths(paths, progress=False).vectors
    rows = []
    for name, e in embedders.items():
        with Timer() as t:
            vectors = e.embed_paths(paths, progress=False).vectors
        cosines = np.einsum("ij,ij->i", vectors, reference)
        bare = statistics.median(rates[name])
        rows.append(
            {
                "backbone": backbone,
                "runtime": name,
                "bare img/s": bare,
                "end-to-end img/s": len(paths) / t.seconds,
                "x torch (bare)": bare / statistics.median(rates["torch fp32"]),
                "cosine to torch (mean)": float(cosines.mean()),
                "cosine (min)": float(cosines.min()),
            }
        )
        print(rows[-1], flush=True)
    return rows, embedders


def int8_quality(embedders: dict[str, Embedder]) -> list[dict]:
    """Caltech-101 mAP of MobileNetV2 GeM vectors: PyTorch (cached features) against int8."""
    from features_cache import cnn_features
    from retrieval_quality import class_retrieval_task, evaluate

    db_paths, q_paths, labels = class_retrieval_task()
    ref_db = cnn_features(list(db_paths), "mobilenet_v2", "IMAGENET1K_V1")["gem"]
    ref_q = cnn_features(list(q_paths), "mobilenet_v2", "IMAGENET1K_V1")["gem"]
    int8 = embedders["onnxruntime int8"]
    db, q = int8.embed_paths(list(db_paths)).vectors, int8.embed_paths(list(q_paths)).vectors
    return [
        {"backbone": "mobilenet_v2", "runtime": name, "mAP": row["mAP"], "P@10": row["P@10"]}
        for name, row in (
            ("torch fp32", evaluate("torch", ref_db, ref_q, labels)),
            ("onnxruntime int8", evaluate("int8", db, q, labels)),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quality", action="store_true", help="also Caltech mAP of MobileNetV2 int8")
    args = parser.parse_args()
    seed_torch_cache()
    paths = [p for p, _ in caltech_split("test")[: args.images]]
    calib = [p for p, _ in caltech_split("train")[::96][:64]]
    rows, quality = [], []
    for backbone, weights in BACKBONES:
        backbone_rows, embedders = bench_backbone(backbone, weights, paths, calib, args.batch_size)
        rows += backbone_rows
        if args.quality and backbone == "mobilenet_v2":
            quality = int8_quality(embedders)
    columns = [
        "backbone",
        "runtime",
        "bare img/s",
        "x torch (bare)",
        "end-to-end img/s",
        "cosine to torch (mean)",
        "cosine (min)",
    ]
    table = markdown_table(rows, columns)
    if quality:
        quality_table = markdown_table(quality, ["runtime", "mAP", "P@10"])
        table += "\n\nCaltech-101 retrieval, MobileNetV2 GeM (no PCA):\n\n" + quality_table
    write_results("inference_runtimes", rows + quality, table, {"images": args.images, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
