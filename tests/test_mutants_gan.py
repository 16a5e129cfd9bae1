"""Tests that catch the mutants of ``dgm_edu/gan.py`` that its own tests let through
(``make mutation``), each against a closed form or a documented rule:

- the WGAN-GP objective: the critic loss, the penalty of a linear critic (‖∇f‖ = ‖w‖, so the
  penalty is (‖w‖ − 1)² exactly), and d_loss as their documented sum, conditional too;
- the generator's objectives and their default, the optimizers' defaults;
- the config's and decode's refusals (exact messages), the image generator's tanh range,
  sample(1), and the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgm_edu.gan import (
    GAN,
    GANConfig,
    critic_loss,
    generator_loss,
    gradient_penalty,
    make_optimizers,
)


def _gan(**config) -> GAN:
    torch.manual_seed(0)
    return GAN(GANConfig(**({"hidden": 16, "latent_dim": 4} | config)))


def _message(err, call, *args, **kwargs) -> str:
    with pytest.raises(err) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- the objectives
def test_critic_loss_is_minus_the_wasserstein_estimate():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0, 5.0])
    assert critic_loss(real, fake).item() == pytest.approx(1.0 - 2.0)  # E f(G(z)) − E f(x)


def test_gradient_penalty_of_a_linear_critic_is_exact():
    w = torch.tensor([3.0, 4.0])  # ‖w‖ = 5: the penalty is (5 − 1)² = 16 at every point

    def critic(x, y):  # a conditional critic: the labels must reach it
        return x @ w + y.float()

    real, fake, y = torch.randn(6, 2), torch.randn(6, 2), torch.arange(6)
    assert gradient_penalty(critic, real, fake, y).item() == pytest.approx(16.0)
    images = torch.randn(3, 1, 8, 8)
    assert gradient_penalty(lambda x: 2 * x.sum((1, 2, 3)), images, images * 0).item() == (
        pytest.approx((2 * 8 - 1) ** 2)  # ‖∇‖ = 2 √64 = 16
    )


def test_generator_losses_and_their_default():
    logits = torch.tensor([-1.0, 0.5, 2.0])
    assert generator_loss(logits).item() == pytest.approx(F.softplus(-logits).mean().item())
    assert generator_loss(logits, "minimax").item() == pytest.approx(
        -F.softplus(logits).mean().item()
    )
    assert generator_loss(logits, "wgan-gp").item() == pytest.approx(-logits.mean().item())
    assert _message(ValueError, generator_loss, logits, "hinge") == (
        "Unknown loss 'hinge': expected one of ('minimax', 'nonsaturating', 'wgan-gp')"
    )


@pytest.mark.parametrize("num_classes", [0, 3])
def test_wgan_gp_d_loss_is_the_critic_loss_plus_the_weighted_penalty(num_classes):
    gan = _gan(data_shape=(2,), loss="wgan-gp", gp_weight=7.0, num_classes=num_classes)
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    y = (torch.arange(5) % 3,) if num_classes else ()
    torch.manual_seed(1)
    got = gan.d_loss(real, fake, *y)
    torch.manual_seed(1)  # the same ε on the lines between real and fake points
    d = gan.discriminator
    expected = critic_loss(d(real, *y), d(fake, *y)) + 7.0 * gradient_penalty(d, real, fake, *y)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = _gan(data_shape=(2,), num_classes=num_classes)  # cross-entropy, no penalty
    expected = (
        F.softplus(-plain.discriminator(real, *y)).mean()
        + F.softplus(plain.discriminator(fake, *y)).mean()
    )
    assert plain.d_loss(real, fake, *y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_make_optimizers_defaults():
    gan = _gan()
    opts = make_optimizers(gan)
    for name in ("generator", "discriminator"):
        group = opts[name].param_groups[0]
        assert group["lr"] == 2e-4 and group["betas"] == (0.5, 0.999)
    g = opts["generator"].param_groups[0]["params"]
    assert {id(p) for p in g} == {id(p) for p in gan.generator.parameters()}
    opts = make_optimizers(gan, lr=1e-3, lr_d=5e-3, betas=(0.0, 0.9))
    assert opts["generator"].param_groups[0]["lr"] == 1e-3
    assert opts["discriminator"].param_groups[0]["lr"] == 5e-3
    assert opts["discriminator"].param_groups[0]["betas"] == (0.0, 0.9)


# --------------------------------------------------------------------------- the model
def test_config_refusals():
    for kwargs, message in [
        ({"data_shape": (1, 8)}, "data_shape must be (D,) for points or (C, H, W) for images, "
         "got (1, 8)"),
        ({"loss": "hinge"}, "Unknown loss 'hinge': expected one of ('minimax', 'nonsaturating', "
         "'wgan-gp')"),
        ({"arch": "resnet"}, "Unknown arch 'resnet': expected 'mlp' or 'conv'"),
        ({"arch": "conv", "data_shape": (2,)}, "arch='conv' needs data_shape (1, 8, 8), got (2,)"),
    ]:  # fmt: skip
        assert _message(ValueError, GANConfig, **kwargs) == message


def test_conditional_gan_without_labels_is_refused_with_its_message():
    gan = _gan(num_classes=10)
    x = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    assert _message(ValueError, gan.loss, x) == (
        "A conditional GAN needs labels y: call loss(x, y), train on (x, y) batches "
        "(labels=True loaders), or pass y to decode"
    )


def test_decode_refuses_bad_latents_and_gives_levels():
    gan = _gan()
    for bad, got in [(torch.zeros(2, 5), "(2, 5)"), (torch.zeros(2, 4, 1), "(2, 4, 1)"),
                     (torch.zeros(4), "(4,)"), ("z", "str")]:  # fmt: skip
        assert (
            _message(ValueError, gan.decode, bad)
            == f"z must be a tensor of shape (N, 4), got {got}"
        )
    out = gan.decode(torch.randn(3, 4))
    assert out.dtype == torch.long and out.shape == (3, 1, 8, 8)


def test_the_image_generator_lives_in_minus_one_one():
    gan = _gan()
    with torch.no_grad():
        for p in gan.generator.parameters():
            p.mul_(50)  # huge pre-activations
    v = gan.generate(torch.randn(8, 4))
    assert v.abs().max() <= 1 and v.abs().max() > 0.99
    points = _gan(data_shape=(2,))
    with torch.no_grad():
        for p in points.generator.parameters():
            p.mul_(50)
    assert points.generate(torch.randn(8, 4)).abs().max() > 1  # toy points are not squashed


def test_sample_of_one_and_the_meta_device():
    gan = _gan(num_classes=3)
    assert gan.sample(1).shape == (1, 1, 8, 8)
    meta = _gan(num_classes=3).to("meta")
    for n in (0, 2):
        assert meta.sample(n).device.type == "meta"
    x = torch.zeros(2, 1, 8, 8, dtype=torch.long, device="meta")
    assert meta.loss(x, torch.zeros(2, dtype=torch.long, device="meta")).device.type == "meta"
    wgan = _gan(data_shape=(2,), loss="wgan-gp").to("meta")
    pts = torch.zeros(3, 2, device="meta")
    assert wgan.d_loss(pts, pts).device.type == "meta"


def test_the_discriminators_layers():
    """Leaky ReLUs of slope 0.2 after every hidden layer (2 in the MLP, 3 in the conv net)."""
    for config, count in ((GANConfig(hidden=16), 2), (GANConfig(arch="conv", hidden=16), 3)):
        d = GAN(config).discriminator
        slopes = [m.negative_slope for m in d.body if isinstance(m, torch.nn.LeakyReLU)]
        assert slopes == [0.2] * count
        assert isinstance(d.body[-1], torch.nn.LeakyReLU)  # the head reads activated features


def _replay_train_step(gan: GAN, batch: tuple, lr: float) -> dict[str, float]:
    """One round of the game written out: critic_steps discriminator updates, one generator
    update, the same draws in the same order, plain SGD."""
    opt_g = torch.optim.SGD(gan.generator.parameters(), lr=lr)
    opt_d = torch.optim.SGD(gan.discriminator.parameters(), lr=lr)
    y = batch[1:]
    real = gan.to_model_space(batch[0])
    for _ in range(gan.config.critic_steps):
        with torch.no_grad():
            fake = gan.generate(torch.randn(len(real), gan.config.latent_dim), *y)
        d_loss = gan.d_loss(real, fake, *y)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    fake_out = gan.discriminator(
        gan.generate(torch.randn(len(real), gan.config.latent_dim), *y), *y
    )
    g_loss = generator_loss(fake_out, gan.config.loss)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    squash = (lambda t: t) if gan.config.loss == "wgan-gp" else torch.sigmoid
    with torch.no_grad():
        real_out = gan.discriminator(real, *y)
    d_real, d_fake = squash(real_out).mean().item(), squash(fake_out).mean().item()
    return {"loss": d_loss.item(), "d_loss": d_loss.item(), "g_loss": g_loss.item(),
            "d_real": d_real, "d_fake": d_fake}  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        {"num_classes": 10},  # conditional digits, non-saturating
        {"data_shape": (2,), "loss": "wgan-gp", "critic_steps": 2},
        {"data_shape": (2,), "loss": "minimax"},
    ],
    ids=["cond", "wgan-gp", "minimax"],
)
def test_train_step_is_one_round_of_the_game(config):
    gan, twin = _gan(**config), _gan(**config)
    x = torch.randint(0, 17, (6, 1, 8, 8)) if "data_shape" not in config else torch.randn(6, 2)
    batch = (x, torch.arange(6) % 10) if config.get("num_classes") else (x,)
    opts = {
        "generator": torch.optim.SGD(gan.generator.parameters(), lr=0.1),
        "discriminator": torch.optim.SGD(gan.discriminator.parameters(), lr=0.1),
    }
    torch.manual_seed(5)
    logs = gan.train_step(batch, opts)
    torch.manual_seed(5)
    expected = _replay_train_step(twin, batch, lr=0.1)
    assert logs == pytest.approx(expected, rel=1e-5)
    for (name, p), q in zip(gan.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
