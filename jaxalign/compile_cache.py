"""JAX's persistent compilation cache: compiled programs kept on disk across runs.

Bucketed shapes (:mod:`jaxalign.inference.embed`, the trainer's length buckets) mean a few
compilations per run; with the cache, a later run (or another process) with the same shapes,
model and jax version loads them instead of compiling again. Turned on by ``enable(path)``,
by the ``jaxalign --compilation-cache DIR`` flag, or by JAX's own ``JAX_COMPILATION_CACHE_DIR``
environment variable (read by JAX at import; nothing for jaxalign to do).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "JAX_COMPILATION_CACHE_DIR"
# Compilations faster than this are not worth a disk entry (JAX's default is 1 s, which skips
# the smaller encoder shapes on a CPU).
MIN_COMPILE_SECONDS = 0.5


def enable(path: str | os.PathLike, *, min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Path:
    """Caches compiled programs in directory ``path`` (created if missing) from now on, for
    every compilation that takes at least ``min_compile_seconds``; returns the directory."""
    import jax

    directory = Path(path).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--compilation-cache {path}: exists and is not a directory; give a directory")
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def directory() -> Path | None:
    """The cache directory in use, None when the cache is off."""
    import jax

    value = jax.config.jax_compilation_cache_dir
    return Path(value) if value else None


__all__ = ["ENV", "MIN_COMPILE_SECONDS", "directory", "enable"]
