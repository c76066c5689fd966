"""Group-whitening kernels on CPU: jaxalign's three methods against a float64 NumPy ZCA reference.

What: milliseconds per call of ``jaxalign.losses.whitening.group_whiten`` (forward: centre each
group over the batch, covariance, whitening matrix, apply) for ``method`` in ``zca``,
``cholesky`` and ``newton_schulz`` (IterNorm, ``--ns-iters`` steps), for every batch size in
``--batch-sizes`` and group count in ``--groups`` at embedding dim ``--dim``, next to the plain
reference: float64 NumPy, per group ``eigh`` of the shrunk covariance and
``U diag(S^-1/2) Uᵀ``, applied to the centred group. Each JAX function is jitted, called once to
compile, then timed ``--repeats`` times with ``block_until_ready``, round-robin with the
reference so that drift in machine load hits all of them alike; the median is reported.

Why: WhitenedCSE whitens every view of every batch inside the training step, so the kernel's cost
next to an encoder step decides which method and group count are affordable. The default grid is
WhitenedCSE's setting: BERT-base [CLS] (dim 768), batch 128 (and 512), groups 1 to 128.

Accuracy is reported with the timings: for ZCA the largest difference from the float64 reference
output (relative to its largest entry); for every method the whiteness error
``max |Wᵀ Σ̃ W - I|`` of its whitening matrix, computed in float64 from the float32 ``W``, which
shows how far Newton-Schulz with few iterations is from full whitening.

The data are synthetic anisotropic embeddings, like [CLS] states: Gaussian with a random rotation,
covariance eigenvalues spaced geometrically from 1 to 1e-3, mean 1. Shrinkage ``--eps`` (default
1e-3) applies to every method and the reference; it is needed where batch <= dim / groups (batch
128 with one group of 768), whose covariance is singular.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxalign.benchmarking import peak_memory  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See benchmarks/README.md (section 'Whitening kernels') for results on the project's machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512], help="batch sizes N (rows whitened together)")
    p.add_argument("--dim", type=int, default=768, help="embedding dim D")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 8, 32, 128], help="group counts G (each must divide --dim)")
    p.add_argument("--eps", type=float, default=1e-3, help="shrinkage (1 - eps) Σ + eps I, for every method and the reference")
    p.add_argument("--ns-iters", type=int, default=5, help="Newton-Schulz (IterNorm) iterations")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per implementation after one warm-up call; the median is reported")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads for NumPy and for JAX's CPU LAPACK calls (jaxlib runs eigh and cholesky "
                        "through SciPy's OpenBLAS); 0 leaves the libraries' default (one per core), which made "
                        "these small factorisations erratic and far slower on shared cores (see benchmarks/README.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic embeddings")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "whitening_kernels.json",
                   help="where to write the results as JSON")
    args = p.parse_args(argv)
    for name in ("dim", "ns_iters", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.blas_threads < 0:
        p.error(f"--blas-threads must be >= 0, got {args.blas_threads}")
    if any(n < 2 for n in args.batch_sizes):
        p.error(f"--batch-sizes must all be >= 2, got {args.batch_sizes}")
    bad = [g for g in args.groups if g < 1 or args.dim % g]
    if bad:
        p.error(f"--groups {bad} do not divide --dim {args.dim}")
    if not 0.0 <= args.eps <= 1.0:
        p.error(f"--eps must be in [0, 1], got {args.eps}")
    return args


def embeddings(n: int, dim: int, seed: int):
    """Synthetic anisotropic embeddings [n, dim], float32 (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = np.sqrt(np.geomspace(1.0, 1e-3, dim))
    return ((rng.standard_normal((n, dim)) * scale) @ q.T + 1.0).astype(np.float32)


def group_covariances(x, groups: int, eps: float):
    """Float64 shrunk covariances [G, d, d] and centred groups [G, N, d] of x [N, D]."""
    import numpy as np

    n, dim = x.shape
    xg = np.asarray(x, np.float64).reshape(n, groups, dim // groups).transpose(1, 0, 2)
    xc = xg - xg.mean(axis=1, keepdims=True)
    cov = xc.transpose(0, 2, 1) @ xc / n
    return (1.0 - eps) * cov + eps * np.eye(dim // groups), xc


def numpy_zca(x, groups: int, eps: float):
    """The reference: float64 NumPy ZCA per group, x [N, D] -> [N, D]."""
    import numpy as np

    cov, xc = group_covariances(x, groups, eps)
    s, u = np.linalg.eigh(cov)
    w = (u / np.sqrt(s)[:, None, :]) @ u.transpose(0, 2, 1)
    return (xc @ w).transpose(1, 0, 2).reshape(x.shape)


def timed_round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """One warm-up call each, then ``repeats`` timed rounds over all of them; seconds."""
    import jax

    def call(fn):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    out = {name: {"warmup_s": call(fn), "times_s": []} for name, fn in fns.items()}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name]["times_s"].append(call(fn))
    for result in out.values():
        result["median_s"] = statistics.median(result["times_s"])
    return out


def machine_info() -> dict:
    import jax
    import numpy as np
    import threadpoolctl

    cpuinfo = Path("/proc/cpuinfo")
    cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if cpuinfo.is_file() else platform.processor()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average_1_5_15": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        "blas": [{k: pool[k] for k in ("filepath", "version", "num_threads")} for pool in threadpoolctl.threadpool_info()],
    }


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict]:
    """Timings and accuracy for every (batch, groups) of the grid."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.losses.whitening import WHITENING_METHODS, group_whiten, whitening_matrix

    rows = []
    for n in args.batch_sizes:
        x = embeddings(n, args.dim, args.seed)
        x_dev = jnp.asarray(x)
        for groups in args.groups:
            d = args.dim // groups
            if n <= d and args.eps == 0:
                log(f"skipping N={n}, G={groups}: the covariance of d={d} channels is singular and --eps is 0")
                continue
            log(f"N={n}, G={groups} (d={d}) ...")
            options = dict(groups=groups, eps=args.eps, ns_iters=args.ns_iters)
            kernels = {m: functools.partial(jax.jit(functools.partial(group_whiten, method=m, **options)), x_dev)
                       for m in WHITENING_METHODS}
            timings = timed_round_robin({"numpy_f64_zca": functools.partial(numpy_zca, x, groups, args.eps), **kernels},
                                        args.repeats)
            ref = numpy_zca(x, groups, args.eps)
            zca_diff = float(np.abs(np.asarray(kernels["zca"](), np.float64) - ref).max() / np.abs(ref).max())
            cov, _ = group_covariances(x, groups, args.eps)
            whiteness = {}
            for m in WHITENING_METHODS:
                # W of the (already shrunk) covariance rounded to float32, checked in float64
                w = jax.jit(functools.partial(whitening_matrix, method=m, ns_iters=args.ns_iters))(jnp.asarray(cov, jnp.float32))
                w = np.asarray(w, np.float64)
                whiteness[m] = float(np.abs(w.transpose(0, 2, 1) @ cov @ w - np.eye(d)).max())
            rows.append({"batch": n, "groups": groups, "d": d, "timings": timings,
                         "zca_max_rel_diff_vs_numpy": zca_diff, "whiteness_error": whiteness})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    import jax.numpy as jnp
    import threadpoolctl
    from rich.console import Console
    from rich.table import Table

    from jaxalign.losses.whitening import WHITENING_METHODS

    console = Console() if sys.stdout.isatty() else Console(width=160)
    jnp.linalg.eigh(jnp.eye(2)).eigenvalues.block_until_ready()  # loads the OpenBLAS behind jaxlib's LAPACK
    with threadpoolctl.threadpool_limits(args.blas_threads or None):
        info = machine_info()
        rows = measure(args, console.print)

    short = {"zca": "ZCA", "cholesky": "Cholesky", "newton_schulz": f"Newton-Schulz ({args.ns_iters})"}
    timing = Table(title=f"group_whiten forward, ms per call (median of {args.repeats}), D={args.dim}, eps={args.eps}; "
                         f"CPU, {info['cpu_count']} cores")
    accuracy = Table(title="accuracy: ZCA vs float64 reference (max rel. diff); whiteness max |Wᵀ Σ̃ W - I|")
    for table in (timing, accuracy):
        for col in ("N", "G", "d"):
            table.add_column(col, justify="right")
    timing.add_column("NumPy f64 ZCA", justify="right")
    for m in WHITENING_METHODS:
        timing.add_column(f"{short[m]} (× NumPy)", justify="right")
    accuracy.add_column("ZCA vs NumPy", justify="right")
    for m in WHITENING_METHODS:
        accuracy.add_column(f"{short[m]} whiteness", justify="right")
    for row in rows:
        shape = (str(row["batch"]), str(row["groups"]), str(row["d"]))
        t = {name: r["median_s"] * 1e3 for name, r in row["timings"].items()}
        timing.add_row(*shape, f"{t['numpy_f64_zca']:.2f}",
                       *(f"{t[m]:.2f} ({t['numpy_f64_zca'] / t[m]:.1f}×)" for m in WHITENING_METHODS))
        accuracy.add_row(*shape, f"{row['zca_max_rel_diff_vs_numpy']:.1e}",
                         *(f"{row['whiteness_error'][m]:.1e}" for m in WHITENING_METHODS))
    console.print(timing)
    console.print(accuracy)
    info["load_average_after"] = os.getloadavg()
    results = {
        "benchmark": "whitening_kernels",
        "machine": info,
        "dim": args.dim,
        "eps": args.eps,
        "ns_iters": args.ns_iters,
        "repeats": args.repeats,
        "blas_threads": args.blas_threads or "library default",
        "seed": args.seed,
        "data": "Gaussian, random rotation, covariance eigenvalues geomspace(1, 1e-3), mean 1, float32",
        "rows": rows,
        "memory": peak_memory(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"load average before / after: {info['load_average_1_5_15'][0]:.2f} / {info['load_average_after'][0]:.2f}; "
                  f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
