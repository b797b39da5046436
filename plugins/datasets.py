"""Built-in dataset sources: text lines, JSONL, ``.npz`` arrays, synthetic, stdlib docstrings.

Text is tokenized with the model's own tokenizer at the split's ``sequence_length``. Records
are deduplicated before slicing, so disjoint slices really are disjoint.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import torch

from fxopt.engine import hookimpl
from fxopt.engine.data import DataContext, Dataset, Sample, sample_key
from fxopt.engine.errors import DataError
from fxopt.engine.recipe import DataSplit
from fxopt.engine.synthetic import synthetic_inputs

#: standard-library modules whose docstrings are real English prose, in a fixed order
STDLIB_MODULES = (
    "os",
    "os.path",
    "shutil",
    "subprocess",
    "pathlib",
    "json",
    "re",
    "string",
    "textwrap",
    "collections",
    "itertools",
    "functools",
    "operator",
    "heapq",
    "bisect",
    "random",
    "statistics",
    "math",
    "decimal",
    "fractions",
    "datetime",
    "calendar",
    "time",
    "threading",
    "queue",
    "socket",
    "ssl",
    "email.message",
    "http.client",
    "urllib.parse",
    "logging",
    "argparse",
    "inspect",
    "typing",
    "dataclasses",
    "enum",
    "abc",
    "contextlib",
    "io",
    "csv",
    "sqlite3",
    "zipfile",
    "tarfile",
    "gzip",
    "hashlib",
    "hmac",
    "secrets",
    "base64",
    "pickle",
    "copy",
    "pprint",
    "unittest",
    "doctest",
    "difflib",
    "tempfile",
    "glob",
    "fnmatch",
    "locale",
    "gettext",
    "codecs",
    "struct",
    "array",
    "weakref",
    "types",
    "asyncio",
    "concurrent.futures",
    "multiprocessing",
    "selectors",
    "signal",
    "mmap",
    "ast",
    "dis",
    "tokenize",
    "traceback",
    "warnings",
    "platform",
    "sysconfig",
    "configparser",
    "netrc",
    "plistlib",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "html.parser",
    "mailbox",
    "mimetypes",
    "wave",
    "colorsys",
    "uuid",
    "ipaddress",
    "smtplib",
    "ftplib",
    "imaplib",
    "poplib",
    "cmd",
    "shlex",
    "graphlib",
    "zoneinfo",
    "numbers",
    "cmath",
    "reprlib",
    "filecmp",
    "stat",
    "fileinput",
    "linecache",
    "tracemalloc",
    "timeit",
    "trace",
    "pdb",
    "profile",
    "pstats",
    "runpy",
    "importlib",
    "pkgutil",
    "modulefinder",
    "zipimport",
    "compileall",
    "py_compile",
    "keyword",
    "token",
    "symtable",
    "tabnanny",
    "pyclbr",
)


class TextSource(Dataset):
    """Base of text sources: records of (text, label), tokenized by the model."""

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        raise NotImplementedError

    def samples(
        self, split: DataSplit, ctx: DataContext, *, offset: int, count: int
    ) -> list[Sample]:
        records = list(dict.fromkeys(self.records(split, ctx)))
        if not records:
            raise DataError(
                "no text records found (the source is empty)",
                file=ctx.label,
                field=f"{ctx.field_prefix}.path" if self.reads_file else ctx.field_prefix,
                fix="give the file at least one non-empty line",
            )
        if ctx.tokenize is None:
            raise DataError(
                "text data needs a tokenizer, and this model ships none",
                file=ctx.label,
                field=f"{ctx.field_prefix}.source",
                fix='use source = "npz" or "synthetic"',
            )
        chosen = records[offset : offset + count]
        if not chosen:
            return []
        try:
            encoded = ctx.tokenize([text for text, _ in chosen], ctx.sequence_length(split))
        except Exception as exc:
            raise DataError(
                f"the model's tokenizer rejected the data: {type(exc).__name__}: {exc}",
                file=ctx.label,
                field=ctx.field_prefix,
            ) from None
        out = []
        for i, (text, label) in enumerate(chosen):
            tensors = {k: v[i] for k, v in encoded.items()}
            if label is not None:
                tensors["labels"] = torch.tensor(label)
            out.append(Sample(sample_key(text), tensors))
        return out


class TextLines(TextSource):
    """One sample per non-empty line of a UTF-8 text file."""

    name = "text"

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        path = ctx.path(split)
        text = _read_text(path, ctx)
        return [(line.strip(), None) for line in text.splitlines() if line.strip()]


class JsonLines(TextSource):
    """One JSON object per line; the text in ``field``, an optional int label."""

    name = "jsonl"

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        path = ctx.path(split)
        out = []
        for number, line in enumerate(_read_text(path, ctx).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record[split.field]
                label = record[split.label_field] if split.label_field else None
            except json.JSONDecodeError as exc:
                raise DataError(f"line {number}: not JSON: {exc}", file=path) from None
            except (KeyError, TypeError):
                missing = split.label_field if split.field in record else split.field
                raise DataError(
                    f"line {number}: no field {missing!r}",
                    file=path,
                    fix=f"set {ctx.field_prefix}.field / label_field to the record's keys",
                ) from None
            if not isinstance(text, str):
                raise DataError(f"line {number}: field {split.field!r} is not a string", file=path)
            out.append((text, None if label is None else int(label)))
        return out


class StdlibDocstrings(TextSource):
    """Real English sentences that ship with Python: standard-library docstrings."""

    name = "stdlib-docstrings"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in stdlib_sentences()]


def stdlib_sentences() -> list[str]:
    """First paragraphs of public docstrings, in a fixed order, deduplicated."""
    seen: dict[str, None] = {}
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", module_name) != module_name:
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            paragraph = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
            if 40 <= len(paragraph) <= 600 and paragraph[0].isupper():
                seen.setdefault(paragraph, None)
    return list(seen)


class NpzArrays(Dataset):
    """Arrays named after the model inputs; the first axis indexes samples."""

    name = "npz"

    def samples(
        self, split: DataSplit, ctx: DataContext, *, offset: int, count: int
    ) -> list[Sample]:
        path = ctx.path(split)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as exc:
            raise DataError(f"not a readable .npz file: {exc}", file=path) from None
        names = [s.name for s in ctx.inputs]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DataError(
                f"no array for input(s) {', '.join(missing)} (arrays: {', '.join(arrays)})",
                file=path,
                fix="save one array per model input, named after it",
            )
        keep = [*names, *(["labels"] if "labels" in arrays else [])]
        total = min(len(arrays[n]) for n in keep)
        if total == 0:
            raise DataError("the arrays hold no samples", file=path)
        out = []
        for i in range(offset, min(offset + count, total)):
            tensors = {
                n: torch.from_numpy(np.array(arrays[n][i])).to(
                    spec.torch_dtype if (spec := _spec(ctx, n)) else torch.int64
                )
                for n in keep
            }
            out.append(Sample(sample_key(b"".join(arrays[n][i].tobytes() for n in names)), tensors))
        return out


class Synthetic(Dataset):
    """Random inputs in each input's declared range; seeded per split, so splits differ."""

    name = "synthetic"
    reads_file = False

    def samples(
        self, split: DataSplit, ctx: DataContext, *, offset: int, count: int
    ) -> list[Sample]:
        sizes = {name: r.optimal for name, r in ctx.dims.items()}
        if "sequence" in sizes:
            sizes["sequence"] = ctx.sequence_length(split)
        sizes["batch"] = 1
        seed = split.seed * 1000 + ("calibration", "finetune", "verification").index(ctx.split_name)
        generator = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(count):
            batch = synthetic_inputs(ctx.inputs, sizes, generator)
            tensors = {k: v[0] for k, v in batch.items()}
            raw = b"".join(v.numpy().tobytes() for v in tensors.values())
            out.append(Sample(sample_key(raw), tensors))
        return out


def _spec(ctx: DataContext, name: str):
    return next((s for s in ctx.inputs if s.name == name), None)


def _read_text(path: Path, ctx: DataContext) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(
            "not a UTF-8 text file", file=path, field=f"{ctx.field_prefix}.path"
        ) from None


@hookimpl
def fxopt_register_datasets(registry) -> None:
    for source in (TextLines, JsonLines, StdlibDocstrings, NpzArrays, Synthetic):
        registry.register(source.name, source)
