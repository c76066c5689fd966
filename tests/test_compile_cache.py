"""The persistent compilation cache: programs land on disk and a new jit loads them."""

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache as jax_cache

from jaxalign import compile_cache


@pytest.fixture
def restore_cache_config():
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                                                 "jax_persistent_cache_min_entry_size_bytes")}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    jax_cache.reset_cache()


def test_enable_writes_and_reuses_entries(tmp_path, restore_cache_config):
    jax_cache.reset_cache()
    directory = compile_cache.enable(tmp_path / "xla", min_compile_seconds=0)
    assert compile_cache.directory() == directory and directory.is_dir()
    f = lambda x: jnp.tanh(x @ x.T).sum()
    jax.jit(f)(jnp.ones((8, 4))).block_until_ready()
    entries = {p.name for p in directory.iterdir()}
    assert entries  # the program was written
    jax.jit(lambda x: f(x))(jnp.ones((8, 4))).block_until_ready()  # a new jit object, same program
    assert {p.name for p in directory.iterdir()} == entries  # loaded, not compiled into a new entry


def test_enable_rejects_a_file(tmp_path, restore_cache_config):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        compile_cache.enable(tmp_path / "f")
