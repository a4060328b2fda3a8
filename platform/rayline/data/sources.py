"""Reading a data source into a Ray Dataset (pyarrow-backed readers), and describing it for tracking."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from rayline.errors import SpecError
from rayline.spec import BUNDLED_PREFIXES, SYNTHETIC_PREFIX, DataSpec

BUNDLED = {  # each name starts with one of spec.BUNDLED_PREFIXES, which the spec's path resolution skips
    "sklearn:digits": "sklearn.datasets.load_digits",
    "sklearn:iris": "sklearn.datasets.load_iris",
    "sklearn:wine": "sklearn.datasets.load_wine",
    "sklearn:breast_cancer": "sklearn.datasets.load_breast_cancer",
    "sklearn:diabetes": "sklearn.datasets.load_diabetes",
    "palmerpenguins:penguins": "palmerpenguins.load_penguins",
}
SYNTHETIC_DEFAULTS = {
    "classification": {"rows": 100_000, "features": 32, "classes": 4, "seed": 0},
    "mixture": {"rows": 100_000, "features": 16, "classes": 4, "regimes": 4, "skew": 70, "seed": 0},
}
SYNTHETIC_RANGES = {"rows": (1, 10**10), "features": (1, 10_000), "classes": (2, 10_000), "seed": (0, 2**32 - 1),
                    "regimes": (2, 1_000), "skew": (1, 99)}
FULL_DIGEST_MAX_BYTES = 64 * 2**20  # file datasets up to this size are hashed whole; larger ones are sampled
SAMPLE_BYTES = 2**20


@dataclass(frozen=True)
class SourceInfo:
    """What MLflow records about a dataset: where it came from, and a digest (16 hex digits of a SHA-256).

    ``digest_kind`` says what was hashed: ``sha256`` every byte of the data files (with their relative paths),
    ``sha256-sampled`` each file's relative path, size and first, middle and last MiB (file datasets over
    ``FULL_DIGEST_MAX_BYTES``), ``sha256-csv`` a bundled dataset's rows as CSV, ``sha256-options`` the options
    of a synthetic dataset (which determine its rows)."""

    name: str
    uri: str
    digest: str
    digest_kind: str


def read_parquet(uri: str, **options: Any) -> ray.data.Dataset:
    """``ray.data.read_parquet`` through Ray Data's first Parquet datasource.

    Ray 2.60's default Parquet datasource lists the files in a task of its own on every execution, which takes
    seconds of wall time however few the files: once per epoch for a streamed split. The first datasource lists
    them in a fraction of that."""
    context = ray.data.DataContext.get_current()
    chosen, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(uri, **options)
    finally:
        context.use_datasource_v2 = chosen


def read_source(data: DataSpec, storage_uri: str) -> tuple[ray.data.Dataset, SourceInfo]:
    """Open ``data.source`` as a lazy Ray Dataset. Missing files are refused naming ``data.source``."""
    source = data.source
    if source in BUNDLED:
        return _read_bundled(source)
    if source.startswith(BUNDLED_PREFIXES):
        raise SpecError(f"unknown bundled dataset {source!r}; bundled: {sorted(BUNDLED)}", field="data.source")
    if source.startswith(SYNTHETIC_PREFIX):
        return _read_synthetic(source, storage_uri)
    return read_files(source, data.format)


def _read_bundled(source: str) -> tuple[ray.data.Dataset, SourceInfo]:
    module_name, _, function = BUNDLED[source].rpartition(".")
    module = __import__(module_name, fromlist=[function])
    loaded = getattr(module, function)(**({"as_frame": True} if source.startswith("sklearn:") else {}))
    frame = loaded.frame if hasattr(loaded, "frame") else loaded
    table = pa.Table.from_pandas(frame, preserve_index=False)
    digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]
    info = SourceInfo(name=source.split(":", 1)[1], uri=source, digest=digest, digest_kind="sha256-csv")
    return ray.data.from_arrow(table), info


def read_files(source: str, fmt: str = "auto", field: str = "data.source") -> tuple[ray.data.Dataset, SourceInfo]:
    """A CSV or Parquet file, directory or URI as a Ray Dataset, digested by content (see :class:`SourceInfo`).

    Refused up front, naming ``field``: a path that does not exist, a directory without data files, an empty
    file, a CSV file whose first block does not parse, a Parquet file whose footer does not."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(source if "://" in source else os.path.abspath(source))
        info = filesystem.get_file_info(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SpecError(f"cannot open {source!r}: {err}", field=field) from None
    if info.type == pafs.FileType.NotFound:
        raise SpecError(f"data file not found: {source}", field=field)
    if fmt == "auto":
        suffix = os.path.splitext(path)[1].lower()
        fmt = "csv" if suffix == ".csv" else "parquet" if suffix in {".parquet", ".pq", ""} else ""
        if not fmt:
            raise SpecError(f"cannot tell the format of {source!r} (.csv or .parquet)", field=field)
    files = data_files(filesystem, info, fmt)
    if not files:
        raise SpecError(f"no {fmt} files in {source}", field=field)
    for file in files:
        _check_file(filesystem, file, fmt, field)
    digest, kind = _digest_files(filesystem, info, files)
    if fmt == "csv":
        dataset = ray.data.read_csv(source)
    else:  # Ray keeps only *.parquet by default, even a file named explicitly (one.pq would read as zero rows)
        dataset = read_parquet(source, **({"file_extensions": None} if info.is_file else {}))
    name = os.path.basename(path.rstrip("/")) or source
    return dataset, SourceInfo(name=name, uri=source, digest=digest, digest_kind=kind)


def data_files(filesystem: pafs.FileSystem, info: pafs.FileInfo, fmt: str) -> list[pafs.FileInfo]:
    """The files Ray Data reads for ``info``: the file itself, or a directory's files (recursively) but those
    whose relative path starts with ``.`` or ``_``, and for Parquet only ``*.parquet``."""
    if info.is_file:
        return [info]
    found = filesystem.get_file_info(pafs.FileSelector(info.path, recursive=True))
    return sorted((f for f in found if f.is_file and not _relative(info, f).startswith((".", "_"))
                   and (fmt == "csv" or f.path.endswith(".parquet"))), key=lambda f: f.path)


def _relative(root: pafs.FileInfo, file: pafs.FileInfo) -> str:
    return file.path[len(root.path):].lstrip("/")


def _check_file(filesystem: pafs.FileSystem, file: pafs.FileInfo, fmt: str, field: str) -> None:
    """Refuse an empty file, or one whose CSV first block or Parquet footer does not parse, in one line."""
    if file.size == 0:
        raise SpecError(f"{file.path} is empty (0 bytes)", field=field)
    try:
        if fmt == "csv":
            with filesystem.open_input_stream(file.path) as stream:  # decompresses .csv.gz and the like
                reader = pacsv.open_csv(stream)
                next(iter(reader), None)
        else:
            with filesystem.open_input_file(file.path) as handle:
                pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as err:
        problem = "".join(c if c.isprintable() else "?" for c in str(err).split("\n")[0])[:200]
        raise SpecError(f"{file.path} is not valid {fmt.upper() if fmt == 'csv' else 'Parquet'}: {problem}",
                        field=field) from None


def _digest_files(filesystem: pafs.FileSystem, root: pafs.FileInfo, files: list[pafs.FileInfo]) -> tuple[str, str]:
    """SHA-256 over each file's relative path, size and bytes: all of them up to ``FULL_DIGEST_MAX_BYTES`` in
    total (``sha256``), otherwise the first, middle and last ``SAMPLE_BYTES`` of each (``sha256-sampled``)."""
    sampled = sum(f.size for f in files) > FULL_DIGEST_MAX_BYTES
    digest = hashlib.sha256()
    for file in files:
        digest.update(json.dumps([_relative(root, file), file.size]).encode())
        if sampled:
            starts = [0, max(0, (file.size - SAMPLE_BYTES) // 2), max(0, file.size - SAMPLE_BYTES)]
        else:
            starts = list(range(0, file.size, SAMPLE_BYTES))
        with filesystem.open_input_file(file.path) as handle:
            for start in starts:
                digest.update(handle.read_at(min(SAMPLE_BYTES, file.size - start), start))
    return digest.hexdigest()[:16], "sha256-sampled" if sampled else "sha256"


def _read_synthetic(source: str, storage_uri: str) -> tuple[ray.data.Dataset, SourceInfo]:
    """``synthetic://classification?rows=N&features=F&classes=C&seed=S`` or
    ``synthetic://mixture?rows=N&features=F&classes=C&regimes=R&skew=P&seed=S``: generated once as Parquet,
    then read."""
    parsed = urlparse(source)
    kind = parsed.netloc
    if kind not in SYNTHETIC_DEFAULTS:
        raise SpecError(f"synthetic sources are {', '.join(f'synthetic://{name}' for name in SYNTHETIC_DEFAULTS)}",
                        field="data.source")
    try:
        options = {**SYNTHETIC_DEFAULTS[kind], **{k: int(v) for k, v in parse_qsl(parsed.query)}}
    except ValueError:
        raise SpecError(f"synthetic options must be integers: {parsed.query!r}", field="data.source") from None
    unknown = set(options) - set(SYNTHETIC_DEFAULTS[kind])
    if unknown:
        raise SpecError(f"unknown synthetic options {sorted(unknown)}", field="data.source")
    for name, value in options.items():
        low, high = SYNTHETIC_RANGES[name]
        if not low <= value <= high:
            raise SpecError(f"synthetic option {name}={value} is outside [{low}, {high}]", field="data.source")
    described = options if kind == "classification" else {**options, "kind": kind}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    target = f"{storage_uri.rstrip('/')}/datasets/synthetic-{digest}"
    filesystem, path = pafs.FileSystem.from_uri(target)
    if filesystem.get_file_info(f"{path}/_SUCCESS").type == pafs.FileType.NotFound:
        blocks = max(1, options["rows"] // 50_000)
        rows = _synthetic_rows if kind == "classification" else _mixture_rows
        ray.data.range(options["rows"], override_num_blocks=blocks).map_batches(
            rows, fn_kwargs={"options": options}, batch_format="numpy"
        ).write_parquet(target)
        with filesystem.open_output_stream(f"{path}/_SUCCESS") as marker:
            marker.write(b"")
    return read_parquet(target), SourceInfo(name=f"synthetic-{kind}" if kind != "classification" else "synthetic",
                                            uri=source, digest=digest, digest_kind="sha256-options")


def _synthetic_rows(batch: dict[str, np.ndarray], options: dict[str, int]) -> dict[str, np.ndarray]:
    """Gaussian features and a label from a fixed random linear teacher: learnable, reproducible."""
    ids = batch["id"]
    teacher = np.random.default_rng(options["seed"]).normal(size=(options["features"], options["classes"]))
    rng = np.random.default_rng([options["seed"], int(ids[0])])
    features = rng.normal(size=(len(ids), options["features"])).astype(np.float32)
    logits = features @ teacher + rng.normal(scale=0.5, size=(len(ids), options["classes"]))
    columns = {f"x{i}": features[:, i] for i in range(options["features"])}
    return {**columns, "label": logits.argmax(axis=1).astype(np.int64)}


def mixture(rows: int, ids_from: int, options: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows from ``regimes`` regimes, each a cluster of features with its own linear teacher for the label; regime
    0 holds ``skew`` percent of the rows, the others share the rest evenly. A Mixture-of-Experts can give each
    regime its experts; without a load-balancing loss its router crowds the experts the busy regime uses.
    Returns features (float32), labels and regimes."""
    regimes, features, classes = options["regimes"], options["features"], options["classes"]
    fixed = np.random.default_rng(options["seed"])
    centers = fixed.normal(scale=3.0, size=(regimes, features))
    teachers = fixed.normal(size=(regimes, features, classes))
    share = np.full(regimes, (100 - options["skew"]) / (regimes - 1) / 100)
    share[0] = options["skew"] / 100
    rng = np.random.default_rng([options["seed"], ids_from])
    regime = rng.choice(regimes, size=rows, p=share)
    values = centers[regime] + rng.normal(size=(rows, features))
    logits = np.einsum("nf,nfc->nc", values, teachers[regime]) + rng.normal(scale=0.5, size=(rows, classes))
    return values.astype(np.float32), logits.argmax(axis=1).astype(np.int64), regime


def _mixture_rows(batch: dict[str, np.ndarray], options: dict[str, int]) -> dict[str, np.ndarray]:
    values, labels, _ = mixture(len(batch["id"]), int(batch["id"][0]), options)
    return {**{f"x{i}": values[:, i] for i in range(values.shape[1])}, "label": labels}
