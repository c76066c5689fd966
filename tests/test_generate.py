"""Batched generation with the KV cache: greedy tokens equal `transformers` ``generate`` on
SmolLM2-135M-Instruct, stop tokens, sampling filters, one compilation per shape, input checks.

The PyTorch reference loads our SmolLM2 parameters exported as safetensors (the same weights
``transformers`` dequantises from the GGUF file, as test_decoder_parity.py checks, and much
faster to load). Sampling, compilation and input checks use the first two layers only.
"""

import contextlib
import copy
import dataclasses

import jax
import numpy as np
import pytest

from jaxalign.inference import Generation, generate
from jaxalign.inference.generate import decode_program, filter_logits, prompt_bucket
from jaxalign.models.decoders import load_decoder
from jaxalign.models.export import export_decoder

from torch_refs import torch, transformers  # noqa: E402  (skips the module without torch)

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "Hi!"]
NEW = 16


@pytest.fixture(scope="module")
def smol():
    return load_decoder("SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def smol_dir(smol, tmp_path_factory):
    return export_decoder(smol, smol.params, tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def small(smol_dir):
    return load_decoder(smol_dir, num_layers=2)


@pytest.fixture(scope="module")
def greedy(smol) -> Generation:
    return generate(smol, smol.params, PROMPTS, max_new_tokens=NEW, chat=True)


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch's small decode-step matmuls spin badly on a busy 2-core machine; one thread is faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_greedy_matches_transformers_generate(smol, smol_dir, greedy):
    tok = smol.tokenizer
    want_prompts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                    for p in PROMPTS]
    assert greedy.prompt_token_ids == want_prompts
    assert len(set(map(len, want_prompts))) == len(PROMPTS)  # varied lengths: left padding is exercised

    model = transformers.AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()
    width = max(map(len, want_prompts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in want_prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in want_prompts])
    with torch.inference_mode(), torch_threads(1):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                             pad_token_id=pad, eos_token_id=list(smol.stop_token_ids))
    stops = set(smol.stop_token_ids)
    for row, ref in enumerate(out[:, width:].tolist()):
        end = next((i + 1 for i, t in enumerate(ref) if t in stops), len(ref))
        assert greedy.token_ids[row] == ref[:end], row
        assert greedy.finished[row] == any(t in stops for t in ref)
        assert greedy.texts[row] == tok.decode(ref[:end], skip_special_tokens=True)  # the stop token is special
    assert any(greedy.finished) and not all(greedy.finished)  # both ways of ending are exercised
    assert greedy.texts[0].strip() == "The capital of France is Paris."


def test_stop_tokens(smol, greedy):
    stops = smol.stop_token_ids
    assert all(t[-1] in stops for t, f in zip(greedy.token_ids, greedy.finished) if f)
    # an extra stop token taken from the middle of the unfinished row ends that row there
    row = greedy.finished.index(False)
    extra = next(t for i, t in enumerate(greedy.token_ids[row]) if i >= 3 and t not in greedy.token_ids[row][:i])
    out = generate(smol, smol.params, PROMPTS, max_new_tokens=NEW, chat=True, stop_token_ids=[*stops, extra])
    for got, before in zip(out.token_ids, greedy.token_ids):
        end = next((i + 1 for i, t in enumerate(before) if t in {*stops, extra}), len(before))
        assert got == before[:end]
    assert out.finished[row] and out.token_ids[row][-1] == extra
    assert out.texts[row] == smol.tokenizer.decode(out.token_ids[row][:-1], skip_special_tokens=True)
    # no stop tokens: every row runs to max_new_tokens, past its end-of-turn
    free = generate(smol, smol.params, PROMPTS, max_new_tokens=NEW, chat=True, stop_token_ids=[])
    assert not any(free.finished) and all(len(t) == NEW for t in free.token_ids)
    for got, before in zip(free.token_ids, greedy.token_ids):
        assert got[: len(before)] == before


@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(1.0, 0, 0.9), (0.7, 5, 1.0), (1.3, 20, 0.5), (0.5, 1, 0.3), (1.0, 2, 1.0)])
def test_filter_logits_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    logits = np.random.default_rng(0).normal(size=(6, 300)).astype(np.float32) * 3
    if top_p == 1:  # top-k keeps every token tied with the k-th (top-p breaks ties by sort order)
        logits[0, :4] = logits[0].max()
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    ref = warpers(None, torch.tensor(logits)).numpy()
    ours = np.asarray(jax.jit(filter_logits)(logits, np.float32(temperature), np.int32(top_k), np.float32(top_p)))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_sampling(small):
    args = dict(max_new_tokens=8, chat=True)
    greedy = generate(small, None, PROMPTS, **args)
    program = decode_program(small, sample=True)
    assert generate(small, None, PROMPTS, temperature=0.8, top_k=1, seed=1, **args).token_ids == greedy.token_ids
    assert generate(small, None, PROMPTS, temperature=1.5, top_p=1e-6, seed=2, **args).token_ids == greedy.token_ids
    a = generate(small, None, PROMPTS, temperature=1.0, seed=7, **args)
    assert generate(small, None, PROMPTS, temperature=1.0, seed=7, **args) == a
    assert generate(small, None, PROMPTS, temperature=1.0, seed=jax.random.key(7), **args) == a  # an explicit key
    b = generate(small, None, PROMPTS, temperature=1.0, seed=8, **args)
    assert b.token_ids != a.token_ids and b.prompt_token_ids == a.prompt_token_ids
    assert a.token_ids != greedy.token_ids
    assert program._cache_size() == 1  # temperature, top-k, top-p and the key are runtime values


def test_compiles_once_per_shape(small):
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    tok = small.tokenizer
    program = decode_program(small, sample=False)
    before = program._cache_size()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        first = generate(small, None, ["w1 and w2", "three"], max_new_tokens=5)
        assert len(compiles) >= 1
        n = len(compiles)
        # same batch, prompt bucket and max_new_tokens; other prompts, stop tokens: nothing compiles
        ids = [tok("a longer prompt of several tokens")["input_ids"], tok("x")["input_ids"]]
        assert len(ids[0]) > 2 and prompt_bucket(len(ids[0]), 10**6) == 16
        generate(small, None, ids, max_new_tokens=5, stop_token_ids=[5, 6, 7])
        # token ids are what the strings tokenise to
        assert generate(small, None, [tok(p)["input_ids"] for p in ["w1 and w2", "three"]], max_new_tokens=5) == first
        assert len(compiles) == n
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert program._cache_size() == before + 1


def test_bad_inputs(small):
    ok = dict(max_new_tokens=4)
    cases = [
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts="Hi"), "pass \\[prompt\\]"),
        (dict(prompts=["Hi", ""]), "prompts \\[1\\] are empty strings"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is an empty token list"),
        (dict(prompts=[[1, 2], "Hi"]), "neither a string nor a list of token ids"),
        (dict(prompts=[[1, 10**6]]), "outside the vocabulary"),
        (dict(prompts=[[1, 2]], chat=True), "chat=True needs text prompts"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(max_new_tokens=2.0), "max_new_tokens=2.0"),
        (dict(temperature=-0.1), "temperature=-0.1"),
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(stop_token_ids=[10**6]), "stop_token_ids"),
        (dict(seed=1.5), "seed=1.5"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(small, None, **{"prompts": ["Hi"], **ok, **kwargs})

    short = dataclasses.replace(small, max_length=24)
    with pytest.raises(ValueError, match="longest prompt has 20 tokens; with max_new_tokens=8 .* room for 16"):
        generate(short, None, [list(range(3, 23))], max_new_tokens=8)
    assert prompt_bucket(20, 24 - 4) == 20  # a prompt that just fits: the bucket is capped, not rounded up

    plain = dataclasses.replace(small, tokenizer=copy.deepcopy(small.tokenizer))
    plain.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat=True but the tokenizer .* has no chat template"):
        generate(plain, None, ["Hi"], max_new_tokens=4, chat=True)
