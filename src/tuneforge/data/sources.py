"""Where a dataset's rows live: one file, a directory of shards, a glob, or a filesystem URI (s3://, gs://,
hdfs://, file://), resolved through pyarrow's filesystems so that every later stage reads them the same way."""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

ROW_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class DataFiles:
    """The files of one dataset, in a stable (sorted) order, and the filesystem that reads them."""

    spec: str  # what the config said
    paths: tuple[str, ...]  # paths on `filesystem`
    sizes: tuple[int, ...]
    filesystem: Any  # pyarrow.fs.FileSystem
    format: str  # jsonl | csv | parquet

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def label(self, path: str) -> str:
        """How messages name a file: as the user would type it."""
        return path if self.is_local else f"{self.spec.split('://', 1)[0]}://{path}"

    @property
    def is_local(self) -> bool:
        from pyarrow.fs import LocalFileSystem

        return isinstance(self.filesystem, LocalFileSystem)

    def read_bytes(self, path: str) -> bytes:
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def fingerprint(self) -> list[tuple[str, int, float]]:
        """Path, size and modification time of every file: what a cache of their tokenized rows is keyed on."""
        from pyarrow.fs import FileInfo

        infos: list[FileInfo] = self.filesystem.get_file_info(list(self.paths))
        return [(info.path, info.size, info.mtime.timestamp() if info.mtime else 0.0) for info in infos]


def is_uri(spec: str) -> bool:
    return "://" in spec


def is_many(spec: str) -> bool:
    """Names more than a single local file (or might): a directory, a glob or a URI."""
    return is_uri(spec) or any(char in spec for char in GLOB_CHARACTERS) or Path(spec).is_dir()


def resolve_data(spec: str, role: str) -> DataFiles:
    """The files `spec` names; a DataError says what is missing or unreadable and how to fix it."""
    filesystem, base = open_filesystem(spec, role)
    paths = list_files(filesystem, base, spec, role)
    formats = {ROW_FORMATS.get(Path(path).suffix.lower()) for path in paths}
    if None in formats:
        odd = next(path for path in paths if Path(path).suffix.lower() not in ROW_FORMATS)
        raise DataError(f"{spec}: unsupported file type '{Path(odd).suffix}' ({odd}); use .jsonl, .csv or .parquet")
    if len(formats) > 1:
        raise DataError(f"{spec}: {role} mixes file types ({', '.join(sorted(formats))}); keep one format per dataset")
    infos = filesystem.get_file_info(paths)
    return DataFiles(spec, tuple(paths), tuple(info.size or 0 for info in infos), filesystem, formats.pop())


def file_digests(spec: str, role: str) -> list[dict[str, Any]]:
    """Name, size and sha256 of each file of a dataset: what a model card says the model was trained on. Files
    behind a URI are named and sized but not hashed: that would download the whole dataset once more."""
    files = resolve_data(spec, role)
    return [{"name": Path(path).name, "bytes": size, **({"sha256": sha256_of(Path(path))} if files.is_local else {})}
            for path, size in zip(files.paths, files.sizes, strict=True)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_filesystem(spec: str, role: str) -> tuple[Any, str]:
    from pyarrow import fs

    if not is_uri(spec):
        return fs.LocalFileSystem(), str(Path(spec).expanduser())
    try:
        return fs.FileSystem.from_uri(spec)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/ArrowNotImplementedError by scheme
        scheme = spec.split("://", 1)[0]
        raise DataError(f"{spec}: cannot open {role} through pyarrow's '{scheme}' filesystem ({first_line(exc)}); "
                        "check the URI, your credentials and that the storage is reachable from here") from None


def list_files(filesystem: Any, base: str, spec: str, role: str) -> list[str]:
    from pyarrow import fs

    if not is_uri(spec) and any(char in spec for char in GLOB_CHARACTERS):
        paths = sorted(path for path in glob.glob(base, recursive=True) if Path(path).is_file())
        if not paths:
            raise DataError(f"{spec}: {role} glob matches no file")
        return paths
    try:
        info = filesystem.get_file_info(base)
    except Exception as exc:  # noqa: BLE001 - remote filesystems fail here when unreachable
        raise DataError(f"{spec}: cannot read {role} ({first_line(exc)})") from None
    if info.type == fs.FileType.NotFound:
        raise DataError(f"{spec}: {role} not found")
    if info.type == fs.FileType.File:
        return [base]
    selector = fs.FileSelector(base, recursive=True)
    paths = sorted(item.path for item in filesystem.get_file_info(selector)
                   if item.type == fs.FileType.File and not hidden(item.path, base))
    if not paths:
        raise DataError(f"{spec}: {role} directory holds no .jsonl, .csv or .parquet file")
    return paths


def hidden(path: str, base: str) -> bool:
    """Markers and temporary files that writers leave beside shards (_SUCCESS, .crc, .part files)."""
    relative = Path(path).relative_to(base) if path.startswith(base) else Path(path)
    return any(part.startswith((".", "_")) for part in relative.parts)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
