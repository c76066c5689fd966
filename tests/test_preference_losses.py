"""Preference losses against float64 NumPy references written from the papers' formulas (and TRL's code).

Every reference here is written out again from the table (never through the module's helpers)
and compared in float64 (``jax_enable_x64`` on, via the ``x64`` fixture, which restores the flag:
the rest of the suite runs in float32), then once per loss in float32 under ``jax.jit``.
"""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses as P
from jaxalign.losses import (
    DPO_LOSS_TYPES,
    LOSSES,
    adpa_loss,
    asft_loss,
    cpo_loss,
    d2o_loss,
    dckd_loss,
    forward_kl_terms,
    ld_logps,
    wpo_weights,
    dpo_loss,
    f_divergence_score,
    kto_loss,
    log1mexp,
    orpo_loss,
    poft_loss,
    preference_metrics,
    simpo_loss,
    validate_loss_options,
)

LN2 = math.log(2.0)
B = 8
BETAS = (0.1, 0.5, 2.0)
F_DIVS = (("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5),
          ("alpha_divergence", 2.0))
F_DIV_LOSSES = {"sigmoid", "robust", "hinge", "ipo", "exo_pair", "discopop", "sigmoid_norm"}
SMOOTHING = {"sigmoid": (0.0, 0.1, 0.3), "robust": (0.0, 0.1, 0.3), "exo_pair": (1e-3, 0.1, 0.3),
             "aot": (0.0, 0.2), "aot_unpaired": (0.0, 0.2)}


@pytest.fixture
def x64():
    """float64 in JAX for one test; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# ---------------------------------------------------------------- NumPy references (float64)


def np_logsig(x):
    return -np.logaddexp(0.0, -x)


def np_sig(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def np_score(h, f_div, alpha):
    if f_div == "reverse_kl":
        return h
    if f_div == "forward_kl":
        return 1.0 - np.exp(-h)
    if f_div == "js_divergence":
        return np.log(2.0) + np_logsig(h)
    if abs(alpha - 1.0) < 1e-6:
        return h
    return (np.exp((alpha - 1.0) * h) - 1.0) / (alpha - 1.0)


def np_dpo(name, d, beta, eps=0.0, f_div="reverse_kl", alpha=0.5, tau=0.05, bco_delta=0.0):
    """The DPO family's table (jaxalign.losses.dpo.dpo_loss), one row per branch."""
    cw, cl, rw, rl = d["pc"], d["pr"], d["rc"], d["rr"]
    yw, yl = np.maximum(d["lw"], 1.0), np.maximum(d["ll"], 1.0)
    hw, hl = cw - rw, cl - rl
    sw, sl = np_score(hw, f_div, alpha), np_score(hl, f_div, alpha)
    D = sw - sl
    if name == "sigmoid":
        return -(1 - eps) * np_logsig(beta * D) - eps * np_logsig(-beta * D)
    if name == "robust":
        return (-(1 - eps) * np_logsig(beta * D) + eps * np_logsig(-beta * D)) / (1 - 2 * eps)
    if name == "hinge":
        return np.maximum(0.0, 1 - beta * D)
    if name == "ipo":
        return (sw / yw - sl / yl - 1 / (2 * beta)) ** 2
    if name == "exo_pair":
        return (np_sig(beta * D) * (np_logsig(beta * D) - np.log(1 - eps))
                + np_sig(-beta * D) * (np_logsig(-beta * D) - np.log(eps)))
    if name == "nca_pair":
        return -np_logsig(beta * hw) - 0.5 * np_logsig(-beta * hw) - 0.5 * np_logsig(-beta * hl)
    if name == "bco_pair":
        return -np_logsig(beta * hw - bco_delta) - np_logsig(-(beta * hl - bco_delta))
    if name == "sppo_hard":
        return (hw - 1 / (2 * beta)) ** 2 + (hl + 1 / (2 * beta)) ** 2
    if name in ("aot", "aot_unpaired"):
        if name == "aot":
            delta = np.sort(cw - cl) - np.sort(rw - rl)
        else:
            delta = np.sort(hw) - np.sort(hl)
        return -(1 - eps) * np_logsig(beta * delta) - eps * np_logsig(-beta * delta)
    if name == "apo_zero":
        return (1 - np_sig(beta * hw)) + np_sig(beta * hl)
    if name == "apo_down":
        return np_sig(beta * hw) + (1 - np_sig(beta * (hw - hl)))
    if name == "discopop":
        z = beta * D
        m = np_sig(z / tau)
        with np.errstate(over="ignore", invalid="ignore"):
            mixed = m * np.exp(-z)
        # z -> -inf: m ~ exp(z/τ) wins over exp(-z) (τ < 1), the limit is 0, not 0·inf
        return (1 - m) * (-np_logsig(z)) + np.where(m == 0, 0.0, mixed)
    if name == "sft":
        tokens = d["chosen_tokens"][d["chosen_mask"] > 0]
        return np.full(len(cw), -tokens.mean())
    if name == "sigmoid_norm":
        return -np_logsig(beta * (sw / yw - sl / yl))
    raise AssertionError(name)


def make_batch(seed, b=B, t=24):
    """Summed log-probs from per-token ones (so ``sft``'s token mean has its own reference)."""
    rng = np.random.default_rng(seed)
    lw = rng.integers(1, t + 1, b)
    ll = rng.integers(1, t + 1, b)
    lw[0] = 0  # an empty completion: lengths clamp at 1
    mask_w = (np.arange(t)[None, :] < lw[:, None]).astype(np.float64)
    tokens_w = -rng.gamma(1.0, 1.0, (b, t))
    pc = (tokens_w * mask_w).sum(-1)
    pr = -rng.gamma(1.0, 1.0, (b, t)).sum(-1) * ll / t
    rc = pc + rng.normal(0.0, 4.0, b)
    rr = pr + rng.normal(0.0, 4.0, b)
    return dict(pc=pc, pr=pr, rc=rc, rr=rr, lw=lw, ll=ll, chosen_tokens=tokens_w, chosen_mask=mask_w)


def call_dpo(d, name, dtype=np.float64, **kwargs):
    cast = lambda x: np.asarray(x, dtype)  # noqa: E731
    return dpo_loss(cast(d["pc"]), cast(d["pr"]), cast(d["rc"]), cast(d["rr"]), loss_type=name,
                    chosen_lengths=d["lw"], rejected_lengths=d["ll"], **kwargs)


def option_grid(name):
    """(jax kwargs, reference kwargs) pairs covering β, ε, f-divergences and the loss's own options."""
    for beta in BETAS:
        for eps in SMOOTHING.get(name, (0.0,)):
            kw = dict(beta=beta, label_smoothing=eps)
            ref = dict(beta=beta, eps=eps)
            if name in F_DIV_LOSSES:
                for f_div, alpha in F_DIVS:
                    opts = {"f_divergence_type": f_div}
                    if f_div == "alpha_divergence":
                        opts["f_alpha_divergence_coef"] = alpha
                    yield {**kw, **opts}, {**ref, "f_div": f_div, "alpha": alpha}
            elif name == "bco_pair":
                for delta in (0.0, 0.3):
                    yield {**kw, "bco_delta": delta}, {**ref, "bco_delta": delta}
            else:
                yield kw, ref
            if name == "discopop":
                yield {**kw, "discopop_tau": 0.5}, {**ref, "tau": 0.5}


# ---------------------------------------------------------------- DPO family, float64


@pytest.mark.parametrize("name", DPO_LOSS_TYPES)
def test_dpo_family_matches_reference_float64(x64, name):
    for seed in (0, 1):
        d = make_batch(seed)
        for kw, ref in option_grid(name):
            got = call_dpo(d, name, **kw)
            assert got.dtype == jnp.float64 and got.shape == (B,)
            np.testing.assert_allclose(np.asarray(got), np_dpo(name, d, **ref), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name} {kw}")


@pytest.mark.parametrize("name", DPO_LOSS_TYPES)
def test_dpo_family_float32_under_jit(name):
    d = make_batch(7)
    eps = {"exo_pair": 0.1, "robust": 0.2, "sigmoid": 0.2, "aot": 0.2, "aot_unpaired": 0.2}.get(name, 0.0)
    opts = {"f_divergence_type": "js_divergence"} if name in F_DIV_LOSSES else {}
    fn = jax.jit(functools.partial(dpo_loss, loss_type=name, beta=0.5, label_smoothing=eps, **opts))
    f32 = {k: np.asarray(v, np.float32) for k, v in d.items()}
    got = fn(f32["pc"], f32["pr"], f32["rc"], f32["rr"], chosen_lengths=d["lw"], rejected_lengths=d["ll"])
    assert got.dtype == jnp.float32
    ref = np_dpo(name, {k: v.astype(np.float64) for k, v in f32.items()}, 0.5, eps=eps,
                 f_div=opts.get("f_divergence_type", "reverse_kl"))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-5)


def tunix_batch():
    np.random.seed(0)
    policy = np.random.normal(0, 5, size=(8, 4)).sum(-1)
    reference = np.random.normal(0, 5, size=(8, 4)).sum(-1)
    return policy[:4], policy[4:], reference[:4], reference[4:]


def test_tunix_golden_values_float64(x64):
    batch = tunix_batch()
    assert float(jnp.mean(dpo_loss(*batch, beta=0.1))) == pytest.approx(0.753059, abs=1e-6)
    assert float(jnp.mean(dpo_loss(*batch, beta=0.1, label_smoothing=0.3))) == pytest.approx(0.9254465, abs=1e-7)


def test_tunix_golden_values_float32_jit():
    batch = [np.asarray(x, np.float32) for x in tunix_batch()]
    for eps, want in ((0.0, 0.753059), (0.3, 0.925447)):
        fn = jax.jit(lambda *a, eps=eps: jnp.mean(dpo_loss(*a, beta=0.1, label_smoothing=eps)))
        assert float(fn(*batch)) == pytest.approx(want, abs=1e-5)


def identity_value(name, beta, eps):
    """Each loss at policy == reference (h = 0, every f-divergence score 0), from the table."""
    if name == "exo_pair":
        return -LN2 - 0.5 * math.log(eps * (1 - eps))  # σ(0) = ½ on both terms
    return {
        "sigmoid": LN2, "robust": LN2, "sigmoid_norm": LN2, "aot": LN2, "aot_unpaired": LN2,
        "hinge": 1.0, "apo_zero": 1.0, "apo_down": 1.0,
        "ipo": 1 / (4 * beta**2), "sppo_hard": 1 / (2 * beta**2),
        "nca_pair": 2 * LN2, "bco_pair": 2 * LN2,
        "discopop": (1 + LN2) / 2,
    }[name]


@pytest.mark.parametrize("name", [n for n in DPO_LOSS_TYPES if n != "sft"])
def test_first_step_identities(x64, name):
    """At the first step (policy == reference) DPO is ln 2 whatever β, ε or f-divergence."""
    d = make_batch(3)
    d["rc"], d["rr"] = d["pc"], d["pr"]
    for beta in BETAS:
        eps = SMOOTHING.get(name, (0.0, 0.25))[-1] if name != "exo_pair" else 0.1
        f_divs = F_DIVS if name in F_DIV_LOSSES else (("reverse_kl", 0.5),)
        for f_div, alpha in f_divs:
            opts = {"f_divergence_type": f_div} if name in F_DIV_LOSSES else {}
            if f_div == "alpha_divergence":
                opts["f_alpha_divergence_coef"] = alpha
            ls = eps if name in SMOOTHING else 0.0
            got = call_dpo(d, name, beta=beta, label_smoothing=ls, **opts)
            np.testing.assert_allclose(np.asarray(got), identity_value(name, beta, ls), rtol=1e-12,
                                       err_msg=f"{name} β={beta} {opts}")


def test_weighted_combination_is_weighted_sum(x64):
    d = make_batch(4)
    types, weights = ["sigmoid", "sft", "bco_pair"], [0.8, 0.2, 1.0]  # MPO's example weights
    combined = call_dpo(d, types, beta=0.3, loss_weights=weights)
    parts = [call_dpo(d, t, beta=0.3) for t in types]
    np.testing.assert_allclose(np.asarray(combined), sum(w * np.asarray(p) for w, p in zip(weights, parts)),
                               rtol=1e-13)
    unweighted = call_dpo(d, ("ipo", "hinge"), beta=0.3)
    np.testing.assert_allclose(np.asarray(unweighted),
                               np.asarray(call_dpo(d, "ipo", beta=0.3) + call_dpo(d, "hinge", beta=0.3)), rtol=1e-13)
    # label smoothing and the f-divergence reach every listed loss that takes them
    mixed = call_dpo(d, ["robust", "discopop"], beta=0.3, label_smoothing=0.2, loss_weights=[0.5, 2.0],
                     f_divergence_type="forward_kl")
    want = 0.5 * np_dpo("robust", d, 0.3, 0.2, "forward_kl") + 2.0 * np_dpo("discopop", d, 0.3, 0.2, "forward_kl")
    np.testing.assert_allclose(np.asarray(mixed), want, rtol=1e-12)


def test_sft_needs_no_reference(x64):
    d = make_batch(5)
    got = dpo_loss(d["pc"], d["pr"], None, None, loss_type="sft", chosen_lengths=d["lw"])
    np.testing.assert_allclose(np.asarray(got), np_dpo("sft", d, 0.1), rtol=1e-13)


def test_f_divergence_scores(x64):
    combos = F_DIVS + (("alpha_divergence", 1.0), ("alpha_divergence", 1.0 + 1e-8), ("alpha_divergence", -0.5))
    # named values first: forward KL 1 - 1/t, JS log(2t/(t+1)), α-divergence (t^(α-1) - 1)/(α-1)
    t = np.array([0.25, 1.0, 3.0])
    h = np.concatenate([np.log(t), np.linspace(-30.0, 30.0, 61)])
    scores = jax.jit(lambda x: [f_divergence_score(x, f, a) for f, a in combos])(h)  # one compile
    for (f_div, alpha), got in zip(combos, scores):
        np.testing.assert_allclose(np.asarray(got), np_score(h, f_div, alpha), rtol=1e-12, atol=1e-12,
                                   err_msg=f"{f_div} {alpha}")
    by_name = dict(zip(combos, scores))
    np.testing.assert_allclose(by_name["forward_kl", 0.5][:3], 1 - 1 / t, rtol=1e-14)
    np.testing.assert_allclose(by_name["js_divergence", 0.5][:3], np.log(2 * t / (t + 1)), atol=1e-15)
    np.testing.assert_allclose(by_name["alpha_divergence", 0.5][:3], (t**-0.5 - 1) / -0.5, rtol=1e-14)


def test_alpha_divergence_exponent_is_clamped_in_float32():
    h = jnp.asarray([-500.0, 0.0, 500.0], jnp.float32)
    for alpha in (0.5, 3.0):
        s = f_divergence_score(h, "alpha_divergence", alpha)
        assert bool(jnp.all(jnp.isfinite(s)))
        extreme = s[0] if alpha < 1 else s[2]  # where (α-1)h = 250 would overflow
        np.testing.assert_allclose(float(extreme), math.expm1(80.0) / (alpha - 1), rtol=1e-5)


def test_sigmoid_gradient(x64):
    d = make_batch(6)
    beta = 0.4
    grads = jax.jit(jax.grad(lambda pc, pr: jnp.mean(dpo_loss(pc, pr, d["rc"], d["rr"], beta=beta)), argnums=(0, 1)))(
        jnp.asarray(d["pc"]), jnp.asarray(d["pr"]))
    margin = beta * ((d["pc"] - d["rc"]) - (d["pr"] - d["rr"]))
    want = -beta * np_sig(-margin) / B  # d/dc_w of -log σ(βΔ), batch mean
    np.testing.assert_allclose(np.asarray(grads[0]), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grads[1]), -want, rtol=1e-12)
    # the reference is a constant (TRL runs it under no_grad)
    ref_grads = jax.jit(jax.grad(lambda rc, rr: jnp.mean(dpo_loss(d["pc"], d["pr"], rc, rr, beta=beta)),
                                 argnums=(0, 1)))(d["rc"], d["rr"])
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in ref_grads)


def test_aot_is_invariant_to_the_order_of_pairs(x64):
    d = make_batch(8)
    perm = np.random.default_rng(0).permutation(B)
    shuffled = {k: v[perm] for k, v in d.items()}
    for name in ("aot", "aot_unpaired"):
        np.testing.assert_allclose(np.asarray(call_dpo(shuffled, name, label_smoothing=0.1)),
                                   np.asarray(call_dpo(d, name, label_smoothing=0.1)), rtol=1e-14)


def test_discopop_is_finite_for_very_negative_margins():
    """TRL's m·exp(-z) is 0·inf = NaN here; the loss tends to -log σ(z) ≈ -z."""
    pc = jnp.asarray([-1000.0, -10.0], jnp.float32)
    zero = jnp.zeros(2, jnp.float32)
    def losses_fn(p):
        return dpo_loss(p, zero, zero, zero, loss_type="discopop")

    losses, grad = jax.jit(lambda p: (losses_fn(p), jax.grad(lambda q: jnp.sum(losses_fn(q)))(p)))(pc)
    assert bool(jnp.all(jnp.isfinite(losses))) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(float(losses[0]), 100.0, rtol=1e-6)


def test_bco_delta_may_be_traced_and_gets_no_gradient(x64):
    d = make_batch(9)
    fn = jax.jit(lambda pc, delta: jnp.mean(dpo_loss(pc, d["pr"], d["rc"], d["rr"], loss_type="bco_pair",
                                                       beta=0.2, bco_delta=delta)))
    value = fn(jnp.asarray(d["pc"]), jnp.asarray(0.7))
    assert float(value) == pytest.approx(np_dpo("bco_pair", d, 0.2, bco_delta=0.7).mean(), rel=1e-12)
    assert float(jax.grad(fn, argnums=1)(jnp.asarray(d["pc"]), jnp.asarray(0.7))) == 0.0


def test_batch_reductions_span_a_sharded_batch():
    """aot's sort and sft's token mean see the global batch when the batch is split over devices."""
    devices = jax.devices()
    if B % len(devices):
        pytest.skip(f"{len(devices)} devices do not divide the batch of {B}")
    d = {k: np.asarray(v, np.float32) for k, v in make_batch(13).items()}
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("data",)),
                                          jax.sharding.PartitionSpec("data"))
    args = [jax.device_put(d[k], sharding) for k in ("pc", "pr", "rc", "rr", "lw")]
    fn = jax.jit(lambda pc, pr, rc, rr, lw: dpo_loss(pc, pr, rc, rr, loss_type=("aot", "sft"), chosen_lengths=lw,
                                                     label_smoothing=0.1))
    want = np_dpo("aot", d, 0.1, eps=0.1) + np_dpo("sft", d, 0.1)
    np.testing.assert_allclose(np.asarray(fn(*args)), want, rtol=2e-5)


def test_dtypes(x64):
    d = make_batch(10)
    ints = [np.round(d[k]).astype(np.int64) for k in ("pc", "pr", "rc", "rr")]
    assert dpo_loss(*ints).dtype == jnp.float64  # NumPy ints promote to float
    bf16 = [jnp.asarray(d[k], jnp.bfloat16) for k in ("pc", "pr", "rc", "rr")]
    assert dpo_loss(*bf16).dtype == jnp.float32
    assert dpo_loss(*[np.asarray(d[k], np.float32) for k in ("pc", "pr", "rc", "rr")]).dtype == jnp.float32


def test_traced_beta_and_label_smoothing():
    d = make_batch(11)
    fn = jax.jit(lambda b, e: dpo_loss(d["pc"], d["pr"], d["rc"], d["rr"], beta=b, label_smoothing=e))
    np.testing.assert_allclose(np.asarray(fn(0.3, 0.1)), np_dpo("sigmoid", d, 0.3, 0.1), rtol=2e-5, atol=1e-6)


def test_preference_metrics(x64):
    d = make_batch(12)
    d["rc"][1] = d["pc"][1] - (d["pr"][1] - d["rr"][1])  # one tie: counts as not accurate
    m = preference_metrics(d["pc"], d["pr"], d["rc"], d["rr"], 0.25)
    rw, rl = 0.25 * (d["pc"] - d["rc"]), 0.25 * (d["pr"] - d["rr"])
    want = {"rewards/chosen": rw.mean(), "rewards/rejected": rl.mean(), "rewards/accuracies": (rw > rl).mean(),
            "rewards/margins": (rw - rl).mean(), "logps/chosen": d["pc"].mean(), "logps/rejected": d["pr"].mean()}
    assert set(m) == set(want)
    for key, value in want.items():
        assert m[key].shape == () and float(m[key]) == pytest.approx(value, rel=1e-12, abs=1e-15), key


# ---------------------------------------------------------------- other families
#
# Each family: inputs from a seed, a NumPy float64 reference from the paper's formula (loops
# where the formula is a sum), and a grid of options. Float64 eagerly, then float32 under jit.


def log_softmax_np(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def paired_inputs(seed, b=B):
    """Summed log-probs whose per-token means lie in (-3, 0), one within 1e-3 of 0."""
    rng = np.random.default_rng(seed)
    lw, ll = rng.integers(1, 40, b), rng.integers(1, 40, b)
    mw, ml = -rng.uniform(0.05, 3.0, b), -rng.uniform(0.05, 3.0, b)
    mw[0] = -1e-3
    return dict(pc=mw * lw, pr=ml * ll, lw=lw, ll=ll)


def np_simpo(d, beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, cpo_alpha=0.0):
    z = beta * (d["pc"] / d["lw"] - d["pr"] / d["ll"]) - simpo_gamma
    nll = -d["pc"].sum() / d["lw"].sum()
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll


def np_cpo(d, beta=0.1, cpo_alpha=1.0, label_smoothing=0.0):
    z = beta * (d["pc"] - d["pr"])
    nll = -d["pc"].sum() / d["lw"].sum()
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll


def np_orpo(d, beta=0.1):
    mw, ml = d["pc"] / d["lw"], d["pr"] / d["ll"]
    log_odds = (mw - ml) - (np.log(1 - np.exp(mw)) - np.log(1 - np.exp(ml)))
    return -d["pc"].sum() / d["lw"].sum() - beta * np_logsig(log_odds)


def np_asft(d, beta=0.1):
    pw, pl = np.exp(d["pc"] / d["lw"]), np.exp(d["pr"] / d["ll"])  # p̄ = exp(mean_t log π)
    odds_w, odds_l = np.log(pw) - np.log(1 - pw), np.log(pl) - np.log(1 - pl)
    return -np.log(pw) - beta * (np_logsig(odds_w) + np_logsig(-odds_l))


def kto_inputs(seed, shift=2.0):
    rng = np.random.default_rng(seed)
    p = -rng.uniform(5, 50, B)
    pk = -rng.uniform(5, 50, B)
    # shift < 0 makes the batch KL estimate negative, so it is clamped to 0
    return dict(p=p, r=p + rng.normal(0, 3, B), labels=np.arange(B) % 3 == 0, pk=pk,
                rk=pk - shift + rng.normal(0, 0.5, B))


def np_kto(d, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    z = max(0.0, np.mean(d["pk"] - d["rk"]))
    h = d["p"] - d["r"]
    return np.where(d["labels"], desirable_weight * (1 - np_sig(beta * (h - z))),
                    undesirable_weight * (1 - np_sig(beta * (z - h))))


def poft_inputs(seed, m=3):
    rng = np.random.default_rng(seed)
    return dict(p=-rng.uniform(5, 60, B), lengths=rng.integers(1, 30, B), scores=-rng.uniform(0.2, 2.5, (B, m)))


def np_poft(d, beta=1.0):
    r_theta = d["p"] / d["lengths"]
    m = d["scores"].shape[1]
    return -np_logsig(beta * sum(r_theta - d["scores"][:, j] for j in range(m)) / m)


def d2o_inputs(seed, k=11):
    rng = np.random.default_rng(seed)
    ps, pl = -rng.uniform(5, 60, (B, k)), -rng.uniform(5, 60, B)
    return dict(ps=ps, rs=ps + rng.normal(0, 3, (B, k)), pl=pl, rl=pl + rng.normal(0, 3, B))


def np_d2o(d, beta=0.1, alpha=0.1):
    k = d["ps"].shape[1]
    samples = sum(d["ps"][:, i] - d["rs"][:, i] for i in range(k))
    return -np_logsig((beta / k) * samples - alpha * (d["pl"] - d["rl"]))


def dckd_inputs(seed, b=3, t=5, v=11, k=4):
    """Student and teacher log-softmax, both gathered at the teacher's top-k ids."""
    rng = np.random.default_rng(seed)
    d = {}
    for side in ("w", "l"):
        student = log_softmax_np(rng.normal(size=(b, t, v)))
        teacher = np.exp(log_softmax_np(2 * rng.normal(size=(b, t, v))))
        top = np.argsort(-teacher, axis=-1)[..., :k]
        d["s" + side] = np.take_along_axis(student, top, -1)
        d["t" + side] = np.log(np.take_along_axis(teacher, top, -1))
        d["m" + side] = (rng.uniform(size=(b, t)) < 0.7).astype(np.float64)
    d["tok"] = log_softmax_np(rng.normal(size=(b, t, v)))[..., 0]
    return d


def np_token_mean(values, mask):
    b, t = mask.shape
    return sum(values[i, j] for i in range(b) for j in range(t) if mask[i, j]) / mask.sum()


def np_dckd(d, sft_weight=1.0, distill_weight=1.0, chosen_weight=1.0, rejected_weight=1.0, renormalize=False):
    """The batch loss (a scalar): token means of NLL and of KL(p_T ‖ p_θ) over top-k."""
    kls = []
    for side in ("w", "l"):
        s, p, mask = d["s" + side], np.exp(d["t" + side]), d["m" + side]
        if renormalize:
            p = p / p.sum(-1, keepdims=True)
            s = s - np.log(np.exp(s).sum(-1, keepdims=True))
        b, t, k = p.shape
        kl = np.array([[sum(p[i, j, c] * (math.log(p[i, j, c]) - s[i, j, c]) for c in range(k))
                        for j in range(t)] for i in range(b)])
        kls.append(np_token_mean(kl, mask))
    nll = np_token_mean(-d["tok"], d["mw"])
    return sft_weight * nll + distill_weight * (chosen_weight * kls[0] + rejected_weight * kls[1])


def adpa_inputs(seed, b=3, t=6, v=9):
    rng = np.random.default_rng(seed)
    return dict(logps=log_softmax_np(rng.normal(size=(b, t, v))),
                adv=log_softmax_np(rng.normal(size=(b, t, v))) - log_softmax_np(rng.normal(size=(b, t, v))),
                mask=(rng.uniform(size=(b, t)) < 0.6).astype(np.float64))


def np_adpa_per_example(d):
    """Example i's share -B Σ_t Σ_v π A / N_tok; their mean is -(1/N_tok) Σ_t Σ_v π A."""
    logps, adv, mask = d["logps"], d["adv"], d["mask"]
    b, t, v = logps.shape
    return np.array([-b * sum(math.exp(logps[i, j, c]) * adv[i, j, c] for j in range(t) for c in range(v)
                              if mask[i, j]) / mask.sum() for i in range(b)])


# name: (function, inputs(seed), positional argument keys, reference, option grid, float64 tolerance)
FAMILIES = {
    "simpo": (simpo_loss, paired_inputs, ("pc", "pr", "lw", "ll"), np_simpo,
              [{}, dict(beta=2.5, simpo_gamma=1.0, label_smoothing=0.1),
               dict(beta=1.0, simpo_gamma=0.3, cpo_alpha=0.5)], 1e-12),
    "cpo": (cpo_loss, paired_inputs, ("pc", "pr", "lw"), np_cpo,
            [{}, dict(beta=0.5, cpo_alpha=0.0, label_smoothing=0.2),
             dict(beta=1.0, cpo_alpha=2.0, label_smoothing=0.1)], 1e-12),
    "orpo": (orpo_loss, paired_inputs, ("pc", "pr", "lw", "ll"), np_orpo, [{}, dict(beta=0.5)], 1e-11),
    "asft": (asft_loss, paired_inputs, ("pc", "pr", "lw", "ll"), np_asft, [{}, dict(beta=1.0)], 1e-9),
    "kto": (kto_loss, kto_inputs, ("p", "r", "labels", "pk", "rk"), np_kto,
            [{}, dict(beta=0.5, desirable_weight=1.33, undesirable_weight=0.7)], 1e-12),
    "poft": (poft_loss, poft_inputs, ("p", "lengths", "scores"), np_poft, [{}, dict(beta=2.0)], 1e-12),
    "d2o": (d2o_loss, d2o_inputs, ("ps", "rs", "pl", "rl"), np_d2o, [{}, dict(beta=0.5, alpha=0.3)], 1e-12),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_other_family_matches_reference_float64(x64, name):
    fn, make, keys, reference, grid, rtol = FAMILIES[name]
    for seed in (0, 1):
        d = make(seed)
        for opts in grid:
            got = fn(*(d[k] for k in keys), **opts)
            assert got.dtype == jnp.float64 and got.shape == (B,)
            np.testing.assert_allclose(np.asarray(got), reference(d, **opts), rtol=rtol, err_msg=f"{name} {opts}")


@pytest.mark.parametrize("name", [*FAMILIES, "dckd", "adpa"])
def test_other_family_float32_under_jit(name):
    if name == "dckd":
        d = dckd_inputs(2)
        keys, want = ("sw", "tw", "mw", "sl", "tl", "ml", "tok"), np_dckd(d)
        fn = jax.jit(lambda *a: jnp.mean(dckd_loss(*a)))
    elif name == "adpa":
        d = adpa_inputs(2)
        keys, want = ("logps", "adv", "mask"), np_adpa_per_example(d)
        fn = jax.jit(adpa_loss)
    else:
        loss, make, keys, reference, _, _ = FAMILIES[name]
        d = make(2)
        want = reference(d)
        fn = jax.jit(loss)
    args = [d[k].astype(np.float32) if d[k].dtype == np.float64 else d[k] for k in keys]
    got = fn(*args)
    assert got.dtype == jnp.float32
    # the reference sees the same float32-rounded inputs
    if name not in ("dckd", "adpa"):
        want = FAMILIES[name][3]({**d, **{k: np.asarray(a, np.float64) for k, a in zip(keys, args)}})
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)


def test_kto_details(x64):
    d = kto_inputs(3, shift=-2.0)
    assert np.mean(d["pk"] - d["rk"]) < 0  # the clamp is exercised by the float64 grid's seeds too
    np.testing.assert_allclose(np.asarray(kto_loss(d["p"], d["r"], d["labels"], d["pk"], d["rk"])), np_kto(d),
                               rtol=1e-12)
    # z carries no gradient
    g = jax.jit(jax.grad(lambda a: jnp.sum(kto_loss(d["p"], d["r"], d["labels"], a, d["pk"] - 1.0))))(d["pk"])
    assert float(jnp.max(jnp.abs(g))) == 0.0
    # without KL log-probs z = 0 (TRL when the KL is not computed)
    no_kl = {**d, "pk": np.zeros(B), "rk": np.zeros(B)}
    np.testing.assert_allclose(np.asarray(kto_loss(d["p"], d["r"], d["labels"])), np_kto(no_kl), rtol=1e-12)


def test_simpo_defaults_are_the_paper_recipe(x64):
    d = paired_inputs(4)
    z = 2.0 * (d["pc"] / d["lw"] - d["pr"] / d["ll"]) - 0.5  # β = 2, γ = 0.5, no NLL
    np.testing.assert_allclose(np.asarray(simpo_loss(d["pc"], d["pr"], d["lw"], d["ll"])), -np_logsig(z), rtol=1e-12)


def test_orpo_gradient_is_finite_near_probability_one(x64):
    d = paired_inputs(5)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(orpo_loss(p, d["pr"], d["lw"], d["ll"]))))(jnp.asarray(d["pc"]))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_d2o_divides_by_k_once(x64):
    """Twice the samples of the same log-ratio leave the loss unchanged: Σ/K, not Σ/K²."""
    d = d2o_inputs(6, k=3)
    doubled = {**d, "ps": np.concatenate([d["ps"]] * 2, 1), "rs": np.concatenate([d["rs"]] * 2, 1)}
    one = d2o_loss(d["ps"], d["rs"], d["pl"], d["rl"])
    two = d2o_loss(doubled["ps"], doubled["rs"], doubled["pl"], doubled["rl"])
    np.testing.assert_allclose(np.asarray(one), np.asarray(two), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(one), np_d2o(d), rtol=1e-12)


def test_log1mexp(x64):
    x = -np.logspace(-12, 2.5, 200)
    # log(-expm1(x)) is exact near 0 and log1p(-exp(x)) far from it: each only where it is accurate
    want = [math.log(-math.expm1(v)) if v > -1.0 else math.log1p(-math.exp(v)) for v in x]
    np.testing.assert_allclose(np.asarray(jax.jit(log1mexp)(x)), want, rtol=1e-13)
    x32 = jnp.asarray([-1e-6, -0.5, -1.0, -30.0], jnp.float32)
    value, grad = jax.jit(lambda v: (log1mexp(v), jax.grad(lambda u: jnp.sum(log1mexp(u)))(v)))(x32)
    want = [math.log(-math.expm1(v)) if v > -1.0 else math.log1p(-math.exp(v)) for v in np.asarray(x32, np.float64)]
    np.testing.assert_allclose(np.asarray(value), want, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_dckd(x64):
    d = dckd_inputs(7)
    args = [d[k] for k in ("sw", "tw", "mw", "sl", "tl", "ml", "tok")]
    weights = dict(sft_weight=0.5, distill_weight=2.0, chosen_weight=1.0, rejected_weight=0.3)
    dckd = jax.jit(dckd_loss, static_argnames="renormalize")
    for renormalize in (False, True):
        got = dckd(*args, renormalize=renormalize, **weights)
        assert got.shape == (3,)
        assert float(jnp.mean(got)) == pytest.approx(np_dckd(d, renormalize=renormalize, **weights), rel=1e-12)
    # renormalised, the KL of the restricted distributions is >= 0; only the NLL is left at 0 weight on it
    kl_only = dckd(*args, sft_weight=0.0, renormalize=True)
    assert float(jnp.mean(kl_only)) >= 0.0
    # a student equal to the renormalised teacher has zero KL: the loss is the NLL alone
    p = np.log(np.exp(d["tw"]) / np.exp(d["tw"]).sum(-1, keepdims=True))
    got = dckd(p, p, d["mw"], p, p, d["mw"], d["tok"], renormalize=True)
    assert float(jnp.mean(got)) == pytest.approx(np_token_mean(-d["tok"], d["mw"]), rel=1e-12)


def test_forward_kl_over_the_vocabulary(x64):
    """Over every id the terms are KL(p_T ‖ p_θ); a teacher probability of exactly 0 adds 0
    (0 log 0) and no NaN to the student's gradient."""
    rng = np.random.default_rng(9)
    student = log_softmax_np(rng.normal(size=(2, 3, 7)))
    teacher = log_softmax_np(rng.normal(size=(2, 3, 7)))
    teacher[0, 0, 2] = -np.inf
    p = np.exp(teacher)
    with np.errstate(invalid="ignore"):
        want = np.sum(np.where(p > 0, p * (teacher - student), 0.0), -1)
    np.testing.assert_allclose(np.asarray(forward_kl_terms(student, teacher)), want, rtol=1e-12)
    assert np.all(want >= 0)
    g = jax.grad(lambda s: jnp.sum(forward_kl_terms(s, teacher)))(student)
    np.testing.assert_allclose(np.asarray(g), -p, rtol=1e-12)


def test_adpa(x64):
    d = adpa_inputs(8)
    got = jax.jit(adpa_loss)(d["logps"], d["adv"], d["mask"])
    np.testing.assert_allclose(np.asarray(got), np_adpa_per_example(d), rtol=1e-12)
    logps, adv, mask = d["logps"], d["adv"], d["mask"]
    b, t, v = logps.shape
    total = sum(math.exp(logps[i, j, c]) * adv[i, j, c] for i in range(b) for j in range(t) for c in range(v)
                if mask[i, j])
    assert float(jnp.mean(got)) == pytest.approx(-total / mask.sum(), rel=1e-12)
    # the advantages are constants: the gradient only flows into the student
    g = jax.jit(jax.grad(lambda a: jnp.sum(adpa_loss(logps, a, mask))))(adv)
    assert float(jnp.max(jnp.abs(g))) == 0.0


def per_token_pairs(seed, b=4, t=9):
    """[b, 2, t] per-token log-probs (0 off the completion) and completion masks that start
    after a prompt and end before padding; one pair of equal lengths."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, 2, t))
    for i in range(b):
        for c in range(2):
            start = int(rng.integers(1, 3))
            n = 4 if i == 0 else int(rng.integers(1, t - start + 1))
            mask[i, c, start:start + n] = 1
    return rng.normal(-2.0, 1.0, size=(b, 2, t)) * mask, mask, rng.normal(-1.5, 0.3, size=(b, 2, t))


def test_ld_logps_follows_trl(x64):
    """TRL's ld_alpha: the first min(|y_w|, |y_l|) completion tokens count fully, the longer
    completion's tail with weight α."""
    logps, mask, _ = per_token_pairs(10)
    for alpha in (0.0, 0.3, 1.0):
        got = np.asarray(jax.jit(ld_logps, static_argnums=2)(logps, mask, alpha))
        for i in range(logps.shape[0]):
            shared = int(min(mask[i, 0].sum(), mask[i, 1].sum()))
            for c in range(2):
                tokens = [logps[i, c, j] for j in range(logps.shape[2]) if mask[i, c, j]]
                want = sum(tokens[:shared]) + alpha * sum(tokens[shared:])
                assert got[i, c] == pytest.approx(want, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(np.asarray(ld_logps(logps, mask, 1.0)), logps.sum(-1), rtol=1e-12)


def test_wpo_weights_follow_trl(x64):
    logps, mask, lss = per_token_pairs(11)
    got = np.asarray(jax.jit(wpo_weights)(logps, lss, mask))
    for i in range(logps.shape[0]):
        w = [math.exp(sum((logps[i, c, j] - lss[i, c, j]) * mask[i, c, j] for j in range(logps.shape[2]))
                      / max(mask[i, c].sum(), 1)) for c in range(2)]
        assert got[i] == pytest.approx(w[0] * w[1], rel=1e-12)
    g = jax.grad(lambda x: jnp.sum(wpo_weights(x, lss, mask)))(logps)
    assert float(jnp.max(jnp.abs(g))) == 0.0  # a weight, not a gradient path


# ---------------------------------------------------------------- registry and validation


def test_registry_covers_every_loss():
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair",
                                   "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
                                   "sigmoid_norm"}
    assert set(LOSSES) == set(DPO_LOSS_TYPES) | {"simpo", "cpo", "orpo", "kto", "asft", "poft", "d2o", "dckd", "adpa",
                                                 "reward"}
    assert {n for n, s in LOSSES.items() if s.f_divergence} == F_DIV_LOSSES
    assert {n for n in DPO_LOSS_TYPES if LOSSES[n].needs_lengths} == {"ipo", "sigmoid_norm", "sft"}
    assert {n for n, s in LOSSES.items() if s.needs_reference} == set(DPO_LOSS_TYPES) - {"sft"} | {"kto", "d2o"}
    assert LOSSES["simpo"].default_beta == 2.0
    for name, spec in LOSSES.items():  # every option a non-DPO loss takes is a keyword of its function
        if spec.function != "dpo_loss":
            params = inspect.signature(getattr(P, spec.function)).parameters
            assert spec.options <= set(params), name


def dpo_call(**kwargs):
    z = np.zeros(2)
    return dpo_loss(z, z, z, z, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(loss_type="dpo"), r"unknown loss_type 'dpo'; known loss types: sigmoid, robust, hinge"),
    (dict(loss_type=["sigmoid", "sigmod"]), r"unknown loss_type 'sigmod'"),
    (dict(loss_type=[]), r"loss_type is empty"),
    (dict(loss_type="simpo"), r"'simpo' is not a dpo_loss loss; use simpo_loss"),
    (dict(loss_type=["sigmoid", "orpo"]), r"only DPO-family losses can be combined.*\['orpo'\].*orpo_loss"),
    (dict(loss_type="hinge", discopop_tau=0.1),
     r"loss 'hinge' does not take option 'discopop_tau'; it takes: f_alpha_divergence_coef, f_divergence_type, "
     r"loss_weights"),
    (dict(loss_type="nca_pair", rpo_alpha=1.0), r"loss 'nca_pair' does not take option 'rpo_alpha'; it takes: "
                                                r"loss_weights"),
    (dict(loss_type=["sigmoid", "ipo"], bco_delta=0.1),
     r"none of the losses \['sigmoid', 'ipo'\] takes option 'bco_delta'; they take: f_alpha_divergence_coef, "
     r"f_divergence_type, label_smoothing, loss_weights"),
    (dict(loss_type="hinge", label_smoothing=0.1), r"loss 'hinge' does not take option 'label_smoothing'"),
    (dict(beta=0.0), r"beta must be > 0 for loss 'sigmoid', got 0.0"),
    (dict(beta=-1.0, loss_type="ipo"), r"beta must be > 0"),
    (dict(loss_type="robust", label_smoothing=0.5), r"label_smoothing=0.5 is outside \[0, 0.5\) for loss 'robust'"),
    (dict(loss_type="sigmoid", label_smoothing=0.7), r"label_smoothing=0.7 is outside \[0, 0.5\] for loss 'sigmoid'"),
    (dict(loss_type="aot", label_smoothing=-0.1), r"outside \[0, 0.5\] for loss 'aot'"),
    (dict(loss_type="exo_pair"), r"label_smoothing=0 is outside \(0, 0.5\] for loss 'exo_pair' \(EXO needs ε > 0; "
                                 r"its paper recommends 1e-3"),
    (dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]), r"loss_weights has 1 entries for 2 loss types"),
    (dict(loss_type="sigmoid", loss_weights=[1.0, 2.0]), r"loss_weights has 2 entries for 1 loss types"),
    (dict(loss_type="nca_pair", f_divergence_type="forward_kl"),
     r"f_divergence_type='forward_kl' does not apply to loss 'nca_pair', which uses the log-ratio directly; "
     r"losses with an f-divergence score: sigmoid, robust, hinge, ipo, exo_pair, discopop, sft, sigmoid_norm"),
    (dict(loss_type="aot", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
     r"f_divergence_type='alpha_divergence' does not apply to loss 'aot'"),
    (dict(loss_type="apo_zero", f_alpha_divergence_coef=0.5), r"'f_alpha_divergence_coef' only applies with"),
    (dict(loss_type=["sigmoid", "bco_pair"], f_divergence_type="js_divergence"),
     r"f_divergence_type='js_divergence' does not apply to loss 'bco_pair', which uses the log-ratio directly"),
    (dict(f_divergence_type="kl"), r"unknown f_divergence_type 'kl'; known: reverse_kl, forward_kl"),
    (dict(f_alpha_divergence_coef=0.3), r"'f_alpha_divergence_coef' only applies with "
                                        r"f_divergence_type='alpha_divergence'"),
    (dict(loss_type="discopop", discopop_tau=0.0), r"discopop_tau must be > 0"),
    (dict(loss_type="ipo"), r"loss 'ipo' needs chosen_lengths and rejected_lengths"),
    (dict(loss_type="sigmoid_norm", chosen_lengths=np.ones(2)), r"loss 'sigmoid_norm' needs chosen_lengths and"),
    (dict(loss_type="sft"), r"loss 'sft' needs chosen_lengths"),
])
def test_dpo_loss_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_call(**kwargs)


def test_missing_reference_rejected():
    z = np.zeros(2)
    with pytest.raises(ValueError, match=r"loss 'sigmoid' needs ref_chosen_logps and ref_rejected_logps"):
        dpo_loss(z, z, None, None, loss_type=["sft", "sigmoid"], chosen_lengths=np.ones(2))


@pytest.mark.parametrize(("loss_type", "beta", "options", "match"), [
    ("simpo", 2.0, {"discopop_tau": 0.1}, r"loss 'simpo' does not take option 'discopop_tau'; it takes: cpo_alpha, "
                                          r"label_smoothing, simpo_gamma"),
    ("orpo", 0.1, {"cpo_alpha": 1.0}, r"loss 'orpo' does not take option 'cpo_alpha'; it takes: no options"),
    ("kto", 0.1, {"f_divergence_type": "reverse_kl"}, r"loss 'kto' does not take option 'f_divergence_type'; "
                                                      r"it takes: desirable_weight, undesirable_weight"),
    ("kto", 0.1, {"desirable_weight": -1.0}, r"desirable_weight must be >= 0"),
    ("d2o", 0.0, {}, r"beta must be > 0 for loss 'd2o'"),
    ("dpo", 0.1, {}, r"unknown loss_type 'dpo'.*simpo, cpo, orpo, kto, asft, poft, d2o, dckd, adpa"),
])
def test_validate_loss_options(loss_type, beta, options, match):
    with pytest.raises(ValueError, match=match):
        validate_loss_options(loss_type, beta, options)


def test_validation_accepts_good_configs():
    validate_loss_options(["sigmoid", "sft"], 0.1, {"label_smoothing": 0.1, "loss_weights": [1.0, 0.5],
                                                    "f_divergence_type": "alpha_divergence",
                                                    "f_alpha_divergence_coef": 0.5})
    validate_loss_options("exo_pair", 0.1, {"label_smoothing": 1e-3})
    validate_loss_options("nca_pair", 0.1, {"label_smoothing": 0.0, "f_divergence_type": "reverse_kl"})
    validate_loss_options("simpo", 2.0, {"simpo_gamma": 0.5})
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        simpo_loss(np.zeros(2), np.zeros(2), np.ones(2), np.ones(2), beta=0.0)
