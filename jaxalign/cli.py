"""The ``jaxalign`` command line: ``embed``, ``generate``, ``train``, ``eval sts``, ``eval mteb``,
``eval preference``, ``eval reward``, ``merge`` and ``plot``.

Every subcommand validates its inputs (model, data, mesh, shapes) before compiling anything
and reports bad input as one line naming the file/field and the fix, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

DTYPES = ("float32", "bfloat16")


def _add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-process runs (one process per host; default: the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
        "JAX_PROCESS_ID variables, else the cluster JAX detects: TPU VM slices, SLURM, Open MPI, Kubernetes)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address, the same on every process (JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run (JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0-based (JAX_PROCESS_ID)")
    g.add_argument("--init-timeout", type=int, default=300,
                   help="seconds to wait for every process to join. Default: %(default)s")
    g.add_argument("--heartbeat-timeout", type=int, default=100,
                   help="seconds of silence after which a process counts as dead and the others stop with an error. "
                        "Default: %(default)s")


def _join(args) -> None:
    """Joins the multi-process run the flags or the environment describe, before any device is used."""
    from jaxalign import distributed

    distributed.initialize(distributed.LaunchConfig.from_env(
        coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
        init_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout))


def _main_process() -> bool:
    """Whether this process prints results and writes output files (process 0 of a run)."""
    import jax

    return jax.process_index() == 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="packaged model name (all-MiniLM-L6-v2, or the decoder SmolLM2-135M-Instruct), a Hugging Face "
                        "checkpoint directory (config.json + model.safetensors + tokenizer; BERT-family encoders or "
                        "Llama/Qwen2/Qwen3/Mistral decoders) or a decoder's .gguf file. Default: %(default)s")
    g.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype; parameters stay float32 and pooling is done in float32. Default: %(default)s")
    g.add_argument("--batch-size", type=int, default=64, help="most sentences per compiled batch (fewer for long "
                        "sentences, within --max-tokens). Default: %(default)s")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="encoders: most padded tokens per batch, so long sentences come in fewer rows (raise it on an "
                        "accelerator; 0: always --batch-size rows). Default: 2048")
    g.add_argument("--max-length", type=int, default=None,
                   help="truncate to this many tokens (default: the model's max_seq_length, else its position limit)")
    g.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                   help="shard over a device mesh, e.g. '-1,1,1' (pure data parallel over all devices) or '2,2,2'. "
                        "Default: one device")
    g = p.add_argument_group("pooling (encoder defaults come from the checkpoint's sentence-transformers config)")
    g.add_argument("--pooling", default=None,
                   help="mean | max | cls | cls_before_pooler | cls_pooler | last | mean_top_k | concat_top_k | "
                        "mean_first_last; for a decoder last (default: the prompt's last token) or mean")
    g.add_argument("--layer", type=int, default=None,
                   help="hidden layer to pool (-1 last, 0 embeddings, n after layer n). For a decoder: transformers' "
                        "hidden_states index, n the raw output of layer n, -1 the final-normed output, -2 (default) "
                        "the raw output of the penultimate layer; a decoder trained by jaxalign train: the layer, "
                        "pooling and prompt it was trained with (its embedding.json)")
    g.add_argument("--top-k", type=int, default=None, help="layers for mean_top_k / concat_top_k")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None, help="L2-normalise embeddings")
    g.add_argument("--truncate-dim", type=int, default=None, help="Matryoshka: keep the first D dimensions")
    g = p.add_argument_group("decoders as sentence encoders (Token Prepending, Fu et al. 2025, arXiv 2412.11556)")
    g.add_argument("--prompt", default=None,
                   help="prompteol (default) | pcot (Pretended CoT) | ke (Knowledge Enhancement) | metaeol (its 8 "
                        "prompts' embeddings averaged) | a template with the sentence placeholder *sent 0* (and <PST> "
                        "before the quoted sentence for token prepending), e.g. 'This sentence : <PST> \"*sent 0*\" "
                        "means in one word:\"'")
    g.add_argument("--token-prepending", action="store_true",
                   help="Token Prepending: the <PST> token's input at layers [tp-start, tp-exit) becomes the previous "
                        "layer's last-token state")
    g.add_argument("--tp-start", type=int, default=None,
                   help="first layer (0-based) whose <PST> input is replaced. Default: the reference's for the model "
                        "family (1)")
    g.add_argument("--tp-exit", type=int, default=None,
                   help="first layer no longer replaced. Default: the reference's for the model family (7 for "
                        "llama/mistral, 6 for qwen2/qwen3)")
    g.add_argument("--num-layers", type=int, default=None, help="keep only the decoder's first N layers (quick checks)")


def _embedder(args):
    import dataclasses

    import jax.numpy as jnp

    from jaxalign.inference.embed import Embedder
    from jaxalign.models import load_encoder
    from jaxalign.models.decoders import is_decoder
    from jaxalign.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig.parse(args.mesh)) if args.mesh else None
    if is_decoder(args.model):
        return _prompt_embedder(args, mesh)
    decoder_only = [f for f, v in (("--prompt", args.prompt), ("--token-prepending", args.token_prepending or None),
                                   ("--tp-start", args.tp_start), ("--tp-exit", args.tp_exit),
                                   ("--num-layers", args.num_layers)) if v is not None]
    if decoder_only:
        raise ValueError(f"{', '.join(decoder_only)}: only for a decoder --model (e.g. SmolLM2-135M-Instruct); "
                         f"{args.model} is an encoder")
    encoder = load_encoder(args.model, mesh=mesh, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    overrides = {k: v for k, v in (("mode", args.pooling), ("layer", args.layer), ("top_k", args.top_k),
                                   ("normalize", args.normalize), ("truncate_dim", args.truncate_dim)) if v is not None}
    pooling = dataclasses.replace(encoder.pooling, **overrides)
    budget = {}
    if args.max_tokens is not None:
        if args.max_tokens < 0:
            raise ValueError(f"--max-tokens {args.max_tokens}: give a positive token budget, or 0 for none")
        budget["max_tokens"] = args.max_tokens or None
    return Embedder(encoder, pooling, batch_size=args.batch_size, max_length=args.max_length, mesh=mesh, **budget)


def _prompt_embedder(args, mesh):
    """A ``PromptEmbedder`` for a decoder ``--model`` from the decoder flags."""
    import dataclasses

    import jax.numpy as jnp

    from jaxalign.inference.prompt_embed import DEFAULT_POOLING, TP_DEFAULTS, PromptEmbedder, saved_embedding
    from jaxalign.models.decoders import load_decoder

    if (args.tp_start is not None or args.tp_exit is not None) and not args.token_prepending:
        raise ValueError("--tp-start/--tp-exit set the token prepending layers: add --token-prepending")
    if args.top_k is not None:
        raise ValueError("--top-k is for encoders' mean_top_k / concat_top_k; a decoder pools last or mean")
    if args.max_tokens is not None:
        raise ValueError("--max-tokens is the encoders' token budget; a decoder's batches are --batch-size prompts")
    decoder = load_decoder(args.model, mesh=mesh, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
                           num_layers=args.num_layers)
    saved = saved_embedding(args.model)  # a decoder trained by `jaxalign train`: embed as it was trained
    overrides = {k: v for k, v in (("mode", args.pooling or saved.get("pooling")),
                                   ("layer", args.layer if args.layer is not None else saved.get("layer")),
                                   ("normalize", args.normalize), ("truncate_dim", args.truncate_dim)) if v is not None}
    pooling = dataclasses.replace(DEFAULT_POOLING, **overrides)
    tp = None
    if args.token_prepending:
        start, exit_ = TP_DEFAULTS.get(decoder.config.model_type, TP_DEFAULTS["llama"])
        tp = (start if args.tp_start is None else args.tp_start, exit_ if args.tp_exit is None else args.tp_exit)
    return PromptEmbedder(decoder, args.prompt or saved.get("prompt") or "prompteol", pooling, token_prepending=tp,
                          batch_size=args.batch_size, max_length=args.max_length, mesh=mesh)


def cmd_embed(args) -> int:
    import numpy as np

    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file (expected one sentence per line)")
    sentences = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError(f"{path}: no non-blank lines to embed")
    embedder = _embedder(args)
    start = time.perf_counter()
    emb = embedder(sentences, progress=True)
    elapsed = time.perf_counter() - start
    if not _main_process():
        return 0
    np.save(args.output, emb)
    print(f"embedded {len(sentences)} sentences -> {args.output} {emb.shape} in {elapsed:.1f}s "
          f"({len(sentences) / elapsed:.0f} sentences/s, includes compilation)")
    return 0


def cmd_generate(args) -> int:
    import jax.numpy as jnp

    from jaxalign.models.decoders import load_decoder

    if bool(args.prompt) == bool(args.data):
        raise ValueError("give either --prompt (one or more, printed) or --data with --output (D2O samples), not both")
    if args.best_of is not None:
        return _best_of_n(args)
    if args.data and not args.output:
        raise ValueError("--data needs --output: the jsonl file of {prompt, rejected, samples} records to write")
    decoder = load_decoder(args.model, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
                           num_layers=args.num_layers)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.prompt else 1.0)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                    top_k=args.top_k, seed=args.seed)
    if args.prompt:
        from jaxalign.inference.generate import generate

        out = generate(decoder, None, args.prompt, chat=args.chat, **sampling)
        if not _main_process():
            return 0
        for prompt, text, finished in zip(args.prompt, out.texts, out.finished):
            print(f"### {prompt}\n{text}{'' if finished else ' [...]'}\n")
        return 0
    from jaxalign.inference.self_samples import write_self_samples

    args.num_samples = 11 if args.num_samples is None else args.num_samples
    n = write_self_samples(decoder, args.data, args.output, num_samples=args.num_samples,
                           max_examples=args.max_examples, skip_examples=args.skip_examples,
                           max_prompt_length=args.max_prompt_length, chat_template=args.chat_template,
                           batch_size=args.batch_size, **sampling)
    if not _main_process():
        return 0
    print(f"wrote {n} records with {args.num_samples} samples each -> {args.output}")
    return 0


def _best_of_n(args) -> int:
    """``generate --best-of N --scorer SPEC``: every check before the policy is compiled."""
    import jax
    import jax.numpy as jnp
    from rich.console import Console
    from rich.table import Table

    from jaxalign.data.preference import load_preference
    from jaxalign.data.preference.tokens import tokenize_preference
    from jaxalign.inference import best_of_n_sampling as bon
    from jaxalign.inference.scorers import SCORER_SPECS, load_scorer
    from jaxalign.models.decoders import load_decoder

    if jax.process_count() > 1:
        raise ValueError("--best-of runs in one process (it appends to one score cache); launch it without "
                         "--num-processes")
    if not args.scorer:
        raise ValueError(f"--best-of needs --scorer: {SCORER_SPECS}")
    if args.best_of < 2:
        raise ValueError(f"--best-of {args.best_of}: N must be >= 2 (N = 1 is plain sampling)")
    if args.data and not args.output:
        raise ValueError("--best-of with --data needs --output: the JSON report to write (scores are cached beside it)")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    policy = load_decoder(args.model, dtype=dtype, num_layers=args.num_layers)
    prompts = args.prompt
    if args.data:
        records = load_preference(args.data, "negatives", args.max_examples, args.skip_examples)
        tokens = tokenize_preference(policy.tokenizer, records, max_length=policy.max_length, num_samples=0,
                                     max_prompt_length=args.max_prompt_length, chat_template=args.chat_template)
        prompts = [ex.prompt.tolist() for ex in tokens.examples]
    scorer = load_scorer(args.scorer, dtype=dtype)
    bon.check_best_of_n(policy, scorer, prompts, args.best_of, args.num_samples)
    cache = args.cache or (f"{args.output}.scores.jsonl" if args.output else None)
    rows = bon.run_best_of_n(
        policy, scorer, prompts, n=args.best_of, m=args.num_samples, max_new_tokens=args.max_new_tokens,
        temperature=1.0 if args.temperature is None else args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, chat=args.chat, batch_size=args.batch_size, cache=cache,
        settings={"model": args.model, "num_layers": args.num_layers, "scorer": args.scorer, "dtype": args.dtype})
    report = bon.summarise(rows, args.best_of)
    overall = report["overall"]
    table = Table(title=f"best-of-{args.best_of}, {args.model} scored by {scorer.name}")
    for column in ("prompt", "best of N", "mean reward", "KL exact", "win vs ref"):
        table.add_column(column, justify="right")
    for p in report["per_prompt"][:20]:
        table.add_row(str(p["index"]), f"{p['best_reward']:.4f}", f"{p['mean_reward']:.4f}", f"{p['kl_exact']:.4f}",
                      f"{p['win_vs_reference']:g}")
    table.add_row("all", f"{overall['best_reward']:.4f}", f"{overall['mean_reward']:.4f}",
                  f"{overall['kl_exact']:.4f}", f"{overall['win_vs_reference']:.3f}")
    Console().print(table)
    print(f"KL(pi_BoN || p), exact over each prompt's {overall['samples']:g} samples: mean {overall['kl_exact']:.4f} "
          f"nats; "
          f"upper bound log N - (N-1)/N = {overall['kl_bound']:.4f}\n"
          f"win rate vs one reference sample: measured {overall['win_vs_reference']:.3f}, exact over the samples "
          f"{overall['win_rate_exact']:.3f}; upper bound N/(N+1) = {overall['win_rate_bound']:.3f}\n"
          f"best-of-N reward: measured {overall['best_reward']:.4f}, expected over the samples "
          f"{overall['expected_best_reward']:.4f}; mean reward of the policy {overall['mean_reward']:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"settings": vars(args) | {"func": None}, **report}, indent=2))
        print(f"wrote {args.output} (scores cached in {cache})")
    return 0


def cmd_eval_sts(args) -> int:
    from rich.console import Console

    from jaxalign.data.sts import load_sts
    from jaxalign.eval.sts import evaluate_sts, render_table, write_json

    tasks = [t for spec in args.data for t in load_sts(spec, split=args.split)]
    embedder = _embedder(args)
    embed = lambda s: embedder(s, progress=True)
    title = f"STS, {args.model} (Spearman x 100 of cosine similarity)"
    if args.bert_whitening:
        from jaxalign.data.corpora import read_sentences
        from jaxalign.losses.whitening import apply_whitening, bert_whitening

        corpus = [ex[0] for ex in read_sentences(args.bert_whitening)]
        mu, w = bert_whitening(embed(corpus), k=args.whitening_dim)
        embed = lambda s, raw=embed: apply_whitening(raw(s), mu, w)
        title += f", BERT-whitened (k={w.shape[1]}, fit on {len(corpus)} sentences)"
    results = evaluate_sts(embed, tasks)
    if not _main_process():
        return 0
    Console().print(render_table(results, title=title))
    if args.json:
        write_json(args.json, results, {"model": args.model, "dtype": args.dtype, "pooling": str(embedder.pooling),
                                        "bert_whitening": args.bert_whitening, "whitening_dim": args.whitening_dim})
        print(f"wrote {args.json}")
    return 0


def cmd_eval_mteb(args) -> int:
    from rich.console import Console

    try:
        from jaxalign.eval import mteb as mteb_eval
    except ImportError as e:  # the optional extra is missing: one line saying what to install
        raise ValueError(str(e)) from None
    tasks = mteb_eval.resolve_tasks(args.tasks)
    for task in tasks:  # every task's data before the model: an unreachable one fails first
        mteb_eval.load_task_data(task)
    embedder = _embedder(args)
    meta = mteb_eval.embedder_meta(embedder, args.name or mteb_eval.mteb_name(args.model),
                                   {"dtype": args.dtype} if args.dtype != "float32" else None)
    model = mteb_eval.MtebEncoder(lambda s: embedder(s, progress=True), meta)
    cache = mteb_eval.ResultCache(args.output_dir) if _main_process() else None
    scores = mteb_eval.evaluate(model, tasks, cache)
    if not _main_process():
        return 0
    Console().print(mteb_eval.render_table(scores, title=f"MTEB, {args.model} (main score x 100)"))
    print(f"wrote mteb result files to {cache.get_task_result_path(scores[0].task, meta).parent}")
    if args.json:
        mteb_eval.write_json(args.json, scores, {"model": args.model, "name": meta.name, "dtype": args.dtype,
                                                 "pooling": str(embedder.pooling)})
        print(f"wrote {args.json}")
    return 0


def cmd_eval_preference(args) -> int:
    from rich.console import Console

    from jaxalign.eval.preference import evaluate_preference, render_table, write_json
    from jaxalign.sharding import MeshConfig

    mesh = MeshConfig.parse(args.mesh).sizes() if args.mesh else None
    args.max_prompt_length = args.max_length // 2 if args.max_prompt_length is None else args.max_prompt_length or None
    summary = evaluate_preference(
        args.model, args.data, ref=args.ref, beta=args.beta, max_examples=args.max_examples,
        max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        max_completion_length=args.max_completion_length, chat_template=args.chat_template,
        batch_size=args.batch_size, num_layers=args.num_layers, dtype=args.dtype, mesh=mesh, topk=args.topk)
    if not _main_process():
        return 0
    reward = f"beta (log pi - log pi_ref), ref {args.ref}" if args.ref else "beta log pi (reference-free: no --ref)"
    Console().print(render_table(summary, title=f"Preference, {args.model} on {args.data}: reward = {reward}"))
    if args.json:
        write_json(args.json, summary, {k: getattr(args, k) for k in ("model", "data", "ref", "beta", "max_length",
                                                                       "max_prompt_length", "num_layers", "dtype")})
        print(f"wrote {args.json}")
    return 0


def _scorer(args):
    """The scorer of ``--model DIR`` (a reward model) or ``--scorer SPEC``, exactly one of them."""
    import jax.numpy as jnp

    from jaxalign.inference.scorers import SCORER_SPECS, load_scorer

    if bool(args.model) == bool(args.scorer):
        raise ValueError(f"give --model DIR (a reward model) or --scorer SPEC ({SCORER_SPECS}), one of the two")
    return load_scorer(args.scorer or f"reward:{args.model}", num_layers=args.num_layers,
                       dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)


def cmd_eval_reward(args) -> int:
    from rich.console import Console

    from jaxalign.eval.preference import render_table, write_json
    from jaxalign.eval.reward import evaluate_scorer

    scorer = _scorer(args)
    summary = evaluate_scorer(scorer, args.data, max_examples=args.max_examples, skip_examples=args.skip_examples,
                              max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                              max_completion_length=args.max_completion_length, chat_template=args.chat_template,
                              batch_size=args.batch_size)
    if not _main_process():
        return 0
    Console().print(render_table(summary, title=f"Pairwise, {scorer.name} on {args.data}"))
    if args.json:
        write_json(args.json, summary, {"scorer": scorer.name, "data": args.data, "max_length": args.max_length,
                                        "skip_examples": args.skip_examples})
        print(f"wrote {args.json}")
    return 0


def _eval_line(metric: str, data: str, evals: dict[int, float]) -> str:
    """A run's evaluations, first -> last, saying plainly whether the metric improved (every
    task's metric is higher-is-better)."""
    first, last = min(evals), max(evals)
    if first == last:
        return f"{metric} on {data}: step {last}: {evals[last]:.4g}"
    change, best = evals[last] - evals[first], max(evals, key=evals.get)
    verdict = f"improved by {change:.4g}" if change > 0 else f"no improvement ({change:+.4g})"
    return (f"{metric} on {data}: step {first}: {evals[first]:.4g} -> step {last}: {evals[last]:.4g}, {verdict}; "
            f"best {evals[best]:.4g} at step {best}")


def cmd_train(args) -> int:
    from jaxalign.config import load_recipe, to_dict
    from jaxalign.config.run import TrainConfig

    cfg = load_recipe(TrainConfig, args.recipe, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from jaxalign.training.trainer import train

    summary = train(cfg)
    if not _main_process():
        return 0
    if summary.get("stopped_by"):
        where = (f"checkpoint at step {summary['steps']} in {cfg.checkpoint.dir}; run the same command to resume"
                 if cfg.checkpoint.dir else "nothing saved (no checkpoint.dir)")
        print(f"stopped by {summary['stopped_by']} after step {summary['steps']} of {cfg.steps}: {where}")
    if summary["resumed_from"] >= cfg.steps:
        print(f"nothing to train: {cfg.checkpoint.dir} already holds step {cfg.steps} of {cfg.steps} "
              "(checkpoint.resume=false checkpoint.overwrite=true starts over)")
    if summary["eval"]:
        print(_eval_line(summary["eval_metric"], cfg.eval.data, summary["eval"]))
    losses = summary["losses"]
    if losses:
        print(f"loss: {losses[min(losses)]:.4f} (step {min(losses)}) -> {losses[max(losses)]:.4f} "
              f"(step {max(losses)}); skipped non-finite steps: {summary['skipped']}; "
              f"{summary['examples_per_s']:.1f} examples/s")
    if args.json:
        payload = {k: v for k, v in summary.items() if k != "state"}
        Path(args.json).write_text(json.dumps({"config": to_dict(cfg), **payload}, indent=2, default=str))
    return 0


def cmd_plot(args) -> int:
    from jaxalign.viz import plot_benchmarks, plot_runs

    size = tuple(args.size) if args.size else None
    if args.benchmark:
        if args.metrics:
            raise ValueError("--metrics picks the curves of runs; drop it with --benchmark")
        plot_benchmarks(args.paths, args.output, labels=args.label, size=size)
    else:
        plot_runs(args.paths, args.output, args.metrics, labels=args.label, size=size)
    print(f"wrote {args.output}")
    return 0


def cmd_select(args) -> int:
    import jax.numpy as jnp

    from jaxalign.models import load_encoder
    from jaxalign.models.decoders import is_decoder, load_decoder
    from jaxalign.selection.deita import DeitaScorer
    from jaxalign.selection.select import check_options, conversation_embedder, read_rows, select, write_selection

    check_options(args.method, args.fraction, args.tau, args.prefer)
    rows = read_rows(args.data, args.kind, args.max_examples)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    scorer = embed = None
    if args.method == "deita":
        if not is_decoder(args.scorer):
            raise ValueError(f"--scorer {args.scorer}: Deita scores with a causal LM; give a decoder (e.g. "
                             "SmolLM2-135M-Instruct, or hkust-nlp/deita-complexity-scorer downloaded)")
        scorer = DeitaScorer(load_decoder(args.scorer, dtype=dtype), batch_size=args.batch_size,
                             max_length=args.max_length)
        if scorer.ids is None:
            print(f"note: the tokenizer of {args.scorer} has no single-token digits 1-6: every score is 3.0 "
                  "(Deita's fallback)")
    if args.method in ("deita", "entropy"):
        name = args.embedder or args.scorer
        model = load_decoder(name, dtype=dtype) if is_decoder(name) else load_encoder(name, dtype=dtype)
        embed = conversation_embedder(model, batch_size=args.batch_size, max_length=args.max_length)
    settings = f"{args.dtype}:{args.max_length}"
    chosen = select([r for _, r in rows], method=args.method, fraction=args.fraction, scorer=scorer, embed=embed,
                    tau=args.tau, prefer=args.prefer, seed=args.seed, cache=args.output,
                    scorer_key=f"{args.scorer}:{settings}", embed_key=f"{args.embedder or args.scorer}:{settings}")
    write_selection(args.output, [row for row, _ in rows], chosen)
    print(f"selected {len(chosen.rows)} of {chosen.num_rows} rows ({args.method}) -> {args.output}")
    return 0


def cmd_restore(args) -> int:
    import json

    import jax.numpy as jnp

    from jaxalign.data.corpora import read_sentences
    from jaxalign.data.preference import load_preference
    from jaxalign.models.decoders import load_decoder
    from jaxalign.restore.procedure import RestoreConfig, check_same_shapes, likelihood_score, restore
    from jaxalign.sharding import MeshConfig, make_mesh

    cfg = RestoreConfig(steps=args.steps, warmup_steps=args.warmup_steps, save_every=args.save_every,
                        recovery_rate=args.recovery_rate, rollback_rate=args.rollback_rate,
                        metric_drop=args.metric_drop, layer_end=args.layer_end, batch_size=args.batch_size,
                        max_length=args.max_length)
    harmful = [s for (s,) in read_sentences(args.harmful)]
    benign = [s for (s,) in read_sentences(args.benign)]
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    aligned, finetuned = (load_decoder(m, dtype=dtype) for m in (args.aligned, args.finetuned))
    check_same_shapes(aligned, finetuned)
    score = None
    if args.task_data:
        records = load_preference(args.task_data, "sft", args.task_examples)
        score = likelihood_score(finetuned, records, mesh=make_mesh(MeshConfig.parse("1,1,1")),
                                 max_length=args.max_length * 2)
    result = restore(aligned, finetuned, harmful, benign, cfg=cfg, task_score=score, output=args.output)
    report = {k: v for k, v in result.items() if k != "params"}
    Path(args.output, "restore.json").write_text(json.dumps(report, indent=2))
    print(f"delivered step {result['delivered']} -> {Path(args.output) / 'restored'} (report: restore.json)")
    return 0


MERGE_METHODS = ("average", "slerp", "ties", "self-positioning")


def _check_merge_args(args) -> None:
    """Every bad --method / --weights / --density combination, before a checkpoint is read."""
    n = len(args.models)
    if args.weights is not None and len(args.weights) != n:
        raise ValueError(f"--weights has {len(args.weights)} values for {n} --models; give one per model")
    if args.weights is not None and args.method in ("ties", "self-positioning"):
        raise ValueError(f"--weights is for average and slerp; {args.method} finds or needs no per-model weights")
    if args.weights is not None and (min(args.weights) < 0 or sum(args.weights) <= 0):
        raise ValueError(f"--weights {args.weights}: must be >= 0 with a positive sum")
    if args.method in ("slerp", "self-positioning") and n < 2:
        raise ValueError(f"--method {args.method} interpolates between models: give at least 2 --models")
    if not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density {args.density}: the fraction of entries TIES keeps, in (0, 1]")


def cmd_merge(args) -> int:
    import jax
    import jax.numpy as jnp

    from jaxalign.models import merge
    from jaxalign.models.merge_checkpoints import check_compatible, read_tensors, write_merged

    _check_merge_args(args)
    base_dir, model_dirs = check_compatible(args.base, args.models)
    if Path(args.output).resolve() in {d.resolve() for d in model_dirs}:
        raise ValueError(f"--output {args.output} is one of the --models; choose a new directory")
    search = None
    if args.method == "self-positioning":
        search = _self_positioning(args, base_dir, model_dirs)

    base = read_tensors(base_dir)
    floating = sorted(k for k, v in base.items() if jnp.issubdtype(v.dtype, jnp.floating))  # bfloat16 too
    if search is not None:  # the angle the search saw: over the tensors the encoder loads (no MLM heads)
        from fnmatch import fnmatch

        from jaxalign.models.bert.weights import IGNORE
        floating = [k for k in floating if not any(fnmatch(k, pattern) for pattern in IGNORE)]
    as_jnp = lambda tensors: {k: jnp.asarray(tensors[k], jnp.float32) for k in floating}
    base_f = as_jnp(base)
    vectors = merge.task_vectors(base_f, [as_jnp(read_tensors(d)) for d in model_dirs])
    if args.method == "average":
        vector = merge.weighted_average(vectors, args.weights, scale=args.scale)
    elif args.method == "ties":
        vector = merge.ties(vectors, density=args.density, scale=args.scale)
    else:
        weights = args.weights or [1.0] * len(vectors)
        scale = args.scale
        if search is not None:
            weights, scale = list(search.weights), search.scale
        vector = jax.tree.map(lambda v: scale * v,
                              merge.slerp_iterative(vectors, weights, convention=args.convention))
    merged = {**base, **jax.device_get(merge.apply_task_vector(base_f, vector))}
    out = write_merged(base_dir, merged, args.output)
    detail = ""
    if search is not None:
        detail = (f"; a = [{', '.join(f'{a:.4f}' for a in search.weights)}], lambda = {search.scale:.4f}, objective "
                  f"{search.objectives[0]:.4f} -> {search.objectives[-1]:.4f} over {len(search.objectives)} steps")
    print(f"merged {len(model_dirs)} models onto {base_dir} by {args.method} -> {out}{detail}")
    return 0


def _self_positioning(args, base_dir: Path, model_dirs: list[Path]):
    """Loads the probe set and the encoders (checking both first) and runs the coefficient search."""
    from jaxalign.data.corpora import read_nli
    from jaxalign.models import load_encoder, merge
    from jaxalign.models.bert.config import SUPPORTED_MODEL_TYPES
    from jaxalign.models.registry import read_json
    from jaxalign.models.self_positioning import info_nce_probe_loss, probe_batches, search

    model_type = read_json(base_dir / "config.json").get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"--method self-positioning searches through an encoder's InfoNCE loss; {base_dir} is a "
                         f"{model_type!r} model (encoders: {', '.join(SUPPORTED_MODEL_TYPES)})")
    probe = read_nli(args.probe)[:args.max_examples]
    if len(probe) < args.batch_size:
        raise ValueError(f"--probe {args.probe}: {len(probe)} examples, fewer than one --batch-size of "
                         f"{args.batch_size}; use a larger probe set or a smaller --batch-size")
    base = load_encoder(base_dir)
    batches = probe_batches(base.tokenizer, probe, batch_size=args.batch_size,
                            max_length=min(args.max_length, base.max_length))
    vectors = merge.task_vectors(base.params, [load_encoder(d).params for d in model_dirs])
    loss = info_nce_probe_loss(base, base.params, base.pooling, temperature=args.temperature)
    return search(loss, vectors, batches, steps=args.steps, learning_rate=args.lr, mu=args.mu,
                  convention=args.convention)


def _options_reference() -> str:
    """Every training option with its default and what it does, from the typed config."""
    from jaxalign.config import describe_options
    from jaxalign.config.run import TrainConfig

    lines = ["options (KEY=VALUE; default in brackets). Each objective has its own options, listed under it:"]
    for name, default, doc in describe_options(TrainConfig):
        if default is None:  # an objective's heading: its options follow
            lines += ["", f"  {name}"] + textwrap.wrap(doc, 96, initial_indent="    ", subsequent_indent="    ")
            continue
        lines.append(f"  {name} [{default}]")
        lines += textwrap.wrap(doc, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxalign",
        description="JAX/Flax training and evaluation for alignment objectives. "
                    "Run `jaxalign COMMAND --help` for each command's options.",
    )
    parser.add_argument("-v", "--verbose", "--debug", action="store_true", dest="verbose",
                        help="log loading details, and show the traceback of an error instead of its one-line message "
                             "(errors that are not bad input always show theirs)")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="keep compiled programs in DIR across runs (JAX's persistent compilation cache), so that "
                             "a later run with the same shapes skips compiling them; JAX_COMPILATION_CACHE_DIR does "
                             "the same. Default: off")
    parser.add_argument("--host-memory", choices=("keep", "default"), default="keep",
                        help="keep: glibc's malloc keeps freed memory mapped for reuse, so XLA's per-step CPU buffers "
                             "stop page-faulting (on a CPU, 240k faults and 0.5 s of kernel time less per SimCSE step of "
                             "MiniLM; resident memory stays at its peak; see jaxalign.host_memory); default: glibc's "
                             "own behaviour. Default: %(default)s")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("embed", help="embed sentences (one per line) into a .npy matrix",
                       description="Embed each non-blank line of --input; writes a float32 [N, D] .npy file.")
    p.add_argument("--input", required=True, help="UTF-8 text file, one sentence per line")
    p.add_argument("--output", required=True, help="where to write the .npy embeddings")
    _add_model_args(p)
    _add_launch_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "generate", help="continue prompts with a decoder, or write D2O self-generated samples",
        description="Greedy or sampled decoding with a KV cache. With --prompt: print each continuation. With "
                    "--data and --output: for every record of a preference data set, sample --num-samples "
                    "completions of its prompt (rendered and truncated as training does) and write "
                    "{prompt, rejected, samples} jsonl records for data.kind=negatives (D2O).",
    )
    p.add_argument("--model", default="SmolLM2-135M-Instruct",
                   help="packaged name, Hugging Face checkpoint directory or .gguf file. Default: %(default)s")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--chat", action="store_true", help="render each --prompt as a user message with the chat template")
    p.add_argument("--data", default=None, help="preference data whose prompts to sample (as `jaxalign train` reads)")
    p.add_argument("--output", default=None, help="with --data: the jsonl file to write")
    p.add_argument("--num-samples", type=int, default=None,
                   help="with --data: samples per prompt (D2O's K). Default: 11. With --best-of N: samples per prompt "
                        "M >= N whose empirical distribution the exact KL is computed over (the best of the first N "
                        "is kept). Default: N")
    p.add_argument("--max-examples", type=int, default=None, help="with --data: the first N rows (after --skip-examples)")
    p.add_argument("--skip-examples", type=int, default=0, help="with --data: pass over the first N rows. Default: 0")
    p.add_argument("--max-prompt-length", type=int, default=None, help="with --data: keep each prompt's last N tokens")
    p.add_argument("--chat-template", default=None,
                   help="with --data: as data.chat_template ('auto' renders every record as a chat)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per compiled decoding batch. Default: %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most. Default: %(default)s")
    p.add_argument("--temperature", type=float, default=None,
                   help="0: greedy. Default: 0 with --prompt, 1.0 with --data (samples must differ)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off). Default: %(default)s")
    p.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens (0 = off). Default: 0")
    p.add_argument("--seed", type=int, default=0, help="sampling seed. Default: %(default)s")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N layers (quick checks)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype. Default: %(default)s")
    g = p.add_argument_group("best-of-N (Stiennon et al. 2020; KL measured as Beirami et al. 2024)")
    g.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="sample N completions per prompt (plus one reference sample), keep the best by --scorer, "
                        "and report best vs mean reward, the exact KL of best-of-N over the samples beside the bound "
                        "log N - (N-1)/N, and the win rate against the reference sample")
    g.add_argument("--scorer", default=None, metavar="SPEC", help="reward:DIR or dpo:POLICY,REF,BETA")
    g.add_argument("--cache", default=None,
                   help="JSONL file of the scores as computed; a rerun resumes from it. Default: OUTPUT.scores.jsonl")
    _add_launch_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "train", help="train with a recipe (YAML) and key=value overrides",
        description=textwrap.fill(
            "Train with RECIPE (a YAML file; see experiments/) and dotted key=value overrides, e.g. "
            "`jaxalign train experiments/simcse_unsup_small.yaml optim.lr=1e-5 data.batch_size=32`. "
            "Sections: model, data, optim, objective, mesh, checkpoint, eval, log; top level: seed, steps, "
            "max_nonfinite, export. --print-config shows a recipe's resolved values.", 100),
        epilog=_options_reference(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", nargs="?", default=None, help="YAML recipe; omitted: all defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-5")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--json", default=None, help="write the run summary (losses, evaluations, throughput) here")
    _add_launch_args(p)
    p.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model", description="Evaluate a model on a benchmark family.")
    ev_sub = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    p = ev_sub.add_parser(
        "sts", help="semantic textual similarity (Spearman x 100)",
        description="Cosine similarity of embeddings vs gold scores, Spearman x 100, per task and averaged. "
                    "DATA may be an STS-B sts-*.csv, a SentEval STS12-16 directory, SICK_test_annotated.txt, "
                    "a directory holding any of these (searched recursively), hf:NAME[:SPLIT] for a Hugging Face "
                    "dataset with sentence1/sentence2/score columns, or builtin:sts-mini.",
    )
    p.add_argument("--data", nargs="+", default=["builtin:sts-mini"], help="one or more data sets. Default: %(default)s")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"),
                   help="which STS-B file to use when a directory holds all three. Default: %(default)s")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--bert-whitening", default=None, metavar="CORPUS",
                   help="post-hoc BERT-whitening: fit y = (x - mu) U diag(S^-1/2)[:, :k] on the embeddings of CORPUS "
                        "(one sentence per line, or builtin:sentences-mini) and score the whitened embeddings")
    p.add_argument("--whitening-dim", type=int, default=None,
                   help="k: keep the k highest-variance whitened dimensions (default: all)")
    _add_model_args(p)
    _add_launch_args(p)
    p.set_defaults(func=cmd_eval_sts)

    p = ev_sub.add_parser(
        "mteb", help="MTEB tasks through mteb's own evaluation (pip install 'jaxalign[mteb]')",
        description="Runs each task through mteb.evaluate with the model as an mteb encoder (cosine similarity), "
                    "prints each task's main score and writes mteb's result files. A task's data comes from the "
                    "Hugging Face hub, or its local cache when offline (HF_HUB_OFFLINE=1).",
    )
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                   help="mteb task names (STSBenchmark, SICK-R, ...) or sts:SPEC for a local STS data set, SPEC being "
                        "anything `eval sts --data` takes (sts:builtin:sts-mini, sts:path/sts-test.csv)")
    p.add_argument("--output-dir", default=None,
                   help="where mteb writes its result files (results/<name>/<revision>/<task>.json). "
                        "Default: mteb's cache ($MTEB_CACHE, else ~/.cache/mteb)")
    p.add_argument("--name", default=None, metavar="ORG/NAME",
                   help="the model's name in mteb's results. Default: jaxalign/<the model's last path component>")
    p.add_argument("--json", default=None, help="also write the main scores to this JSON file")
    _add_model_args(p)
    _add_launch_args(p)
    p.set_defaults(func=cmd_eval_mteb)

    p = ev_sub.add_parser(
        "preference", help="implicit-reward accuracy and margins on preference pairs",
        description="Scores each (prompt, chosen, rejected) pair by its implicit reward beta (log pi(y|x) - "
                    "log pi_ref(y|x)) over completion tokens and reports TRL's rewards/accuracies, margins, "
                    "chosen/rejected rewards and log-probs, plus the length-normalised accuracy. DATA: a jsonl / "
                    "jsonl.gz / parquet file (TRL standard or conversational format, OpenAI's preference format, or "
                    "HH-RLHF's chosen/rejected transcripts), a directory of them, hf:NAME[:SPLIT], or builtin:prefs-mini.",
    )
    p.add_argument("--model", default="SmolLM2-135M-Instruct",
                   help="the policy: packaged name, Hugging Face checkpoint directory or .gguf file. Default: %(default)s")
    p.add_argument("--data", default="builtin:prefs-mini", help="held-out preference pairs. Default: %(default)s")
    p.add_argument("--ref", default=None,
                   help="reference model (usually the model before training); omitted: reference-free rewards")
    p.add_argument("--beta", type=float, default=0.1, help="reward scale. Default: %(default)s")
    p.add_argument("--max-examples", type=int, default=None, help="score the first N pairs (default: all)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="prompt + completion tokens; longer pairs are truncated as TRL does. Default: %(default)s "
                        "(TRL's DPOConfig value): all but 2 of the 4656 HH-RLHF test pairs fit whole in SmolLM2's "
                        "tokens (p99 720-750, the longest 1084)")
    p.add_argument("--max-prompt-length", type=int, default=None,
                   help="keep the prompt's last N tokens (the turns that lead into the completion). Default: half "
                        "of --max-length (512 of 1024, TRL's ratio): 98%% of HH-RLHF test prompts fit whole (p99 "
                        "560-590), and 99.9%% of completions fit the other half (p99 ~260). 0: no cut, and a pair "
                        "whose prompt then leaves no room for its completion is dropped (counted under 'dropped')")
    p.add_argument("--max-completion-length", type=int, default=None, help="keep each completion's first N tokens")
    p.add_argument("--chat-template", default=None,
                   help="'auto' renders every record as a chat with the tokenizer's template; or a Jinja template. "
                        "Default: text records as text, conversational records through the tokenizer's template")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per compiled batch. Default: %(default)s")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N layers (quick checks)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype. Default: %(default)s")
    p.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                   help="shard over a device mesh, e.g. '2,2,2'. Default: one device (all devices in a multi-process run)")
    p.add_argument("--topk", type=int, default=10,
                   help="k of the over-optimisation indicators topk/* (Shi et al. 2024: entropy over the top-k "
                        "next-token probabilities, and their mass, at completion tokens). Default: %(default)s")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_launch_args(p)
    p.set_defaults(func=cmd_eval_preference)

    p = ev_sub.add_parser(
        "reward", help="pairwise accuracy and mean margin of a reward model (or DPO's implicit reward)",
        description="Scores the chosen and the rejected completion of each preference pair with a reward model "
                    "(--model, a LlamaForSequenceClassification checkpoint such as objective.name=reward exports) "
                    "or any scorer (--scorer reward:DIR or dpo:POLICY,REF,BETA) and reports the share of pairs "
                    "scored chosen > rejected and the mean margin r(chosen) - r(rejected).",
    )
    p.add_argument("--model", default=None, help="a reward model checkpoint directory")
    p.add_argument("--scorer", default=None, metavar="SPEC", help="reward:DIR or dpo:POLICY,REF,BETA")
    p.add_argument("--data", default="builtin:prefs-mini", help="held-out preference pairs. Default: %(default)s")
    p.add_argument("--max-examples", type=int, default=None, help="score the first N pairs (default: all)")
    p.add_argument("--skip-examples", type=int, default=0, help="pass over the first N pairs. Default: 0")
    p.add_argument("--max-length", type=int, default=1024, help="prompt + completion tokens. Default: %(default)s")
    p.add_argument("--max-prompt-length", type=int, default=None, help="keep the prompt's last N tokens")
    p.add_argument("--max-completion-length", type=int, default=None, help="keep each completion's first N tokens")
    p.add_argument("--chat-template", default=None, help="as data.chat_template ('auto': every record as a chat)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per compiled batch. Default: %(default)s")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N layers (quick checks)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype. Default: %(default)s")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_launch_args(p)
    p.set_defaults(func=cmd_eval_reward)

    p = sub.add_parser(
        "merge", help="merge fine-tuned checkpoints of one base model into one checkpoint",
        description="Merge the task vectors (fine-tuned minus base) of --models, fine-tuned checkpoints of --base "
                    "(encoders or decoders; safetensors), and write base + merged vector to --output as a Hugging "
                    "Face checkpoint directory (the base's config and tokenizer files, model.safetensors in the "
                    "base's dtypes). Methods: average (task arithmetic), slerp (iterative pairwise SLERP), ties "
                    "(TIES-Merging) and self-positioning (SLERP weights and a norm scale found by gradient descent "
                    "on a probe set's InfoNCE loss, Li et al. 2024; encoders only).")
    p.add_argument("--base", required=True, help="the base checkpoint directory (or packaged model name)")
    p.add_argument("--models", nargs="+", required=True, help="fine-tuned checkpoint directories of --base")
    p.add_argument("--method", choices=MERGE_METHODS, required=True, help="how to merge the task vectors")
    p.add_argument("--output", required=True, help="the directory to write the merged checkpoint to")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="average / slerp: one weight per model (default: equal). average: sum w_i V_i / sum w_i; "
                        "slerp: the a_i of V_(1..k) = f(V_(1..k-1), V_k, mean(a_1..a_(k-1)), a_k)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="average / slerp / ties: multiply the merged task vector by this. Default: %(default)s")
    p.add_argument("--density", type=float, default=0.2,
                   help="ties: the fraction of each task vector's entries (per tensor, by magnitude) kept. "
                        "Default: %(default)s")
    p.add_argument("--convention", choices=("standard", "transcribed"), default="standard",
                   help="slerp / self-positioning: standard = a_i weights V_i (a_j = 0 gives V_i); transcribed = "
                        "the pair formula as a reading note of the paper writes it, a larger a_i moving the result "
                        "towards V_j. Default: %(default)s")
    g = p.add_argument_group("self-positioning search (objective: mean InfoNCE on the probe set + mu * lambda)")
    g.add_argument("--probe", default="builtin:nli-mini",
                   help="probe (anchor, positive, hard negative) triplets, as `train` reads data.kind=nli. "
                        "Default: %(default)s")
    g.add_argument("--max-examples", type=int, default=None, help="use the first N probe triplets (default: all)")
    g.add_argument("--batch-size", type=int, default=32, help="probe triplets per step. Default: %(default)s")
    g.add_argument("--max-length", type=int, default=64, help="tokens per probe sentence. Default: %(default)s")
    g.add_argument("--steps", type=int, default=200, help="Adam steps on (log a, lambda). Default: %(default)s")
    g.add_argument("--lr", type=float, default=0.05, help="Adam learning rate. Default: %(default)s")
    g.add_argument("--mu", type=float, default=0.01,
                   help="weight of the norm penalty mu * lambda (the paper: best below 0.05). Default: %(default)s")
    g.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature. Default: %(default)s")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "select", help="score SFT or preference data and write a selected subset (Deita, entropy, random)",
        description="Score every row of --data and write the chosen subset to --output as jsonl (each row as read, "
                    "with a 'selection' field of its scores and rank). deita (Liu et al. 2024): each turn's "
                    "complexity and quality from --scorer (the expected digit 1-6 after Deita's prompts), the row's "
                    "sum of complexity x quality, rows taken by descending score unless their embedding's cosine "
                    "similarity to one already taken exceeds --tau. entropy: the leave-one-out change of a 2-component "
                    "Gaussian mixture's entropy estimate (our reconstruction of Khera et al. 2024). random: a seeded "
                    "sample. Scores and embeddings are cached beside --output as they are computed, so a stopped "
                    "run resumes.")
    p.add_argument("--data", required=True, help="the rows: a file, directory, hf:NAME[:SPLIT] or builtin:prefs-mini")
    p.add_argument("--kind", choices=("preference", "sft"), default="preference",
                   help="how rows are read (as `train` reads data.kind); the chosen or sft completion is the response "
                        "scored. Default: %(default)s")
    p.add_argument("--output", required=True, help="the jsonl file of selected rows")
    p.add_argument("--method", default="deita", help="deita | entropy | random. Default: %(default)s")
    p.add_argument("--fraction", type=float, default=0.25, help="share of rows to keep, in (0, 1]. Default: %(default)s")
    p.add_argument("--scorer", default="SmolLM2-135M-Instruct",
                   help="deita: the decoder that scores (the released scorers are hkust-nlp/deita-complexity-scorer "
                        "and -quality-scorer; any decoder works). Default: %(default)s")
    p.add_argument("--embedder", default=None,
                   help="deita / entropy: the model that embeds each conversation, a decoder (last token's final "
                        "state) or an encoder (its pooling). Default: --scorer")
    p.add_argument("--tau", type=float, default=0.9, help="deita: cosine-similarity threshold in (0, 1). Default: %(default)s")
    p.add_argument("--prefer", default="typical",
                   help="entropy: keep the rows whose removal changes the entropy estimate least (typical: the densest) "
                        "or most (atypical). "
                        "Default: %(default)s")
    p.add_argument("--max-examples", type=int, default=None, help="read only the first N rows")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per compiled batch. Default: %(default)s")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per scoring prompt. Default: %(default)s")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype. Default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="random / entropy: the seed. Default: %(default)s")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "restore", help="restore the alignment a fine-tune lost, keeping the task score",
        description="Yang et al., IEEE S&P 2025: for --steps steps, copy back to --aligned's values the weights of "
                    "--finetuned (0.1-0.2%% of the decoder layers' parameters a step) whose gradient of "
                    "-cos(mean last-token state of the --harmful prompts at layer --layer-end, the aligned model's) "
                    "points toward the aligned value. With --task-data: if after --warmup-steps the task score falls "
                    "below (1 - --metric-drop) x the fine-tuned model's, restart with rollback (each step returns "
                    "--rollback-rate of its restored weights, chosen by the --benign prompts' direction); the "
                    "delivered model is the last checkpoint (every --save-every steps) above that line. Writes "
                    "--output/step_N, --output/restored and --output/restore.json (harmful-representation distance "
                    "and task score per checkpoint).")
    p.add_argument("--aligned", required=True, help="the aligned model (e.g. a chat model)")
    p.add_argument("--finetuned", required=True, help="a model fine-tuned from --aligned (same shapes)")
    p.add_argument("--harmful", default="builtin:harmful-mini",
                   help="prompts the aligned model refuses, one a line. Default: %(default)s")
    p.add_argument("--benign", default="builtin:benign-mini",
                   help="the fine-tune's task prompts, one a line. Default: %(default)s")
    p.add_argument("--task-data", default=None,
                   help="task (prompt, completion) data as data.kind=sft reads it; the task score is exp(mean "
                        "log-prob per completion token). Without it: no rollback, the last step delivered")
    p.add_argument("--task-examples", type=int, default=64, help="task rows scored. Default: %(default)s")
    p.add_argument("--output", required=True, help="directory for the checkpoints and the report")
    p.add_argument("--steps", type=int, default=20, help="Default: %(default)s")
    p.add_argument("--warmup-steps", type=int, default=5, help="Default: %(default)s")
    p.add_argument("--save-every", type=int, default=5, help="Default: %(default)s")
    p.add_argument("--recovery-rate", type=float, default=0.002,
                   help="share of the decoder layers' parameters restored per step. Default: %(default)s")
    p.add_argument("--rollback-rate", type=float, default=0.2, help="Default: %(default)s")
    p.add_argument("--metric-drop", type=float, default=0.05, help="tolerated relative task-score fall. Default: %(default)s")
    p.add_argument("--layer-end", type=int, default=None,
                   help="the layer whose output represents a prompt. Default: floor(4 L / 6)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per gradient batch. Default: %(default)s")
    p.add_argument("--max-length", type=int, default=256, help="tokens per prompt. Default: %(default)s")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype. Default: %(default)s")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "plot", help="draw runs' training curves, or benchmark results, as an image",
        description="Draw the metrics.jsonl of each RUN_DIR (a run's log.dir) in one figure: a panel per metric "
                    "group (loss, learning rate, gradient norm, STS; reward margins and accuracies for preference "
                    "runs, training solid and eval dashed), one colour per run. With --benchmark, the paths are "
                    "result files of one benchmark script (benchmarks/results/*.json), drawn as bar charts.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories (or their metrics.jsonl); "
                   "with --benchmark, benchmark JSON files")
    p.add_argument("--output", "-o", default="plot.png",
                   help="the image to write: PNG, or .svg / .pdf by its suffix. Default: %(default)s")
    p.add_argument("--metrics", nargs="+", metavar="KEY", default=None,
                   help="draw these metrics.jsonl keys instead (e.g. loss eval/sts logps/chosen); after the RUN_DIRs")
    p.add_argument("--label", action="append", default=None,
                   help="a legend label, once per path in order (same label, same bar group with --benchmark). "
                        "Default: each directory's or file's name")
    p.add_argument("--size", nargs=2, type=int, default=None, metavar=("WIDTH", "HEIGHT"),
                   help="image size in pixels. Default: 480x340 per panel (wider for bar charts)")
    p.add_argument("--benchmark", action="store_true", help="the paths are benchmark results: draw bar charts")
    p.set_defaults(func=cmd_plot)
    return parser


def _diverged(error: BaseException) -> bool:
    """Whether ``error`` is the trainer's NonFiniteError, whose message already says what to
    change. Looked up rather than imported: only a run that loaded the trainer can raise it, and
    the other commands need not import it."""
    trainer = sys.modules.get("jaxalign.training.trainer")
    return trainer is not None and isinstance(error, trainer.NonFiniteError)


def main(argv: list[str] | None = None) -> int:
    # Before building the parser (its help imports the configs, and so numpy), and only in a
    # fresh process: glibc fixes its arena limit when a second thread first allocates (numpy's
    # BLAS threads do at import), and a caller's process (a test, a notebook) keeps its own.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--host-memory", default="keep")
    keep = early.parse_known_args(sys.argv[1:] if argv is None else argv)[0].host_memory == "keep"
    if keep and "numpy" not in sys.modules:
        from jaxalign.host_memory import keep_freed_memory

        keep_freed_memory()
    args = build_parser().parse_args(argv)
    from jaxalign import distributed

    try:
        if hasattr(args, "coordinator"):  # commands without launch flags (plot) never join a run
            _join(args)
        distributed.configure_logging(logging.INFO if args.verbose else logging.WARNING)
        if args.compilation_cache is not None:
            from jaxalign import compile_cache

            compile_cache.enable(args.compilation_cache)
        return args.func(args)
    except (ValueError, FileNotFoundError, distributed.DistributedError) as e:
        # Our loaders raise ValueError subclasses (ConfigError, DataFormatError, CheckpointError,
        # ResumeError, ...) whose messages name the file, field and fix; a traceback adds nothing
        # for the user. Anything else (a KeyError, a TypeError) is a bug and keeps its traceback.
        if args.verbose:
            raise
        print(f"{distributed.process_prefix()}jaxalign: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if args.verbose or not _diverged(e):
            raise
        print(f"{distributed.process_prefix()}jaxalign: training stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
