"""What the command line adds to a recipe (kept free of torch, for the fast no-op path)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FXOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fxopt``, else ``~/.cache/fxopt``."""
    if os.environ.get("FXOPT_CACHE_DIR"):
        return Path(os.environ["FXOPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fxopt"


@dataclass
class RunOptions:
    out_dir: Path | None = None
    force: bool = False
    dump_ir: Path | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: ``--no-cache``: neither read nor write the build and pass caches
    use_cache: bool = True
    #: ``--depfile``: write a Make/Ninja depfile of every input file here
    depfile: Path | None = None
    #: ``--plugin NAME``: plugins to load even when autoloading is disabled
    plugins: list[str] = field(default_factory=list)
    #: ``--resume``: a fine-tune checkpoint (file or directory), or ``"latest"``
    resume: str | None = None
