"""Command line: ``revsearch index DIR`` and ``revsearch query IMAGE``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from revsearch.cli.display import json_path, printable
from revsearch.cli.mosaic import make_mosaic, save_mosaic
from revsearch.errors import RevsearchError
from revsearch.features.cnn import RUNTIMES, EmbedderConfig
from revsearch.features.factory import FEATURES, make_extractor, parse_scales
from revsearch.features.query_source import load_query_image
from revsearch.files import scan_images
from revsearch.folder.generations import CHECKPOINT, DEFAULT_INDEX_DIR
from revsearch.folder.index import BACKENDS, MANIFEST, IndexReport, SearchIndex
from revsearch.index.hits import Hit
from revsearch.index.registry import LEGACY_PIXEL
from revsearch.retrieval.options import MODES, RetrievalOptions
from revsearch.retrieval.regions import RegionHit

#: Milvus index types (the same as :data:`revsearch.index.milvus.INDEX_TYPES`, without importing pymilvus).
MILVUS_INDEX_TYPES = ["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"]
#: Largest CNN input side: at 4096 one image's first activations already take a GiB. The
#: smallest is 32, the CNN's total stride (a smaller input leaves no feature map to pool).
MAX_IMAGE_SIZE = 4096


def _print_report(report: IndexReport, total: int) -> None:
    for note in report.notes:
        print(f"note: {note}")
    print(f"{total} image files found: {report.summary()}")
    for path, reason in sorted(report.failures.items()):
        print(f"  skipped {printable(path)}: {reason}")


def _index_dir(args: argparse.Namespace) -> Path:
    """The index directory, made absolute once (the index then works from any working directory)."""
    return Path(os.path.abspath(args.index_dir))


def cmd_index(args: argparse.Namespace) -> int:
    side = round(args.image_size * max(args.scales))
    if side > MAX_IMAGE_SIZE:
        raise ValueError(
            f"--image-size times the largest of --scales gives a {side}-pixel input: at most {MAX_IMAGE_SIZE}"
        )
    paths, unreadable = scan_images(args.folders)
    index_dir = _index_dir(args)
    roots = sorted({os.path.abspath(f) for f in args.folders})
    if (index_dir / MANIFEST).exists() and not args.rebuild:
        index = SearchIndex.load(index_dir, token=args.token or "")
        if args.regions and index.regions is None:
            raise RevsearchError(
                f"the index in {printable(str(index_dir))} was built without regions: "
                "add --rebuild to build it anew with --regions"
            )
        scope, new_roots = _update_scope(index, roots, args)
        print(f"updating the existing index in {printable(str(index_dir))} (use --rebuild to start over)")
        if (index_dir / CHECKPOINT).exists():
            print("note: an interrupted --rebuild left its embeddings in partial/; run with --rebuild to finish it")
        report = index.sync(paths, progress=not args.quiet, scope=scope, roots=new_roots)
    else:
        features = "pixel" if args.backend == LEGACY_PIXEL else args.features
        cnn = {k: getattr(args, k) for k in ("backbone", "pooling", "image_size", "batch_size", "runtime", "scales")}
        weights = None if args.weights == "none" else args.weights
        description = {"type": features, "size": args.pixel_size, "weights": weights, "regions": args.regions}
        extractor = make_extractor({**description, **cnn})
        names = ("n_clusters", "nprobe", "uri", "index_type", "token", "db_name")
        options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        pca_dim = args.pca_dim or None  # 0: none
        index, report = SearchIndex.build(
            paths,
            index_dir,
            args.backend,
            extractor,
            pca_dim,
            args.whiten,
            progress=not args.quiet,
            chunk_size=args.chunk_size,
            roots=roots,
            options=_retrieval_options(args),
            **options,
        )
    report.failures.update(unreadable)
    _print_report(report, len(paths))
    regions = f", {len(index.regions.index)} region vectors" if index.regions is not None else ""
    print(f"index: {printable(str(index_dir))} ({len(index)} vectors{regions}, backend {index.backend.kind})")
    return 0


def _retrieval_options(args: argparse.Namespace) -> RetrievalOptions | None:
    """The retrieval options given on the command line over the defaults (None: the defaults)."""
    given = {k: getattr(args, k) for k in ("qe_n", "dba_n", "copy_pixels") if getattr(args, k) is not None}
    if args.backend == "pixel" or not given:
        return None  # the build's defaults (all off for the pixel backend)
    return RetrievalOptions.from_dict({**RetrievalOptions().to_dict(), **given})


def _update_scope(index: SearchIndex, roots: list[str], args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """What an update may remove (None: anything not found) and the folders the index covers after it."""
    if args.add:
        return roots, sorted(set(index.roots or []) | set(roots))
    if args.replace or index.roots is None or index.roots == roots:
        return None, roots
    built = ", ".join(printable(r) for r in index.roots)
    raise RevsearchError(
        f"the index in {printable(str(index.directory))} covers {built}, not the folders given: "
        "add --add to index them as well, or --replace to make the index cover only them"
    )


def cmd_query(args: argparse.Namespace) -> int:
    if args.regions and args.mode != "similar":
        raise RevsearchError("--regions finds the images that contain the query: it takes no --mode")
    if args.out:
        _check_writable(args.out)
    index = SearchIndex.load(_index_dir(args), token=os.environ.get("MILVUS_TOKEN", ""))
    # read (a URL fetched) once: the search and the mosaic use the same decoded image
    image = load_query_image(args.image, index.extractor.min_side, args.allow_private_urls)
    hits = index.query_regions(image, k=args.k) if args.regions else index.query(image, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps([_json_hit(h) for h in hits], indent=1))
    else:
        for rank, hit in enumerate(hits, 1):
            box = f"box={','.join(f'{v:.3f}' for v in hit.box)}  " if isinstance(hit, RegionHit) else ""
            print(f"{rank:3d}  {hit.distance:10.4f}  {box}{printable(hit.key)}")
    if args.out:
        save_mosaic(args.out, make_mosaic(image, hits))
        print(f"mosaic written to {printable(args.out)}")
    return 0


def _json_hit(hit: Hit) -> dict:
    """A hit as JSON: its path and distance, and a region hit's matched region and relative box."""
    region = {"region": hit.region, "box": list(hit.box)} if isinstance(hit, RegionHit) else {}
    return {**json_path(hit.key), "distance": hit.distance, **region}


def _check_writable(out: str) -> None:
    """Refuse a mosaic path that cannot be written before any work is done."""
    folder = Path(out).parent
    if Path(out).suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise RevsearchError(f"--out {printable(out)}: give a .jpg or .png file name")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK) or Path(out).is_dir():
        raise RevsearchError(
            f"--out {printable(out)}: cannot write there (missing or read-only folder); choose another path"
        )


def cmd_info(args: argparse.Namespace) -> int:
    index = SearchIndex.load(_index_dir(args))
    manifest, stale, check = index.manifest(), index.stale(), index.check()
    problems = []
    if check["manifest_items"] != check["store_vectors"] or check["only_in_store"] or check["only_in_manifest"]:
        problems.append(
            f"the manifest lists {check['manifest_items']} files but the vector store holds "
            f"{check['store_vectors']} vectors ({check['only_in_store']} not in the manifest, "
            f"{check['only_in_manifest']} missing)"
        )
    missing, extra, incomplete = (
        check.get(f"regions_{k}", 0) for k in ("only_in_manifest", "only_in_store", "incomplete")
    )
    if missing or extra or incomplete:
        problems.append(
            f"the region entries do not match the manifest (indexed files without them: {missing}, other files "
            f"with some: {extra}, files with other than {index.regions.per_image}: {incomplete})"
        )
    info = {"vectors": len(index), **{k: manifest[k] for k in ("extractor", "pca", "retrieval", "backend", "roots")}}
    info |= {"failures": len(index.failures), "missing_files": len(stale["missing"])}
    info |= {"changed_files": len(stale["changed"]), **check, "consistent": not problems}
    print(json.dumps(info, indent=1))
    if problems:
        print(f"revsearch: {'; '.join(problems)}: rebuild with revsearch index FOLDER --rebuild", file=sys.stderr)
        return 1
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    index = SearchIndex.load(_index_dir(args), token=args.source_token or "")
    before = index.backend.config().get("uri")
    from revsearch.index.milvus_bulk import LocalBulkStorage

    storage = LocalBulkStorage(args.bulk_dir) if args.bulk_dir else None
    index.move_to(
        args.uri,
        token=args.token or "",
        db_name=args.db_name or "",
        index_type=args.index_type,
        bulk_storage=storage,
        progress=not args.quiet,
    )
    print(
        f"moved {len(index)} vectors from {before} to {args.uri}; {args.index_dir} now uses it "
        "(the source collection is left as it was)"
    )
    return 0


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if value < low else f"at most {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _pca_dim(text: str) -> str | int:
    return text if text == "auto" else _whole(0)(text)


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not all(0 < s <= 4 for s in scales) or len(set(scales)) != len(scales):
        raise argparse.ArgumentTypeError(f"scales must be distinct numbers in (0, 4], got {text!r}")
    return scales


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"revsearch: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revsearch", description="Reverse image search over folders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index (or update the index of) image folders")
    arg, defaults = p.add_argument, RetrievalOptions()
    arg("folders", nargs="+", help="folders (searched recursively) or image files")
    arg("--index-dir", default=DEFAULT_INDEX_DIR, help="where the index is saved (default %(default)s)")
    arg(
        "--backend",
        choices=BACKENDS,
        default="milvus",
        help="index kind: exact, kmeans or milvus (default %(default)s: Milvus Lite); pixel = "
        "--features pixel --backend exact",
    )
    arg("--features", choices=FEATURES, default="cnn", help="cnn: a CNN descriptor (default); pixel: thumbnails")
    arg("--uri", help="Milvus URI: a Lite file (default <index-dir>/revsearch.db) or http://host:19530")
    token_help = "Milvus server token (user:password or API key; default $MILVUS_TOKEN; never saved)"
    arg("--token", default=os.environ.get("MILVUS_TOKEN"), help=token_help)
    arg("--db-name", help="Milvus database name on a server")
    arg("--index-type", choices=MILVUS_INDEX_TYPES, help="Milvus index type")
    arg("--backbone", default="resnet50", choices=["resnet50", "resnet18", "mobilenet_v2"])
    arg("--weights", default="DEFAULT", help="DEFAULT, a torchvision enum name, a .pth file, or none")
    arg("--pooling", default="gem", choices=["gem", "avg"])
    size_help = f"CNN input side, 32 to {MAX_IMAGE_SIZE} (default %(default)s)"
    arg("--image-size", type=_whole(32, MAX_IMAGE_SIZE), default=224, help=size_help)
    arg("--batch-size", type=_whole(1, 1024), default=32, help="images per CNN batch, 1 to 1024")
    runtime_help = "run the CNN with torch or ONNX Runtime (same vectors; default $REVSEARCH_RUNTIME or %(default)s)"
    arg("--runtime", choices=list(RUNTIMES), default=EmbedderConfig().runtime, help=runtime_help)
    pca_help = "PCA dimension, 0 for none (at most the images and the features' dimension); default auto = 128 "
    pca_help += "from 1,000 images up"
    arg("--pca-dim", type=_pca_dim, default="auto", help=pca_help)
    arg("--whiten", action="store_true", help="whiten with PCA (needs --pca-dim)")
    arg("--scales", type=_scales, default="1", help="input scales in (0, 4], pooled and averaged, e.g. 1,0.707,0.5")
    # neighbours: n = 1 to 10 were measured, 3 chosen (bench/results/retrieval_options.md); DBA keeps n ids per image
    arg("--qe-n", type=_whole(0, 100), help=f"alpha-QE neighbours, 0 = off, at most 100 (default {defaults.qe_n})")
    arg("--dba-n", type=_whole(0, 100), help=f"alpha-DBA neighbours, 0 = off, at most 100 (default {defaults.dba_n})")
    # each image keeps a side x side x 3 float32 thumbnail: 48 KB at 64
    copy_help = f"thumbnail side for --mode copy, 0 = none, at most 64 (default {defaults.copy_pixels})"
    arg("--copy-pixels", type=_whole(0, 64), help=copy_help)
    arg("--n-clusters", type=_whole(1), help="K-means clusters for --backend kmeans (at most the images)")
    arg("--nprobe", type=_whole(1), help="clusters searched per query for --backend kmeans")
    # a 256-pixel thumbnail is already a 196,608-d float64 vector (1.5 MB per image)
    arg("--pixel-size", type=_whole(1, 256), default=32, help="thumbnail side for --features pixel, 1 to 256")
    arg("--chunk-size", type=_whole(1), default=1024, help="checkpoint every N images, to resume (default %(default)s)")
    regions_help = "also index 13 regions per image (same CNN pass; cnn features, one scale) for query --regions"
    arg("--regions", action="store_true", help=regions_help)
    arg("--rebuild", action="store_true", help="discard an existing index and build anew")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--add", action="store_true", help="add these folders to an index built from other folders")
    scope.add_argument("--replace", action="store_true", help="make an index built from other folders cover only these")
    arg("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    q = sub.add_parser("query", help="find the indexed images most similar to an image")
    q.add_argument("image", help="image file path or http(s) URL")
    q.add_argument("-k", type=_whole(1), default=10, help="number of results (default %(default)s)")
    q.add_argument("--index-dir", default=DEFAULT_INDEX_DIR)
    q.add_argument("--out", help="write a mosaic of the query and its hits to this .jpg/.png")
    q.add_argument("--json", action="store_true", help="print results as JSON")
    mode_help = "similar: look-alikes (the index's options apply); copy: edited copies (CNN and thumbnails fused)"
    q.add_argument("--mode", choices=MODES, default="similar", help=mode_help)
    q.add_argument("--allow-private-urls", action="store_true", help="allow URLs on private/loopback hosts")
    regions_help = "find the images that contain the query (a crop) anywhere: each ranked by its best-matching "
    regions_help += "region, whose relative x,y,w,h box is printed and drawn (an index built with --regions)"
    q.add_argument("--regions", action="store_true", help=regions_help)
    q.set_defaults(func=cmd_query)

    i = sub.add_parser("info", help="describe an index and check it against the files on disk")
    i.add_argument("--index-dir", default=DEFAULT_INDEX_DIR)
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("move", help="move a Milvus index to another Milvus (e.g. Lite -> server), no re-embedding")
    m.add_argument("--uri", required=True, help="target Milvus, e.g. http://localhost:19530")
    m.add_argument("--index-dir", default=DEFAULT_INDEX_DIR)
    m.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"), help="target token (default $MILVUS_TOKEN)")
    m.add_argument("--source-token", help="token of the current Milvus, if it is a server with auth")
    m.add_argument("--db-name", help="target database name")
    m.add_argument("--index-type", choices=MILVUS_INDEX_TYPES, help="default: keep the current")
    bulk_help = "a directory the target server reads: copy by server-side bulk import where the server has it"
    m.add_argument("--bulk-dir", help=bulk_help)
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_move)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # names are escaped by printable(); never fail on output
        stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    # pymilvus logs each failed call with its traceback; the error is reported below in one line
    logging.getLogger("pymilvus.decorators").disabled = True
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(
            "revsearch: interrupted; work done so far is kept (an index build resumes from its checkpoint "
            "when run again)",
            file=sys.stderr,
        )
        return 130
    except (RevsearchError, ValueError) as exc:
        print(f"revsearch: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({printable(str(exc.filename))})" if exc.filename else ""
        print(f"revsearch: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or a dependency's error: still one line, never a traceback
        print(f"revsearch: error: unexpected {type(exc).__name__}: {printable(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
