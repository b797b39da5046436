"""What the command line adds to a recipe (kept free of torch, for the fast no-op path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunOptions:
    out_dir: Path | None = None
    force: bool = False
    dump_ir: Path | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    #: ``--cache-dir``; ``None``: ``$FXOPT_CACHE_DIR``, else the user's cache directory
    cache_dir: Path | None = None
    #: ``--no-cache``: no cache is read or written anywhere (outputs, passes, calibration)
    use_cache: bool = True
    #: ``--verify-inputs``: re-hash every model and data file instead of trusting their stat
    verify_inputs: bool = False
    #: ``--depfile``: write a Make/Ninja depfile of every input file here
    depfile: Path | None = None
    #: ``--plugin NAME``: plugins to load even when autoloading is disabled
    plugins: list[str] = field(default_factory=list)
    #: ``--resume``: a fine-tune checkpoint (file or directory), or ``"latest"``
    resume: str | None = None
