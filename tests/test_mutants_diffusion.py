"""Tests that catch the mutants of ``dgm_edu/diffusion.py`` that its own tests let through
(``make mutation``). Each recomputes a piece from its formula in the module doc, with the same
random draws (fixed seeds), on small perturbed models (a zero-initialised output layer would
predict ε̂ = 0 and hide most mistakes):

- the schedules' defaults, the proposal q_t (numpy), the log-SNR bins, the inverse-CDF draw;
- diffusion_term, its running per-bin share (train mode), the decoder term, log_prob as their
  stratified assembly, guidance, and DDIM / ancestral steps replayed one by one;
- the config's and the samplers' refusals (exact messages), labels reaching the network,
  dropout reaching the U-Net, the meta device.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dgm_edu.data import load_digits
from dgm_edu.diffusion import (
    HALF_BIN,
    Diffusion,
    DiffusionConfig,
    cosine_schedule,
    linear_schedule,
)

X, Y = (t[:4] for t in load_digits("val"))


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


def _model(seed: int = 0, **config) -> Diffusion:
    torch.manual_seed(seed)
    base = {"T": 12, "channels": 8, "proposal_bins": 4, "bound_samples": 3}
    model = Diffusion(DiffusionConfig(**(base | config))).eval()
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.2 * torch.randn_like(p))  # off the zero-initialised output layer
    return model


def _x0(model: Diffusion) -> torch.Tensor:
    return model._encode(X if model.config.data == "digits" else torch.randn(4, 2))


# --------------------------------------------------------------------------- schedules, proposal
def test_schedule_defaults():
    lin, cos = linear_schedule(), cosine_schedule()
    assert lin.shape == cos.shape == (1001,) and lin.dtype == cos.dtype == torch.float64
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(lin[1:].numpy(), np.cumprod(1 - betas), rtol=1e-12)


def _numpy_proposal(model: Diffusion) -> tuple[np.ndarray, np.ndarray]:
    w, loss, bins = (
        model.w.double().numpy(),
        model.bin_loss.double().numpy(),
        model.bin_of_t.numpy(),
    )
    nb = len(loss)
    share = 0.1 / nb + 0.9 * loss / loss.sum()
    w_bin = np.array([w[bins == b].sum() for b in range(nb)])
    q = np.where(w > 0, w / np.maximum(w_bin[bins], 1e-30) * share[bins], 0.0)
    q = q / q.sum()
    return q, np.where(q > 0, w / np.maximum(q, 1e-30), 0.0)


def test_bins_and_proposal_against_numpy():
    model = _model(T=40, proposal_bins=5)
    abar = linear_schedule(40).numpy()
    snr = abar[1:] / (1 - abar[1:])  # SNR_1..SNR_T (abar_0 = 1: SNR_0 is infinite)
    w = np.zeros(41)
    w[2:] = 0.5 * (snr[:-1] / snr[1:] - 1)  # w_t = ½ (SNR_{t−1} / SNR_t − 1), t = 2..T
    cdf = np.cumsum(w) / w.sum()
    expected_bins = np.minimum(np.floor(cdf * 5), 4).astype(int)
    assert model.bin_of_t.tolist() == expected_bins.tolist()
    with torch.no_grad():
        model.bin_loss.copy_(torch.tensor([0.5, 3.0, 1.0, 0.1, 2.0]))
    q, ratio = model.proposal()
    q_np, ratio_np = _numpy_proposal(model)
    np.testing.assert_allclose(q.numpy(), q_np, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ratio.numpy(), ratio_np, rtol=1e-4)


def test_sample_t_inverts_the_cdf_at_the_given_uniforms():
    model = _model()
    q, ratio = model.proposal()
    cdf = np.cumsum(q.double().numpy())
    u = torch.tensor([0.0, 0.3, 0.77, 1 - 1e-6, 0.5])
    t, r = model._sample_t(5, u)
    expected = np.searchsorted(cdf, u.double().numpy() * cdf[-1])
    assert t.tolist() == np.clip(expected, 2, 12).tolist() and t[3] == 12
    assert torch.equal(r, ratio[t])
    torch.manual_seed(0)
    assert torch.equal(model._sample_t(5, u)[0], t)  # the uniforms decide, not the generator


# --------------------------------------------------------------------------- the bound's terms
@pytest.mark.parametrize("data", ["digits", "toy"])
def test_diffusion_term_is_its_formula(data):
    model = _model(data=data, channels=8 if data == "digits" else 16)
    x0 = _x0(model)
    u = torch.tensor([0.1, 0.4, 0.6, 0.95])
    torch.manual_seed(2)
    got = model.diffusion_term(x0, None, u)
    torch.manual_seed(2)
    t, ratio = model._sample_t(4, u)
    eps = torch.randn_like(x0)
    eps_hat, _ = model.predict(model.q_sample(x0, t, eps), t, None)
    expected = ratio * (eps - eps_hat).pow(2).flatten(1).sum(1)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_the_running_bin_shares_follow_their_update_rule():
    model = _model(T=30, proposal_bins=3).train()
    x0 = _x0(model)
    before = model.bin_loss.clone()
    u = torch.tensor([0.05, 0.1, 0.5, 0.55])  # not every bin is seen
    t, _ = model._sample_t(4, u)  # (before the update: it moves the proposal)
    b = model.bin_of_t[t]
    q, _ = model.proposal()
    q_bin = torch.zeros(3).index_add_(0, model.bin_of_t, q)
    torch.manual_seed(4)
    terms = model.diffusion_term(x0, None, u, track=True).detach()
    expected = before.clone()
    for k in range(3):
        seen = b == k
        if seen.any():
            new = (terms[seen] * q_bin[k]).sum() / seen.sum()
            expected[k] = before[k] + 0.05 * (new - before[k])
    assert 0 < len(set(b.tolist())) < 3  # a bin that was not seen keeps its value
    assert torch.allclose(model.bin_loss, expected, rtol=1e-5)


def test_decoder_term_is_the_discretised_gaussian_with_labels():
    model = _model(num_classes=3, p_uncond=0.2)
    x0, y = _x0(model), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(6)
    got = model.decoder_term(x0, y)
    torch.manual_seed(6)
    t = torch.ones(4, dtype=torch.long)
    _, mean = model.predict(model.q_sample(x0, t, torch.randn_like(x0)), t, y)
    std = model.beta[1].sqrt().item()
    normal = torch.distributions.Normal(mean.double(), std)
    hi = torch.where(x0 > 1 - HALF_BIN, math.inf, x0 + HALF_BIN).double()
    lo = torch.where(x0 < -1 + HALF_BIN, -math.inf, x0 - HALF_BIN).double()
    mass = (normal.cdf(hi) - normal.cdf(lo)).clamp(min=1e-12)
    assert torch.allclose(got.double(), -mass.log().flatten(1).sum(1), rtol=1e-4, atol=1e-5)
    torch.manual_seed(6)
    assert not torch.allclose(got, model.decoder_term(x0, None))  # the labels matter


def test_log_prob_is_the_stratified_sum_of_its_terms():
    model = _model(num_classes=3, p_uncond=0.2, bound_samples=4)
    y = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(8)
    got = model.log_prob(X, y)
    torch.manual_seed(8)
    x0 = _x0(model)
    diff = torch.zeros(4)
    for k in range(4):
        u = (k + torch.rand(4)) / 4  # stratum k of 4 in log-SNR
        diff = diff + model.diffusion_term(x0, y, u) / 4
    expected = -(model.prior_term(x0) + diff + model.decoder_term(x0, y))
    assert torch.allclose(got, expected, rtol=1e-5)
    toy = _model(data="toy", channels=16)
    assert _message(ValueError, toy.log_prob, torch.zeros(2, 2)) == (
        "log_prob is defined for the discrete digits only (data='digits')"
    )


def test_guidance_mixes_the_conditional_and_unconditional_predictions():
    model = _model(num_classes=3, p_uncond=0.2)
    xt, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 7), torch.tensor([0, 1, 2, 0])
    eps_c, _ = model.predict(xt, t, y)
    eps_u, _ = model.predict(xt, t, None)
    eps, x0 = model.guided_eps(xt, t, y, 3.0)
    assert torch.allclose(eps, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5)
    ab = model.abar[7]
    assert torch.allclose(x0, (xt - (1 - ab).sqrt() * eps) / ab.sqrt(), atol=1e-4)


# --------------------------------------------------------------------------- samplers, replayed
def _replay_ddim(model, n, steps, eta, x_T, y=None, guidance=1.0):
    T, x = model.config.T, x_T
    times = torch.linspace(T, 0, steps + 1).round().long().tolist()
    for t, s in zip(times[:-1], times[1:]):
        eps, x0 = model.guided_eps(x, torch.full((n,), t), y, guidance)
        if model.config.data == "digits":
            x0 = x0.clamp(-1, 1)
            eps = (x - model.abar[t].sqrt() * x0) / (1 - model.abar[t]).sqrt()
        ab_t, ab_s = model.abar[t], model.abar[s]
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
        x = ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps
        if s > 0:
            x = x + sigma * torch.randn_like(x)
    return x


@pytest.mark.parametrize(("data", "steps", "eta"), [("digits", 12, 1.0), ("digits", 5, 0.5),
                                                    ("toy", 4, 1.0)])  # fmt: skip
def test_ddim_steps_replayed(data, steps, eta):
    model = _model(data=data, channels=8 if data == "digits" else 16)
    x_T = torch.randn(3, *model.shape) * 2
    torch.manual_seed(9)
    _, path = model.ddim_sample(3, steps=steps, eta=eta, x_T=x_T, return_path=True)
    torch.manual_seed(9)
    expected = _replay_ddim(model, 3, steps, eta, x_T)
    assert torch.allclose(path[-1], expected, atol=1e-5)
    assert len(path) == steps + 1


def test_sampler_defaults():
    model = _model(T=60, channels=8, num_classes=3, p_uncond=0.2)
    x_T = torch.randn(2, 1, 8, 8)
    torch.manual_seed(1)
    a = model.ddim_sample(2, x_T=x_T)  # 50 deterministic steps (eta = 0)
    torch.manual_seed(2)
    b = model.ddim_sample(2, steps=50, eta=0.0, x_T=x_T)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    a = model.sample(2, y=1, guidance=2.0)
    torch.manual_seed(3)
    b = model.ddim_sample(2, steps=60, eta=1.0, y=1, guidance=2.0)
    assert torch.equal(a, b)
    out = model.sample(2, return_path=True)
    assert isinstance(out, tuple) and out[1].shape == (61, 2, 1, 8, 8)


# --------------------------------------------------------------------------- config, labels
def test_config_and_sampler_refusals():
    DiffusionConfig(bound_samples=1, proposal_bins=1, p_uncond=0.0)  # valid
    assert _message(ValueError, DiffusionConfig, p_uncond=1.0) == (
        "p_uncond must lie in [0, 1), got 1.0"
    )
    assert _message(TypeError, DiffusionConfig, p_uncond="a") == (
        "p_uncond must be a real number, got 'a' (str)"
    )
    only = _model(num_classes=3, p_uncond=0.0)
    assert _message(ValueError, only.loss, X) == (
        "y is required: this model is class-conditional without label dropout (p_uncond=0), "
        "so it has no unconditional p(x)"
    )
    assert only.sample(3).shape == (3, 1, 8, 8)  # sampling stratifies the classes instead
    plain = _model(p_uncond=0.0)  # unconditional: y is never required
    assert torch.isfinite(plain.loss(X)) and plain.sample(2).shape == (2, 1, 8, 8)
    one = _model(num_classes=1, p_uncond=0.0)
    assert _message(ValueError, one.loss, X).startswith("y is required")
    assert _message(ValueError, plain.ddim_sample, 2, guidance=2.0) == (
        "guidance=2.0 mixes the predictions with and without the label: it needs labels y and "
        "a class-conditional model trained with label dropout (p_uncond > 0)"
    )
    for bad, got in [(torch.zeros(2, 1, 8, 7), "(2, 1, 8, 7)"), ("noise", "str")]:
        assert _message(ValueError, plain.ddim_sample, 2, x_T=bad) == (
            f"x_T must be a tensor of shape (2, 1, 8, 8), got {got}"
        )
    toy = _model(data="toy", channels=16)
    assert _message(ValueError, toy.loss, torch.zeros(3, 3)) == (
        "x must be a non-empty batch of shape (N, 2), got (3, 3)"
    )


@pytest.mark.parametrize("data", ["digits", "toy"])
def test_labels_and_dropout_reach_the_network(data):
    model = _model(data=data, channels=8 if data == "digits" else 16, num_classes=3)
    xt = torch.randn(2, *model.shape)
    t = torch.full((2,), 5)
    with torch.no_grad():
        model.net.cond.label.weight.normal_()
    a, _ = model.predict(xt, t, torch.tensor([0, 0]))
    b, _ = model.predict(xt, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    if data == "digits":
        drop = Diffusion(DiffusionConfig(T=4, channels=8, dropout=0.3))
        assert {m.p for m in drop.modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_the_meta_device():
    model = _model(num_classes=3, p_uncond=0.2).to("meta")
    xm = torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta")
    assert model.train().loss(xm, torch.zeros(2, dtype=torch.long, device="meta")).is_meta
    model.eval()
    assert model.log_prob(xm).is_meta
    assert model.sample(2).is_meta
    assert model.ddim_sample(2, x_T=torch.zeros(2, 1, 8, 8)).is_meta  # x_T follows the model
    assert model._sample_t(3)[0].is_meta
