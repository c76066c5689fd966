"""The Flax encoder against the PyTorch reference (`transformers`, `sentence-transformers`) on
real weights and real sentences of varied length, with padding, in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.inference.embed import Embedder
from jaxalign.models import load_encoder

from torch_refs import save_tiny, torch, transformers  # noqa: E402  (skips the module without torch)


def torch_hidden(path, batch):
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        out = model(**{k: torch.tensor(np.asarray(v)) for k, v in batch.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy() if out.pooler_output is not None else None


def test_minilm_last_hidden_state_matches_transformers(minilm, real_sentences):
    batch = minilm.tokenizer(real_sentences, padding=True, return_tensors="np")
    assert batch["attention_mask"].min() == 0  # padding is exercised
    ref, ref_pooled = torch_hidden(minilm.path, batch)
    out = jax.jit(minilm.apply)(minilm.params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"][..., None] > 0
    diff = np.abs(np.asarray(out.last_hidden_state) - ref) * mask  # padded positions are undefined in both
    assert diff.max() <= 1e-4, diff.max()
    np.testing.assert_allclose(np.asarray(out.pooler_output), ref_pooled, atol=1e-4)


def test_minilm_embeddings_match_sentence_transformers(minilm, real_sentences):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm.path), device="cpu").encode(real_sentences, convert_to_numpy=True)
    ours = Embedder(minilm, batch_size=8)(real_sentences)
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, rtol=1e-5)  # the checkpoint's Normalize module


def test_roberta_positions_and_prefix(tmp_path, minilm):
    model = save_tiny(tmp_path, "roberta", vocab_size=30522, pad_token_id=1, type_vocab_size=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((minilm.path / name).read_bytes())
    enc = load_encoder(tmp_path)
    assert enc.config.position_offset == 2
    ids = np.array([[0, 15, 27, 33, 2, 1, 1], [0, 44, 2, 1, 1, 1, 1]], np.int32)
    mask = (ids != 1).astype(np.int32)
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = enc.apply(enc.params, ids, mask)
    np.testing.assert_allclose(np.asarray(out.last_hidden_state) * mask[..., None], ref * mask[..., None], atol=1e-5)


def test_dropout_is_real_and_driven_by_the_rng(minilm, real_sentences):
    batch = minilm.tokenizer(real_sentences[:4], padding=True, return_tensors="np")
    args = (minilm.params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    f = jax.jit(lambda key, *a: minilm.apply(*a, dropout_rng=key).last_hidden_state)
    a, a2, b = f(jax.random.key(1), *args), f(jax.random.key(1), *args), f(jax.random.key(2), *args)
    clean = minilm.apply(*args).last_hidden_state
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert float(jnp.abs(a - b).max()) > 1e-2
    assert float(jnp.abs(a - clean).max()) > 1e-2


def test_bfloat16_compute_stays_close(minilm, real_sentences):
    bf16 = load_encoder(minilm.path, dtype=jnp.bfloat16)
    a = Embedder(minilm, batch_size=8)(real_sentences)
    b = Embedder(bf16, batch_size=8)(real_sentences)
    assert b.dtype == np.float32
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.995, cos.min()
