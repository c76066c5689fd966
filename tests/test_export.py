"""Exported checkpoints load in transformers / sentence-transformers and embed identically."""

import jax
import numpy as np
import pytest

from jaxalign.inference.embed import Embedder
from jaxalign.models import load_encoder
from jaxalign.models.export import export_hf

from torch_refs import torch, transformers  # noqa: E402  (skips the module without torch)


def test_export_roundtrip_matches_pytorch(tmp_path, minilm, real_sentences):
    # Perturb the weights so the test cannot pass by copying the original files.
    params = jax.tree.map(lambda x: x * 1.01, minilm.params)
    out = export_hf(minilm, jax.device_get(params), tmp_path / "exported")
    ours = Embedder(minilm, batch_size=8)(real_sentences, params=params)

    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(out), device="cpu")
    ref = st.encode(real_sentences, convert_to_numpy=True)
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99999, cos.min()

    batch = minilm.tokenizer(real_sentences[:4], padding=True, return_tensors="np")
    with torch.inference_mode():
        hf = transformers.AutoModel.from_pretrained(str(out)).eval()(
            **{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
    again = load_encoder(out)
    mine = np.asarray(again.apply(again.params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state)
    mask = batch["attention_mask"][..., None]
    assert np.abs((mine - hf) * mask).max() <= 1e-4


def test_export_truncated_model(tmp_path, minilm):
    small = load_encoder(minilm.path, num_layers=2)
    out = export_hf(small, jax.device_get(small.params), tmp_path / "small")
    cfg = transformers.AutoConfig.from_pretrained(str(out))
    assert cfg.num_hidden_layers == 2
    assert load_encoder(out).config.num_hidden_layers == 2
