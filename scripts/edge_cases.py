# ruff: noqa: E402, E501, E702
"""How the library answers wrong or edge-case inputs: issue 24's reproductions, one line each.

    python scripts/edge_cases.py                       # this checkout
    PYTHONPATH=/path/to/other/checkout python scripts/edge_cases.py   # another version

Each line is ``input | answer``: the exception and its message, or ``SILENT: what it returned``
(a correct result, or a silent wrong one). The answers of this version are asserted, message by
message, in the test suite; this script is for comparing versions side by side.
"""

import os
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("DGM_EDU_MODE", "fast")
import torch

torch.manual_seed(0)
from dgm_edu import metrics, train
from dgm_edu.data import load_digits, make_loader
from dgm_edu.diffusion import Diffusion, DiffusionConfig

try:
    from dgm_edu.flow_matching import FlowMatching
except ImportError:
    from dgm_edu.diffusion import FlowMatching
try:
    from dgm_edu.digit_flow import DigitFlow
except ImportError:
    from dgm_edu.flows import DigitFlow
from dgm_edu.autoregressive import PixelCNN, PixelCNNConfig
from dgm_edu.gan import GAN, GANConfig
from dgm_edu.mixtures import PixelMixture
from dgm_edu.rbm import RBM
from dgm_edu.vae import VAE, VAEConfig

x, y = load_digits("val")
x = x[:8]
y = y[:8]


def run(name, f):
    try:
        out = f()
    except Exception as e:  # noqa
        msg = str(e).splitlines()[0][:110] if str(e) else ""
        print(f"{name} | {type(e).__name__}: {msg}")
        return
    desc = out
    if isinstance(out, torch.Tensor):
        bad = out.is_floating_point() and not torch.isfinite(out).all()
        desc = f"returns {tuple(out.shape)} {out.dtype}" + (" NON-FINITE" if bad else "")
        if out.dtype == torch.long and out.numel():
            desc += f" range [{out.min().item()}, {out.max().item()}]"
    print(f"{name} | SILENT: {str(desc)[:100]}")


def fit_with(**kw):
    m = PixelMixture()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    dl = make_loader(x, batch_size=4)
    before = float(m.loss(x))
    h = train.fit(m, opt, dl, progress=False, **kw)
    return f"loss {before:.1f} -> {float(m.loss(x)):.1f}, epochs run {len(h.train_loss)}"


cases = [
    ("fit grad_clip=-1", lambda: fit_with(epochs=3, grad_clip=-1.0)),
    ("fit grad_clip=0", lambda: fit_with(epochs=3, grad_clip=0.0)),
    ("fit patience=0", lambda: fit_with(epochs=3, patience=0)),
    ("fit epochs=2.5", lambda: fit_with(epochs=2.5)),
    ("ddim steps=100 > T=50", lambda: Diffusion(DiffusionConfig(T=50)).ddim_sample(4, steps=100)),
    ("ddim steps=0", lambda: Diffusion(DiffusionConfig(T=50)).ddim_sample(4, steps=0)),
    ("FlowMatching steps=-1", lambda: FlowMatching().sample(2, steps=-1)),
    ("DigitFlow temperature=nan", lambda: DigitFlow().sample(3, temperature=float("nan"))),
    ("DigitFlow temperature=-1", lambda: DigitFlow().sample(3, temperature=-1.0)),
    ("PixelCNN temperature=-1", lambda: PixelCNN().sample(2, temperature=-1.0)),
    ("PixelCNN temperature=0", lambda: PixelCNN().sample(2, temperature=0.0)),
    ("RBM sample steps=0", lambda: RBM().sample(2, steps=0)),
    (
        "Diffusion label 10",
        lambda: Diffusion(DiffusionConfig(T=50, num_classes=10)).loss(x, torch.full((8,), 10)),
    ),
    (
        "VAE float label 3.7",
        lambda: VAE(VAEConfig(num_classes=10)).sample(2, y=torch.tensor([3.7, 3.7])),
    ),
    ("PixelCNN labels to unconditional", lambda: PixelCNN().log_prob(x, y)),
    ("Diffusion labels to unconditional", lambda: Diffusion(DiffusionConfig(T=50)).loss(x, y)),
    (
        "memorisation on [0,1] floats",
        lambda: metrics.memorisation(x.float() / 16, x.float() / 16, x.float() / 16),
    ),
    ("PixelMixture.loss on uint8 digits", lambda: PixelMixture().loss(x.to(torch.uint8))),
    ("VAE.loss on int32 digits", lambda: VAE().loss(x.int())),
    ("out-of-range label (VAE)", lambda: VAE(VAEConfig(num_classes=10)).sample(2, y=12)),
    ("cond. GAN loss without labels", lambda: GAN(GANConfig(num_classes=10)).loss(x)),
    ("VAE sample(0)", lambda: VAE().sample(0)),
    ("mixture sample(0)", lambda: PixelMixture().sample(0)),
    ("sample(-1)", lambda: VAE().sample(-1)),
    ("sample(2.0)", lambda: VAE().sample(2.0)),
    ("sample('3')", lambda: VAE().sample("3")),
    ("GAN sample(4, y=3)", lambda: GAN(GANConfig(num_classes=10)).sample(4, y=3)),
    ("evaluate_nll on empty", lambda: metrics.evaluate_nll(PixelMixture(), x[:0])),
    ("class_histogram on empty", lambda: metrics.class_histogram(x[:0])),
    (
        "GAN given one optimizer",
        lambda: train.fit(
            GAN(), torch.optim.Adam(GAN().parameters()), make_loader(x), epochs=1, progress=False
        ),
    ),
    (
        "dict batches",
        lambda: train.fit(
            PixelMixture(),
            torch.optim.Adam(PixelMixture().parameters()),
            [{"x": x}],
            epochs=1,
            progress=False,
        ),
    ),
    ("28x28 GAN config", lambda: GAN(GANConfig(data_shape=(1, 28, 28))).sample(2)),
    (
        "28x28 PixelCNN on [0,1] floats",
        lambda: PixelCNN(PixelCNNConfig(height=28, width=28)).log_prob(torch.rand(2, 1, 28, 28)),
    ),
]


def ck_cases():
    d = Path(tempfile.mkdtemp())

    def ck_json():
        p = d / "run.json"
        fit_with(epochs=1, checkpoint=p)
        return fit_with(epochs=2, checkpoint=p)

    def ck_dir():
        (d / "adir").mkdir()
        return fit_with(epochs=1, checkpoint=d / "adir")

    def ck_nodigest():
        p = d / "a.pt"
        fit_with(epochs=1, checkpoint=p)
        s = torch.load(p, weights_only=True)
        s.pop("sha256", None)
        torch.save(s, p)
        return fit_with(epochs=2, checkpoint=p)

    def ck_tensor():
        p = d / "t.pt"
        torch.save(torch.zeros(3), p)
        return fit_with(epochs=1, checkpoint=p)

    def ck_config():
        p = d / "c.pt"
        m = Diffusion(DiffusionConfig(T=20, schedule="linear", channels=8))
        train.fit(
            m,
            torch.optim.Adam(m.parameters()),
            make_loader(x),
            epochs=1,
            checkpoint=p,
            progress=False,
        )
        m2 = Diffusion(DiffusionConfig(T=20, schedule="cosine", channels=8))
        train.fit(
            m2,
            torch.optim.Adam(m2.parameters()),
            make_loader(x),
            epochs=2,
            checkpoint=p,
            progress=False,
        )
        return f"resumed; config.schedule={m2.config.schedule}"

    def ck_wd():
        p = d / "w.pt"
        m = PixelMixture()
        train.fit(
            m,
            torch.optim.AdamW(m.parameters(), weight_decay=0.0),
            make_loader(x),
            epochs=1,
            checkpoint=p,
            progress=False,
        )
        m = PixelMixture()
        train.fit(
            m,
            torch.optim.AdamW(m.parameters(), weight_decay=0.5),
            make_loader(x),
            epochs=2,
            checkpoint=p,
            progress=False,
        )
        return "resumed with another weight decay"

    def ck_readonly():
        r = d / "ro"
        r.mkdir()
        r.chmod(0o500)
        try:
            return fit_with(epochs=1, checkpoint=r / "x.pt")
        finally:
            r.chmod(0o700)

    return [
        ("checkpoint='run.json'", ck_json),
        ("checkpoint path is a directory", ck_dir),
        ("checkpoint without digest", ck_nodigest),
        ("checkpoint holding a bare tensor", ck_tensor),
        ("resume with another config", ck_config),
        ("resume with another weight decay", ck_wd),
        ("read-only checkpoint directory", ck_readonly),
    ]


for name, f in cases + ck_cases():
    run(name, f)
