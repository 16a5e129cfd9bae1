"""Tests that catch the mutants of ``dgm_edu/vae.py`` that its own tests let through
(``make mutation``), each against an independent computation or a documented rule:

- the IWAE bound with a proposal equal to the target (every weight the same: the bound is
  exactly log p) and its chunking, its defaults and messages;
- the KL summed over the LAST dimension of any shape, the warm-up rule in eval mode;
- conditional models through every path (k > 1 samples, reconstruct, elbo), other level
  counts, dropout that is live in train mode, the meta device, the samplers' mode and z.
"""

from __future__ import annotations

import pytest
import torch

from dgm_edu import vae as vae_module
from dgm_edu.data import load_digits
from dgm_edu.densities import normal_log_prob
from dgm_edu.vae import VAE, VAEConfig, _Block, active_units, gaussian_kl, iwae_bound

X, Y = (t[:6] for t in load_digits("val"))


def _vae(seed: int = 0, **config) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(**({"latent_dim": 4, "channels": 8} | config))).eval()


# --------------------------------------------------------------------------- the formulas
def test_gaussian_kl_sums_the_last_dimension_of_any_shape():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    expected = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(-1)  # (2, 3)
    assert torch.allclose(gaussian_kl(mu, logvar), expected)


def test_iwae_bound_is_exact_when_the_proposal_is_the_target():
    """log_joint = log q + c: every weight is e^c, so L_k = c for every k, chunked or not."""
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    c = torch.tensor([-1.0, 2.0, 0.5])
    log_joint = lambda z: normal_log_prob(z, mu, logvar) + c  # noqa: E731
    for k, chunk in [(1, 100), (150, 100), (150, 1), (7, 3)]:
        assert torch.allclose(iwae_bound(log_joint, mu, logvar, k, chunk), c, atol=1e-5)
    assert torch.allclose(iwae_bound(log_joint, mu, logvar, 150), c, atol=1e-5)


def test_iwae_bound_draws_in_chunks_of_100_by_default(monkeypatch):
    sizes = []
    real = vae_module.reparameterize
    monkeypatch.setattr(
        vae_module, "reparameterize", lambda m, lv, k: sizes.append(k) or real(m, lv, k)
    )
    mu, logvar = torch.zeros(2, 2), torch.zeros(2, 2)
    iwae_bound(lambda z: z.sum(-1), mu, logvar, 250)
    assert sizes == [100, 100, 50]
    sizes.clear()
    _vae().log_prob(X[:2], k=150, chunk=40)
    assert sizes == [40, 40, 40, 30]
    sizes.clear()
    _vae().log_prob(X[:2])  # defaults: k = 100 in one chunk of 100
    assert sizes == [100]
    sizes.clear()
    _vae().log_prob(X[:2], k=150)  # chunks of 100 by default
    assert sizes == [100, 50]


def test_iwae_bound_messages():
    mu = torch.zeros(1, 2)
    for args, message in [((0, 5), "k must be an int >= 1, got 0"),
                          ((3, 0), "chunk must be an int >= 1, got 0")]:  # fmt: skip
        with pytest.raises(ValueError) as info:
            iwae_bound(lambda z: z.sum(-1), mu, mu, *args)
        assert str(info.value) == message
    assert torch.isfinite(iwae_bound(lambda z: -z.pow(2).sum(-1), mu, mu, 3, 1)).all()


# --------------------------------------------------------------------------- the model
def test_conditional_paths_use_the_labels():
    m = _vae(num_classes=10)
    torch.manual_seed(0)
    lp = m.log_prob(X, Y, k=5)  # (k, B, D) latents: the label planes join on the last dim
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    assert torch.isfinite(m.elbo(X, Y)).all()
    rec = m.reconstruct(X, Y)
    mu, _ = m.encode(X, Y)
    assert torch.equal(rec, m.decode(mu, Y).argmax(1, keepdim=True))
    with pytest.raises(ValueError) as info:
        m.elbo(X)
    assert str(info.value) == "A conditional VAE needs labels y: call loss(x, y) / log_prob(x, y)"
    n, var = active_units(m, X, Y)
    assert torch.allclose(var, m.encode(X, Y)[0].var(0))


def test_conditional_mlp_paths_use_the_labels():
    m = _vae(num_classes=10, kind="mlp", dropout=0.5)
    with torch.no_grad():
        mu_a, _ = m.encode(X, Y)
        mu_b, _ = m.encode(X, (Y + 1) % 10)
        assert not torch.allclose(mu_a, mu_b)  # the label enters the encoder...
        z = torch.randn(2, 6, 4)  # (k, B, D): the label is broadcast over the leading dim
        la, lb = m.decode(z, Y), m.decode(z, (Y + 1) % 10)
        assert la.shape == (2, 6, 17, 8, 8) and not torch.allclose(la, lb)  # ...and the decoder
        assert torch.equal(m.decode(z, Y), la)  # eval mode: dropout off
        m.train()
        assert not torch.equal(m.decode(z, Y), la)  # train mode: dropout live
    assert m.log_prob(X, Y, k=3).shape == (6,)


def test_active_units_threshold_default_and_strictness():
    m = _vae()
    with torch.no_grad():
        m.encoder.net[-1].weight.mul_(10)  # spread the posterior means
    n, var = active_units(m, X)
    assert n == int((var > 0.01).sum()) and 0 < n
    j = int(var.argmax())
    n_at, _ = active_units(m, X, threshold=var[j].item())  # strictly above: j is not active
    assert n_at == int((var > var[j]).sum()) == 0


def test_warm_up_holds_only_in_train_mode():
    m = _vae(warmup_steps=100, beta=2.0)
    m.eval()
    assert m.kl_weight() == 2.0
    m.train()
    assert m.kl_weight() == pytest.approx(2.0 / 100)
    assert m.step.dtype == torch.long and m.step.item() == 0


def test_dropout_is_live_in_train_mode_only():
    m = _vae(dropout=0.5).train()
    x = (X.float() / 16).requires_grad_(False)
    a, b = m.encoder(x, None)[0], m.encoder(x, None)[0]
    assert not torch.equal(a, b)
    block = _Block(8, 0.5).train()
    h = torch.randn(2, 8, 8, 8)
    assert not torch.equal(block(h), block(h))
    block.eval()
    assert torch.equal(block(h), block(h))


def test_other_level_counts_scale_and_check_by_the_config():
    m = _vae(levels=5)
    seen = []
    m.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].max().item()))
    x = torch.full((2, 1, 8, 8), 4)
    m.encode(x)
    assert seen == [1.0]  # level 4 of 0..4 is 1.0 in [0, 1]
    with pytest.raises(ValueError) as info:
        m.log_prob(torch.full((1, 1, 8, 8), 7))
    assert str(info.value) == "Expected integer levels 0..4, got values in [7, 7]"
    big = _vae(levels=20)
    with torch.no_grad():
        big.decoder.net[-1].bias.copy_(torch.arange(20.0) * 10)  # level 19 wins everywhere
    assert big.reconstruct(X).unique().tolist() == [19]
    assert big.sample(2, mode=True).unique().tolist() == [19]


def test_sample_mode_and_z():
    m = _vae()
    z = torch.randn(3, 4)
    out = m.sample(3, z=z, mode=True)
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out, m.decode(z).argmax(1, keepdim=True))
    for bad, got in [(torch.zeros(2, 4), "(2, 4)"), ("abc", "str")]:
        with pytest.raises(ValueError) as info:
            m.sample(3, z=bad)
        assert str(info.value) == f"z must be a tensor of shape (3, 4), got {got}"


def test_non_finite_logits_are_refused_with_their_message():
    m = _vae()
    with torch.no_grad():
        m.decoder.net[-1].bias.fill_(float("nan"))
    for call in (lambda: m.sample(2), lambda: m.reconstruct(X)):
        with pytest.raises(FloatingPointError) as info:
            call()
        assert str(info.value).startswith("the decoder's logits is not finite (NaN or inf)")


def test_conditional_model_on_the_meta_device():
    m = _vae(num_classes=10).to("meta")
    xm = torch.zeros(4, 1, 8, 8, dtype=torch.long, device="meta")
    ym = torch.zeros(4, dtype=torch.long, device="meta")
    assert m.loss(xm, ym).device.type == "meta"
    assert m.sample(3).device.type == "meta" and m.sample(0).device.type == "meta"
    assert m.sample(2, y=1, z=torch.zeros(2, 4)).device.type == "meta"  # z follows the model
    mu = torch.zeros(2, 3, device="meta")
    assert vae_module.reparameterize(mu, mu).device.type == "meta"
