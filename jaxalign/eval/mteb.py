"""MTEB (mteb 2.x) evaluation of any jaxalign embedding function.

* ``MtebEncoder`` exposes a function ``list[str] -> [N, D]`` embeddings (an ``Embedder``, or anything
  with its call interface, such as decoder-embedding modes) as an mteb encoder (``mteb.EncoderProtocol``).
* ``local_sts_task`` turns a jaxalign STS data set (any ``jaxalign.data.sts.load_sts`` spec) into an
  mteb STS task held in memory, so MTEB can score a local file without the Hugging Face hub.
* ``resolve_tasks`` and ``evaluate`` run tasks by name through ``mteb.evaluate``, writing mteb's result
  files, and report a task whose data cannot be reached as one ``TaskUnavailableError`` line.

mteb is the optional extra ``jaxalign[mteb]``: nothing else in jaxalign imports this module, and
importing it without mteb raises an ImportError that says what to install.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

try:
    import mteb
    from mteb import ResultCache
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
except ImportError as e:
    raise ImportError(f"MTEB evaluation needs the mteb package (2.x): pip install 'jaxalign[mteb]' ({e})") from e

from jaxalign.data.sts import StsTask, load_sts
from jaxalign.inference.embed import Embedder

EmbedFn = Callable[[list[str]], np.ndarray]
LOCAL_STS = "sts:"  # task-name prefix of a local STS data set: sts:<load_sts spec>


class TaskUnavailableError(ValueError):
    """A task that is not known to mteb, or whose data cannot be read here."""


class MtebEncoder(AbsEncoder):
    """An mteb encoder over ``embed``: every text of a task's input batches, embedded in one call.

    ``embed`` keeps its own batching (an ``Embedder`` buckets by length), so mteb's ``batch_size``
    only sizes the data loader. Similarity is cosine, as in ``jaxalign.eval.sts``.
    """

    def __init__(self, embed: EmbedFn, meta: ModelMeta):
        self.embed = embed
        self.mteb_model_meta = meta

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        """[N, D] float32 embeddings of the N texts of ``inputs`` (a DataLoader of ``{"text": [...]}`` batches)."""
        texts = [text for batch in inputs for text in batch["text"]]
        return np.asarray(self.embed(texts), np.float32)


def mteb_name(model: str) -> str:
    """The ``org/name`` mteb files results under: ``jaxalign/`` and the model's last path component
    (``all-MiniLM-L6-v2``, a checkpoint directory's name), since the weights ran in jaxalign."""
    path = Path(model).expanduser()
    return f"jaxalign/{(path.resolve() if path.is_dir() else path).name}"


def model_meta(name: str, *, max_tokens: int | None = None, n_parameters: int | None = None,
               experiment: Mapping[str, Any] | None = None) -> ModelMeta:
    """mteb metadata for a jaxalign model; ``experiment`` (settings that change the embeddings, such
    as a non-default pooling) becomes mteb's ``experiment_kwargs``, so such runs get their own results folder."""
    return ModelMeta.create_empty({
        "name": name, "framework": ["JAX"], "similarity_fn_name": ScoringFunction.COSINE, "max_tokens": max_tokens,
        "n_parameters": n_parameters, "experiment_kwargs": dict(experiment) if experiment else None,
    })


def embedder_meta(embedder: Embedder, name: str, experiment: Mapping[str, Any] | None = None) -> ModelMeta:
    """``model_meta`` for an ``Embedder``: its parameter count and token limit, and as experiment
    settings every pooling field and the max length where they differ from the checkpoint's defaults,
    and the embedder's own ``settings`` (a ``PromptEmbedder``'s prompt and token prepending)."""
    encoder, pooling = embedder.encoder, embedder.pooling
    default = getattr(embedder, "default_pooling", None) or encoder.pooling  # a decoder's is the embedder's
    changed = {f.name: getattr(pooling, f.name) for f in dataclasses.fields(pooling)
               if getattr(pooling, f.name) != getattr(default, f.name)}
    if embedder.max_length != encoder.max_length:
        changed["max_length"] = embedder.max_length
    n_parameters = sum(x.size for x in jax.tree.leaves(encoder.params))
    return model_meta(name, max_tokens=embedder.max_length, n_parameters=n_parameters,
                      experiment={**changed, **getattr(embedder, "settings", {}), **(experiment or {})})


class LocalStsTask(AbsTaskSTS):
    """An mteb STS task over an in-memory ``StsTask``: its subsets concatenated into one ``test``
    split, so mteb's ``cosine_spearman`` is ``jaxalign.eval.sts``'s ``all`` / 100. Made per data set
    by ``local_sts_task``, which gives each its own ``metadata`` as mteb's tasks have."""

    sts: StsTask

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        from datasets import Dataset, DatasetDict

        if self.data_loaded:
            return
        subsets = self.sts.subsets
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [s for sub in subsets for s in sub.sentences1],
            "sentence2": [s for sub in subsets for s in sub.sentences2],
            "score": np.concatenate([sub.scores for sub in subsets]).astype(float).tolist(),
        })})
        self.data_loaded = True


def local_sts_task(sts: StsTask, *, languages: Sequence[str] = ("eng-Latn",)) -> LocalStsTask:
    """``sts`` as an mteb task named ``local-<name>`` (apart from mteb's own STSBenchmark & co. in
    result folders), its dataset revision a hash of the pairs and scores. mteb rescales gold scores
    from 0-5 to 0-1 whatever their range, which leaves the correlations unchanged."""
    digest = hashlib.sha256()
    for sub in sts.subsets:
        for a, b, score in zip(sub.sentences1, sub.sentences2, sub.scores):
            digest.update(f"{a}\t{b}\t{float(score)!r}\n".encode())
    pairs = sum(len(sub) for sub in sts.subsets)
    metadata = mteb.TaskMetadata(
        name=f"local-{sts.name}", dataset={"path": sts.name, "revision": digest.hexdigest()[:16]},
        description=f"Local STS data set {sts.name} ({pairs} pairs, {len(sts.subsets)} subset(s)), read by jaxalign.",
        type="STS", category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=list(languages),
        main_score="cosine_spearman",
    )
    return type("LocalStsTask", (LocalStsTask,), {"metadata": metadata, "sts": sts})()


def resolve_tasks(names: Sequence[str]) -> list[mteb.AbsTask]:
    """mteb tasks for ``names``: a task mteb knows (``STSBenchmark``), or ``sts:SPEC`` for local STS
    data (``sts:builtin:sts-mini``, ``sts:path/sts-test.csv``, a directory: one task per data set)."""
    tasks = []
    for name in names:
        if name.startswith(LOCAL_STS):
            tasks += [local_sts_task(t) for t in load_sts(name[len(LOCAL_STS):])]
            continue
        try:
            tasks.append(mteb.get_task(name))
        except KeyError as e:
            hint = str(e.args[0] if e.args else e).removeprefix("KeyError: ")
            raise TaskUnavailableError(
                f"mteb task {name!r}: not a task mteb {mteb.__version__} knows ({hint}); "
                f"a local STS data set is {LOCAL_STS}PATH or {LOCAL_STS}builtin:sts-mini") from None
    return tasks


def load_task_data(task: mteb.AbsTask) -> None:
    """Loads ``task``'s data, raising ``TaskUnavailableError`` with what to do when it is neither
    cached nor downloadable."""
    try:
        task.load_data()
    except OSError as e:  # ConnectionError (offline or no network), FileNotFoundError (no such dataset)
        from huggingface_hub import constants

        source = task.metadata.dataset.get("path")
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE else "it cannot be downloaded"
        raise TaskUnavailableError(
            f"mteb task {task.metadata.name!r}: its data ({source} on the Hugging Face hub) is not cached here and "
            f"{why} ({str(e).splitlines()[0]}); run once with HF_HUB_OFFLINE=0 where the hub is reachable to cache "
            f"it, or give a local task ({LOCAL_STS}PATH)") from None


@dataclasses.dataclass
class Score:
    """One task's main score (mteb's scale, 0-1 for correlations), averaged over splits and subsets."""

    task: str
    type: str
    metric: str
    value: float
    splits: dict[str, float]  # split -> main score averaged over its subsets


def evaluate(model: MtebEncoder, tasks: Sequence[mteb.AbsTask], cache: ResultCache | None) -> list[Score]:
    """Runs each task through ``mteb.evaluate``, loading its data unless loaded and freeing it after;
    always recomputes (a checkpoint directory has no revision that would tell stale results
    apart). With ``cache``, mteb writes its result files there."""
    scores = []
    for task in tasks:
        load_task_data(task)
        try:
            (result,) = mteb.evaluate(model, task, cache=cache, overwrite_strategy="always", co2_tracker=False,
                                      show_progress_bar=False).task_results
        finally:
            task.unload_data()
        splits = {split: float(np.mean([s["main_score"] for s in subsets])) for split, subsets in result.scores.items()}
        meta = task.metadata
        scores.append(Score(meta.name, meta.type, meta.main_score, float(result.get_score()), splits))
    return scores


def render_table(scores: Sequence[Score], title: str = "MTEB (main score x 100)"):
    """A rich table: one row per task with its type, main metric, splits and main score x 100."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "type", "metric", "splits", "score"):
        table.add_column(col, justify="right" if col == "score" else "left")
    for s in scores:
        table.add_row(s.task, s.type, s.metric, ", ".join(s.splits), f"{100 * s.value:.2f}")
    return table


def write_json(path: str | Path, scores: Sequence[Score], meta: dict) -> None:
    tasks = {s.task: {k: v for k, v in dataclasses.asdict(s).items() if k != "task"} for s in scores}
    payload = {**meta, "mteb_version": mteb.__version__, "tasks": tasks}
    Path(path).write_text(json.dumps(payload, indent=2))
