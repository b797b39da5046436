"""Text domains beyond the standard library's docstrings, all shipped with fxopt's core
dependencies (no download, no extra), each a fixed, seeded order of English sentences.

- ``python-reference``: the Python language and library reference (``pydoc_data.topics``).
- ``library-docstrings``: torch's and NumPy's documentation (their public docstrings).
- ``text-mix``: stdlib-sentences, python-reference and library-docstrings interleaved, for
  fine-tuning on more than one kind of text.
- ``package-readmes``: the project descriptions of the installed dependencies, used by no
  fine-tune or calibration source: the off-domain verification set.

A recipe distilled on docstrings alone verifies well on docstrings and worse elsewhere; these
let it train on a mix and verify on text it never saw the like of. ``text-mix`` never uses the
first :data:`HELD_OUT` sentences of ``python-reference`` and ``library-docstrings`` (nor any
sentence of ``stdlib-docstrings``), so a recipe may verify or calibrate on those while it
fine-tunes on the mix, and the splits stay disjoint.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import inspect
import random
import re
import warnings
from collections.abc import Iterator

from fxopt.engine.data import DataContext
from fxopt.run.recipe import DataSplit

from .sources import TextSource, split_sentences, stdlib_sentence_corpus, stdlib_sentences

#: the shuffle of every domain (the split's ``seed`` does not apply: ``text-mix`` must know
#: which sentences a verification slice of a domain takes)
ORDER_SEED = 0
#: the head of ``python-reference`` and ``library-docstrings`` that ``text-mix`` leaves out
HELD_OUT = 512
#: a prose sentence's length in words
WORDS = (5, 60)
#: the modules whose public docstrings ``library-docstrings`` reads, in this order
LIBRARY_MODULES = (
    "numpy",
    "numpy.linalg",
    "numpy.random",
    "numpy.fft",
    "torch",
    "torch.nn",
    "torch.nn.functional",
    "torch.nn.init",
    "torch.nn.utils",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "torch.utils.data",
    "torch.autograd",
    "torch.distributions",
    "torch.linalg",
    "torch.fft",
    "torch.special",
    "torch.amp",
    "torch.export",
    "torch.fx",
    "torch.onnx",
    "torch.distributed",
    "torch.sparse",
    "torch.jit",
    "torch.hub",
    "torch.profiler",
    "torch.func",
)
#: the distributions whose descriptions ``package-readmes`` reads: fxopt's core dependencies
#: and what they always pull in (one not installed is skipped), in this order
READMES = (
    "annotated-types",
    "click",
    "filelock",
    "fsspec",
    "huggingface-hub",
    "idna",
    "jinja2",
    "markdown-it-py",
    "markupsafe",
    "ml-dtypes",
    "mpmath",
    "networkx",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "packaging",
    "pluggy",
    "pydantic",
    "pydantic-core",
    "pygments",
    "pyyaml",
    "regex",
    "rich",
    "safetensors",
    "sympy",
    "tokenizers",
    "torch",
    "torchao",
    "tqdm",
    "transformers",
    "typing-extensions",
)

_FENCE = re.compile(r"\s*(```|~~~)")
#: a paragraph that is no prose: a heading underline, a table, a prompt, a directive, HTML
_NOT_PROSE_START = re.compile(r"\s*([=*#~^\-+_]{3,}\s*$|\||>>>|\$ |\.\. |<)")
#: a docstring's first section header ends its prose (Google or NumPy style)
_SECTION = re.compile(
    r"\s*(Args|Arguments|Parameters|Returns?|Yields?|Raises|Examples?|Attributes|See Also|"
    r"Keyword Arguments|Shape|Note|Notes|Warnings?|References|Methods)\s*:{0,2}\s*$"
)
_MARKUP = (
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # markdown links and images
    (re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}"), r"\1"),  # reST links
    (re.compile(r":[a-z:]+:`~?([^`]*)`"), r"\1"),  # reST roles
    (re.compile(r"<[^>]*>"), ""),  # HTML tags
    (re.compile(r"\*\*|``|`"), ""),
    (re.compile(r"(?<!\w)\*(\S[^*]*?)\*"), r"\1"),  # emphasis
    (re.compile(r"^([*+-]|\d+\.|#+)\s+"), ""),  # a list bullet, a markdown heading
)
#: what a code fragment, an address or a formula has and a prose sentence does not (nor one
#: whose link was its text: "see: .")
_CODE = re.compile(r"https?:|www\.|>>>|::|[{}=<>|@$#\\]|\w\(\w*, |\s[.,;:!?]")
_WORD = re.compile(r"[\"“‘(]*[A-Za-z]+(?:['’-][A-Za-z]+)*[\"”’)]*[,;:.!?]*[\"”’)]*")
_BULLET = re.compile(r"\s*([*+-]|\d+\.)\s")


def prose_sentences(text: str) -> list[str]:
    """The prose sentences of plain text, Markdown or reST: code blocks, tables, headings,
    prompts and markup left out; sentences of 5 to 60 words, starting with a capital and
    ending with ``.``, ``!`` or ``?``, at least four words in five plain words."""
    out = []
    for paragraph in _paragraphs(text):
        for pattern, replacement in _MARKUP:
            paragraph = pattern.sub(replacement, paragraph)
        out += [s for s in split_sentences(" ".join(paragraph.split())) if is_prose(s)]
    return out


def is_prose(sentence: str) -> bool:
    """A sentence a person wrote for people: see :func:`prose_sentences`."""
    words = sentence.split()
    if not WORDS[0] <= len(words) <= WORDS[1] or _CODE.search(sentence):
        return False
    if not (sentence[0].isupper() and sentence[-1] in ".!?"):
        return False
    return sum(bool(_WORD.fullmatch(w)) for w in words) >= 0.8 * len(words)


def _paragraphs(text: str) -> Iterator[str]:
    """Paragraphs (blank-line separated, each joined on one line) outside fenced code, and not
    indented code (a paragraph indented deeper than the prose before it, after a ``:``)."""
    block: list[str] = []
    fenced, prose_indent, after_colon = False, 0, False
    for line in [*text.splitlines(), ""]:
        if _FENCE.match(line):
            fenced, block = not fenced, []
            continue
        if fenced:
            continue
        if line.strip():
            block.append(line)
            continue
        if not block:
            continue
        indent = len(block[0]) - len(block[0].lstrip())
        code = after_colon and indent > prose_indent and not _BULLET.match(block[0])
        if not code and not _NOT_PROSE_START.match(block[0]):
            prose_indent, after_colon = indent, block[-1].rstrip().endswith(":")
            yield re.sub(r"\s+", " ", " ".join(block)).strip()
        block = []


def _shuffled(sentences: Iterator[str] | list[str]) -> list[str]:
    """Deduplicated, without any text ``stdlib-docstrings`` serves, in the seeded order."""
    held_out = {s for p in stdlib_sentences() for s in (p, *split_sentences(p))}
    unique = sorted(dict.fromkeys(s for s in sentences if s not in held_out))
    random.Random(ORDER_SEED).shuffle(unique)
    return unique


@functools.cache
def python_reference_corpus() -> tuple[str, ...]:
    """The prose sentences of the Python reference's topics (``pydoc_data.topics``: what
    ``help("assignment")`` prints), shuffled."""
    from pydoc_data.topics import topics

    return tuple(_shuffled(s for name in sorted(topics) for s in prose_sentences(topics[name])))


@functools.cache
def library_docstring_corpus() -> tuple[str, ...]:
    """The prose of the public docstrings of :data:`LIBRARY_MODULES` (their functions, classes
    and the classes' methods), up to each docstring's first section header, shuffled."""
    found: list[str] = []
    for name in LIBRARY_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                for doc in _public_docs(module):
                    found += prose_sentences(_before_sections(doc))
        except Exception:  # a module this torch lacks, or one that fails to import
            continue
    return tuple(_shuffled(found))


def _public_docs(module) -> Iterator[str]:
    yield inspect.getdoc(module) or ""
    for attr in sorted(a for a in dir(module) if not a.startswith("_")):
        obj = getattr(module, attr, None)
        if inspect.ismodule(obj) or not isinstance(getattr(obj, "__doc__", None), str):
            continue
        yield inspect.cleandoc(obj.__doc__)
        if inspect.isclass(obj):
            for method, member in sorted(vars(obj).items()):
                if not method.startswith("_") and isinstance(getattr(member, "__doc__", None), str):
                    yield inspect.cleandoc(member.__doc__)


def _before_sections(doc: str) -> str:
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        underlined = i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1])
        if _SECTION.fullmatch(line) or (underlined and line.strip()):
            return "\n".join(lines[:i])
    return doc


@functools.cache
def package_readme_corpus() -> tuple[str, ...]:
    """The prose of the descriptions (README, for some a changelog) that the distributions of
    :data:`READMES` carry in their installed metadata, shuffled."""
    found: list[str] = []
    for name in READMES:
        try:
            metadata = md.distribution(name).metadata
        except md.PackageNotFoundError:
            continue
        found += prose_sentences(metadata.get_payload() or metadata.get("Description") or "")
    return tuple(_shuffled(found))


@functools.cache
def text_mix_corpus() -> tuple[str, ...]:
    """stdlib-sentences, python-reference and library-docstrings, one of each in turn (the
    latter two past their first :data:`HELD_OUT`), so any first ``n`` mix them evenly."""
    domains = [
        list(stdlib_sentence_corpus()),
        list(python_reference_corpus()[HELD_OUT:]),
        list(library_docstring_corpus()[HELD_OUT:]),
    ]
    # a sentence two domains share stays out of the mix where a held-out slice has it
    held_out = {*python_reference_corpus()[:HELD_OUT], *library_docstring_corpus()[:HELD_OUT]}
    held_out.update(package_readme_corpus())
    mixed = [d[i] for i in range(max(map(len, domains))) for d in domains if i < len(d)]
    return tuple(dict.fromkeys(s for s in mixed if s not in held_out))


class PythonReference(TextSource):
    """Sentences of the Python language and library reference that ``pydoc_data.topics``
    ships (what ``help("assignment")`` prints): about 1,800 on CPython 3.11, explanatory
    prose longer than a docstring's summary. Its first 512 are in no ``text-mix``."""

    name = "python-reference"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in python_reference_corpus()]


class LibraryDocstrings(TextSource):
    """Sentences of torch's and NumPy's public docstrings (tensors, layers, optimizers,
    arrays, linear algebra), up to each one's first section header: about 9,000. Its first 512
    are in no ``text-mix``."""

    name = "library-docstrings"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in library_docstring_corpus()]


class PackageReadmes(TextSource):
    """Sentences of the project descriptions that fxopt's dependencies carry in their
    installed metadata (``importlib.metadata``: the README of torch, transformers, NumPy,
    pydantic, rich, tqdm, regex and 25 more, some with a changelog): about 800.

    The off-domain verification set. Nothing else here reads it, so a model fine-tuned and
    calibrated on any other source has never seen its kind of text: a project's pitch,
    installation and usage notes, release notes, written by many authors for readers rather
    than for an API reference. It is installed wherever fxopt is (unlike the standard
    library's data files, which some Linux distributions leave out, or a data set, which
    would be a download); the sentences change with the installed versions, so compare
    figures taken on one environment."""

    name = "package-readmes"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in package_readme_corpus()]


class TextMix(TextSource):
    """stdlib-sentences, python-reference and library-docstrings interleaved one by one, so
    a fine-tune of any size sees each kind of text (about 13,000 sentences): distilling on
    docstrings alone specialises the model on docstrings. Leaves out the first 512 sentences of
    python-reference and library-docstrings and all of stdlib-docstrings, which a recipe can
    then calibrate or verify on; package-readmes is in no mix."""

    name = "text-mix"
    reads_file = False

    def records(self, split: DataSplit, ctx: DataContext) -> list[tuple[str, int | None]]:
        return [(text, None) for text in text_mix_corpus()]


SOURCES = (PythonReference, LibraryDocstrings, PackageReadmes, TextMix)
