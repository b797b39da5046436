"""Built-in dataset sources: text lines, JSONL, ``.npz`` arrays, synthetic, stdlib docstrings
and sentences, scikit-learn's 8x8 digits (and, in :mod:`.text_domains`, more kinds of
English text: the Python reference, torch's and NumPy's docstrings, package descriptions, a
mix of them).

Text is tokenized with the model's own tokenizer at the split's ``sequence_length``. Records
are deduplicated before slicing, so disjoint slices really are disjoint.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from fxopt.engine import hookimpl
from fxopt.engine.data import SPLIT_ORDER, DataContext, Dataset, Sample, sample_key
from fxopt.engine.errors import DataError
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.run.recipe import DataSplit

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
#: where ``split_sentences`` cuts a paragraph: after ``.``, ``!`` or ``?``, before a capital
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
#: standard-library modules ``stdlib_sentence_corpus`` leaves alone: private, tests, GUIs,
#: and those whose import has side effects (``this`` prints, ``antigravity`` opens a browser)
CORPUS_SKIP = (
    "_",
    "test",
    "idlelib",
    "tkinter",
    "turtle",
    "antigravity",
    "this",
    "lib2to3",
    "ensurepip",
)
#: the shuffle of the ``digits`` source: the order ``examples/digits/digits_model.py`` saves
#: and the ``builtin:digits-*`` models train on (their first images)
DIGITS_SEED = 0


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


class StdlibSentences(TextSource):
    """Sentences of every public standard-library docstring, none from ``stdlib-docstrings``.

    Thousands of short English sentences (5,224 on CPython 3.11), disjoint from what the
    ``stdlib-docstrings`` source yields, so a recipe can fine-tune on these and calibrate and
    verify on those."""

    name = "stdlib-sentences"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in stdlib_sentence_corpus()]


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences (cut after ``.``, ``!`` or ``?`` before a capital)."""
    return [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]


def stdlib_sentence_corpus() -> list[str]:
    """The sentences of the standard library's public docstring paragraphs (modules, their
    functions and classes, the classes' methods), in a fixed order, deduplicated, without any
    sentence (or paragraph) of :func:`stdlib_sentences`, which calibration and verification
    use. Every module of ``sys.stdlib_module_names`` but :data:`CORPUS_SKIP` is imported,
    quietly (its warnings and prints swallowed); one that fails to import is left out.

    Sentences rather than paragraphs: the held-out text is first paragraphs of docstrings,
    mostly one short sentence (median 16 tokens), and distilling on text shaped like it
    recovered more (``recipes/minilm-prune.toml``: cosine 0.971 vs 0.969 for the same steps,
    ``benchmarks/RESULTS.md``)."""
    held_out = {
        s for paragraph in stdlib_sentences() for s in (paragraph, *split_sentences(paragraph))
    }
    found: dict[str, None] = {}

    def add(doc: str | None) -> None:
        for paragraph in (doc or "").split("\n\n"):
            text = re.sub(r"\s+", " ", paragraph).strip()
            if not (40 <= len(text) <= 600 and text[0].isupper()) or text in held_out:
                continue
            for sentence in split_sentences(text):
                if len(sentence) >= 20 and sentence not in held_out:
                    found.setdefault(sentence, None)

    for name in sorted(sys.stdlib_module_names):
        if name.startswith(CORPUS_SKIP):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:
            continue
        add(inspect.getdoc(module))
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            add(inspect.getdoc(obj))
            if inspect.isclass(obj):
                for method, member in sorted(vars(obj).items()):
                    if not method.startswith("_"):
                        add(inspect.getdoc(member))
    return list(found)


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
        return array_samples(arrays, ctx, offset=offset, count=count, file=path)


class Digits(Dataset):
    """scikit-learn's 8x8 handwritten digits (1,797 images, bundled with it, no download).

    Shuffled once with a fixed seed (the split's ``seed`` does not apply: the order is the one
    ``builtin:digits-*`` models train on, their first images), pixels scaled to [0, 1]: the
    model's one input gets float [1, 8, 8] images (in its declared dtype), ``labels`` the
    int64 class. Splits take consecutive, disjoint slices, as from one ``npz`` file."""

    name = "digits"
    reads_file = False

    def samples(
        self, split: DataSplit, ctx: DataContext, *, offset: int, count: int
    ) -> list[Sample]:
        if len(ctx.inputs) != 1:
            raise DataError(
                "the digits source feeds one image input; this model has "
                f"{len(ctx.inputs)}: {', '.join(s.name for s in ctx.inputs)}",
                file=ctx.label,
                field=f"{ctx.field_prefix}.source",
                fix='use source = "npz" with one array per input',
            )
        try:
            x, labels = _digits(DIGITS_SEED)
        except ImportError as exc:
            raise DataError(
                f"the digits come with scikit-learn, which is not installed ({exc})",
                file=ctx.label,
                field=f"{ctx.field_prefix}.source",
                fix="pip install scikit-learn (or pip install 'fxopt[digits]')",
            ) from None
        arrays = {ctx.inputs[0].name: x, "labels": labels}
        return array_samples(arrays, ctx, offset=offset, count=count, file=ctx.label)


def digits_arrays(seed: int = DIGITS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits, shuffled once: ``x`` float32 [N, 1, 8, 8] in [0, 1], ``labels`` int64.

    Needs scikit-learn (``ImportError`` without it); the arrays are the caller's own copies."""
    x, labels = _digits(seed)
    return x.copy(), labels.copy()


@functools.cache
def _digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = (data.images[order] / 16.0).astype(np.float32)[:, None]
    labels = data.target[order].astype(np.int64)
    for array in (x, labels):
        array.flags.writeable = False
    return x, labels


def array_samples(
    arrays: dict[str, np.ndarray],
    ctx: DataContext,
    *,
    offset: int,
    count: int,
    file: str | Path,
) -> list[Sample]:
    """Samples ``offset`` to ``offset + count`` of arrays holding one array per model input
    (and optionally ``labels``), the first axis indexing samples: each input in its declared
    dtype, labels int64, keyed by the inputs' bytes."""
    names = [s.name for s in ctx.inputs]
    keep = [*names, *(["labels"] if "labels" in arrays else [])]
    total = min(len(arrays[n]) for n in keep)
    if total == 0:
        raise DataError("the arrays hold no samples", file=file)
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
        kind, _, named = ctx.split_name.partition(".")
        seed = split.seed * 1000 + SPLIT_ORDER.index(kind)
        if named:  # a verification set besides the primary one: a seed of its own
            seed = int(sample_key((seed, named)), 16)
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
    from .text_domains import SOURCES as TEXT_DOMAINS  # it builds on this module's sources

    for source in (
        TextLines,
        JsonLines,
        StdlibDocstrings,
        StdlibSentences,
        *TEXT_DOMAINS,
        NpzArrays,
        Digits,
        Synthetic,
    ):
        registry.register(source.name, source)
