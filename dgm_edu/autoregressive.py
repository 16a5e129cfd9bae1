"""Autoregressive models: exact likelihood through the chain rule.

Any distribution over D ordered variables factorises exactly as

    p(x) = Π_{i=1}^{D} p(x_i | x_<i),

so a network that outputs the conditional of variable i from the variables before it gives an
exact, normalised log p(x) = Σ_i log p(x_i | x_<i). The network must be *causal*:
output i may not see input i or anything after it. This module enforces that with masks.

Images (raster order, 17-way categorical per pixel):

- :class:`MaskedConv2d`: a convolution whose kernel is multiplied by a fixed mask (a buffer).
  Type A hides the centre pixel (first layer), type B shows it (later layers).
- :class:`PixelCNN`: a type-A conv and residual type-B convs (van den Oord et al., 2016a). Its
  receptive field has a *blind spot* to the upper right.
- :class:`GatedPixelCNN`: vertical and horizontal stacks with gated activations (van den Oord et
  al., 2016b); no blind spot. Both take optional class conditioning.

Text (characters of a name, one by one):

- :class:`CharRNN` (GRU) and :class:`CharTransformer` (causal self-attention) behind one face,
  :class:`CharModel`: ``loss(ids)``, ``log_prob(ids)``, ``sample(n, *, temperature)``.
- :func:`split_sample`, :func:`well_formed` and :func:`nll_per_char`: the text models judged as
  generators (chapter 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgm_edu import checks
from dgm_edu.data import LEVELS, NUM_CLASSES, digits_loader, make_loader, to_signed, validate_digits
from dgm_edu.densities import logmeanexp
from dgm_edu.runtime import budget, module_device, seed_everything
from dgm_edu.train import History, fit


# =========================================================================== masked convolutions
def causal_mask(kernel: tuple[int, int], mask_type: str) -> torch.Tensor:
    """The ``(kh, kw)`` 0/1 mask of a raster-order causal kernel centred on the output pixel.

    Rows below the centre are hidden; on the centre row, columns right of the centre are hidden,
    and the centre itself too for type ``"A"``. A ``(1, kw)`` kernel gives the horizontal stack's
    mask; a ``(kh, kw)`` kernel with ``"V"`` (vertical) keeps the centre row whole and ``"VA"``
    hides it.
    """
    kh, kw = kernel
    cy, cx = kh // 2, kw // 2
    mask = torch.ones(kh, kw)
    mask[cy + 1 :, :] = 0  # rows below: the future
    if mask_type == "A":
        mask[cy, cx:] = 0  # the centre pixel and everything to its right
    elif mask_type == "B":
        mask[cy, cx + 1 :] = 0  # everything right of the centre
    elif mask_type == "VA":
        mask[cy, :] = 0  # vertical stack, first layer: strictly the rows above
    elif mask_type != "V":
        raise ValueError(f"Unknown mask_type {mask_type!r}: expected 'A', 'B', 'V' or 'VA'")
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is ``weight * mask`` (the mask is a buffer)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], mask_type: str
    ) -> None:
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        super().__init__(c_in, c_out, kernel)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kernel, mask_type)[None, None])  # (1,1,kh,kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        # masked weight: the hidden taps contribute exactly zero, to the output and the gradient;
        # the rows below the centre are all hidden, so we drop them and pad only above
        weight = (self.weight * self.mask)[:, :, : kh // 2 + 1]  # (C_out, C_in, kh//2+1, kw)
        x = F.pad(x, (kw // 2, kw // 2, kh // 2, 0))  # 'same' output size
        return F.conv2d(x, weight, self.bias)


# =========================================================================== image models
@dataclass
class PixelCNNConfig:
    height: int = 8
    width: int = 8
    levels: int = LEVELS  # categories per pixel (17 grey levels for the digits)
    channels: int = 64
    num_layers: int = 6  # residual (PixelCNN) or gated (GatedPixelCNN) layers
    kernel_size: int = 3  # of the later layers
    input_kernel_size: int = 0  # the PixelCNN's type-A first layer; 0 means 2 * kernel_size + 1
    num_classes: int = 0  # > 0: class-conditional p(x | y)
    dropout: float = 0.0


class _PixelModel(nn.Module):
    """The shared face: preprocessing, exact log_prob, loss, sequential sampling and completion.

    Subclasses define ``forward(h, y) -> logits`` with ``h`` the float image ``(N, 1, H, W)``
    and logits ``(N, L, H, W)``, where logits at pixel i may depend only on pixels before i.
    Images enter as integer levels 0..L−1 of the configured size (``validate_digits`` with the
    config's shape and levels, so a 28x28 MNIST config takes MNIST levels). Labels: an
    unconditional model refuses ``y``; a conditional one takes classes in [0, num_classes).
    ``loss`` has no side effects in either mode (dropout aside).
    """

    def __init__(self, config: PixelCNNConfig, cond_channels: int) -> None:
        super().__init__()
        self.config = config
        if config.num_classes > 0:  # one learned bias per class, added in every layer
            self.class_embedding = nn.Embedding(config.num_classes, cond_channels)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config  # int64 levels 0..L-1 of shape (N, 1, H, W), or a clear error
        return validate_digits(x, (1, c.height, c.width), c.levels)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels -> floats in [-1, 1]: ``(N, 1, H, W)``."""
        return to_signed(x, self.config.levels)

    def _cond(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if self.config.num_classes == 0:
            return None
        if y is None:
            raise ValueError("This model is class-conditional: pass labels y of shape (N,)")
        return self.class_embedding(y.view(n))[:, :, None, None]  # (N, C_cond, 1, 1)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Exact log p(x) = Σ_i log p(x_i | x_<i) in nats: ``(N,)``; keeps gradients.

        A conditional model with ``y=None`` returns the exact marginal
        log Σ_y p(y) p(x | y) with a uniform p(y) (K forward passes).
        """
        x = self._check(x)  # int64 levels
        k = self.config.num_classes
        y = checks.labels(y, len(x), k, x.device)
        if k > 0 and y is None:
            ys = torch.arange(k, device=x.device)
            per_class = [self.log_prob(x, ys[j].expand(len(x))) for j in range(k)]  # k x (N,)
            return logmeanexp(torch.stack(per_class, 1), dim=1)  # log (1/K) Σ_y p(x | y)
        logits = self(self.preprocess(x), y).float()  # (N, L, H, W)
        # log p(x_i | x_<i) for every pixel, summed over the pixels of each image
        return -F.cross_entropy(logits, x[:, 0], reduction="none").flatten(1).sum(1)

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """Negative log-likelihood, nats per image, averaged over the batch."""
        if self.config.num_classes > 0 and y is None:
            raise ValueError("y is required: train a class-conditional model on (x, y) batches")
        return -self.log_prob(x, y).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        return_path: bool = False,
        every: int = 1,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(n, 1, H, W)`` int64 images pixel by pixel (H*W forward passes).

        ``temperature`` (finite, > 0) divides the logits: < 1 sharpens every conditional, > 1
        flattens it. A conditional model given ``y=None`` samples p(x) with the classes
        stratified, 0, 1, ..., K−1 in turn. ``return_path=True`` also returns the drawing as it
        happens, one frame every ``every`` pixels, as :meth:`complete` does with ``given=0``.
        """
        c = self.config
        n, temperature = checks.count(n), checks.temperature(temperature)
        every = checks.integer(every, "every", low=1)
        device = module_device(self)
        y = checks.labels(y, n, c.num_classes, device, stratify=True)
        x = torch.zeros(n, 1, c.height, c.width, dtype=torch.long, device=device)
        return self._draw(x, 0, y, temperature, return_path, every)

    @torch.no_grad()
    def complete(
        self,
        x: torch.Tensor,
        given: int,
        *,
        y: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        return_path: bool = False,
        every: int = 1,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Keep the first ``given`` pixels of the images ``x`` in raster order and draw the rest
        pixel by pixel: ``(N, 1, H, W)`` int64 (``x`` itself is left unchanged).

        The known pixels are a prefix of the order, so the drawn ones follow the model's exact
        p(x_≥given | x_<given): ``given = H * W // 2`` (H even) draws the bottom half given the
        top half. A conditional model needs ``y``. With ``return_path=True`` the result is
        ``(images, path)``, ``path`` a float ``(F, N, 1, H, W)``: the images before any pixel is
        drawn, after every ``every`` drawn pixels, and at the end, NaN at the pixels not drawn
        yet (``dgm_edu.plots`` shows NaN blank). Frame k has the first
        ``min(given + k * every, H * W)`` pixels filled; the last frame is the result.
        """
        c = self.config
        temperature = checks.temperature(temperature)
        every = checks.integer(every, "every", low=1)
        given = checks.integer(given, "given", low=0, high=c.height * c.width)
        device = module_device(self)
        x = self._check(x).to(device).clone()  # (N, 1, H, W) int64, a copy drawn into
        y = checks.labels(y, len(x), c.num_classes, device)
        if c.num_classes > 0 and y is None:
            raise ValueError("This model is class-conditional: pass labels y of shape (N,)")
        return self._draw(x, given, y, temperature, return_path, every)

    def _draw(
        self,
        x: torch.Tensor,
        given: int,
        y: torch.Tensor | None,
        temperature: float,
        return_path: bool,
        every: int,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw pixels ``given``, ..., H*W − 1 of ``x`` in place, in raster order (checked args)."""
        c = self.config
        size = c.height * c.width
        order = torch.arange(size, device=x.device).view(1, 1, c.height, c.width)  # raster index
        path = []

        def snapshot(known: int) -> None:  # the first `known` pixels filled, NaN after them
            if return_path:
                path.append(x.float().masked_fill(order >= known, float("nan")))

        snapshot(given)
        for i in range(given, size):
            r, col = divmod(i, c.width)
            logits = self(self.preprocess(x), y)[:, :, r, col].float()  # (N, L)
            probs = torch.softmax(logits / temperature, dim=-1)
            x[:, 0, r, col] = torch.multinomial(probs, 1).squeeze(1)
            if (i + 1 - given) % every == 0 or i + 1 == size:
                snapshot(i + 1)
        x = checks.levels_out(x, c.levels)
        return (x, torch.stack(path)) if return_path else x


def output_head(c: PixelCNNConfig, act: type[nn.Module]) -> nn.Sequential:
    """Two 1x1 convs from the features to the logits of the ``levels`` values of each pixel."""
    return nn.Sequential(
        act(), nn.Conv2d(c.channels, c.channels, 1), act(), nn.Conv2d(c.channels, c.levels, 1)
    )


class PixelCNN(_PixelModel):
    """Type-A masked conv, residual type-B convs, then a 1x1 head to L logits per pixel."""

    def __init__(self, config: PixelCNNConfig | None = None) -> None:
        c = config or PixelCNNConfig()
        super().__init__(c, cond_channels=c.channels)
        k_in = c.input_kernel_size or 2 * c.kernel_size + 1  # 7x7 for k = 3, as in the paper
        self.input = MaskedConv2d(1, c.channels, k_in, "A")
        self.layers = nn.ModuleList(
            MaskedConv2d(c.channels, c.channels, c.kernel_size, "B") for _ in range(c.num_layers)
        )
        self.dropout = nn.Dropout(c.dropout)
        self.head = output_head(c, nn.ReLU)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(h)  # (N, C, H, W): pixel i sees only pixels < i
        cond = self._cond(y, len(h))
        for conv in self.layers:
            out = conv(self.dropout(F.relu(h)))
            h = h + (out if cond is None else out + cond)  # residual: stays causal
        return self.head(h)  # (N, L, H, W)


class GatedLayer(nn.Module):
    """One gated layer: tanh(W_f ∗ h) ⊙ σ(W_g ∗ h) on both stacks.

    The vertical stack sees the rows above (a (k//2+1) x k window); the horizontal stack sees
    the pixels to the left on the current row and receives the vertical stack through a 1x1 conv.
    """

    def __init__(self, c: PixelCNNConfig, first: bool = False) -> None:
        super().__init__()
        k, ch, c_in = c.kernel_size, c.channels, 1 if first else c.channels
        self.first = first
        self.v_conv = MaskedConv2d(c_in, 2 * ch, (k, k), "VA" if first else "V")
        self.h_conv = MaskedConv2d(c_in, 2 * ch, (1, k), "A" if first else "B")
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = nn.Conv2d(ch, ch, 1)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v_feat = self.v_conv(v)  # (N, 2C, H, W): rows strictly above the output pixel
        h_feat = self.h_conv(h) + self.v_to_h(v_feat)  # + the current row, to the left
        if cond is not None:
            v_feat, h_feat = v_feat + cond, h_feat + cond  # (N, 2C, 1, 1) class bias
        v_f, v_g = v_feat.chunk(2, 1)
        h_f, h_g = h_feat.chunk(2, 1)
        v = torch.tanh(v_f) * torch.sigmoid(v_g)  # gated activation
        gated = self.h_out(self.dropout(torch.tanh(h_f) * torch.sigmoid(h_g)))
        return v, gated if self.first else h + gated  # residual on the horizontal stack


class GatedPixelCNN(_PixelModel):
    """Vertical + horizontal stacks (no blind spot), gated units, optional class conditioning."""

    def __init__(self, config: PixelCNNConfig | None = None) -> None:
        c = config or PixelCNNConfig()
        super().__init__(c, cond_channels=2 * c.channels)  # a bias for both the tanh and the gate
        self.layers = nn.ModuleList(GatedLayer(c, first=i == 0) for i in range(c.num_layers))
        self.head = output_head(c, nn.ELU)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cond = self._cond(y, len(h))
        v = h  # the first layer's masks (VA, A) hide the current pixel from both stacks
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h)  # (N, L, H, W)


def receptive_field(
    model: _PixelModel, row: int, col: int, y: torch.Tensor | None = None
) -> torch.Tensor:
    """``(H, W)`` bool map of the input pixels that pixel (row, col)'s logits depend on.

    Measured, not derived: the gradient of the logits with respect to a random input image.
    """
    c = model.config
    x = torch.randn(2, 1, c.height, c.width, device=module_device(model))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, y)[:, :, row, col].sum(), x)
    return grad.abs().sum((0, 1)) > 0


REFERENCE_BATCH_SIZE = 32  # the recipe's training batches: 32 steps per epoch of 1000 images


def reference_ema() -> float:
    """The recipe's Polyak decay d: 0.995 in full mode (a time constant of 200 steps, about six
    epochs of 32 batches), 0.9 in fast mode (whose 4 epochs are 128 steps in all)."""
    return budget(fast=0.9, full=0.995)


def train_reference(
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    conditional: bool = False,
) -> tuple[GatedPixelCNN, History]:
    """The book's recipe: a gated PixelCNN on the digits, AdamW with a cosine learning-rate
    decay, dropout, and early stopping on the validation NLL of an exponential moving average
    of the weights (Polyak averaging with decay :func:`reference_ema`), which is also the model
    returned.

    ``conditional=True`` trains p(x | y) on (image, label) batches instead.
    """
    seed_everything(seed)
    config = budget(
        fast=PixelCNNConfig(channels=32, num_layers=4, kernel_size=3),
        full=PixelCNNConfig(channels=64, num_layers=8, kernel_size=3, dropout=0.3),
    )
    config.num_classes = NUM_CLASSES if conditional else 0
    model = GatedPixelCNN(config)
    epochs = budget(fast=4, full=30)
    opt = torch.optim.AdamW(model.parameters(), lr=budget(fast=3e-3, full=2e-3), weight_decay=1e-2)
    history = fit(
        model,
        opt,
        digits_loader("train", batch_size=REFERENCE_BATCH_SIZE, labels=conditional),
        digits_loader("val", batch_size=350, labels=conditional),
        epochs=epochs,
        patience=budget(fast=None, full=6),
        grad_clip=1.0,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        ema=reference_ema(),  # θ̄ ← d θ̄ + (1 − d) θ after every step
        checkpoint=checkpoint,
        progress=progress,
        seed=seed,
        desc="gated-pixelcnn",
    )
    return model, history


# =========================================================================== text
def load_names(name: str = "names") -> list[str]:
    """The words of ``dgm_edu/assets/<name>.txt`` (one a line; '#' lines are comments)."""
    text = resources.files("dgm_edu").joinpath("assets", f"{name}.txt").read_text("utf-8")
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


class Vocab:
    """Characters <-> ids; id 0 is '.', which both starts and ends every word."""

    def __init__(self, words: list[str]) -> None:
        self.chars = ["."] + sorted(set("".join(words)))
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, words: list[str], length: int) -> torch.Tensor:
        """``(N, length + 1)`` ids: '.', the word, '.', then -1 padding (ignored by the loss)."""
        out = torch.full((len(words), length + 1), -1, dtype=torch.long)
        for n, w in enumerate(words):
            ids = [0] + [self.index[ch] for ch in w] + [0]
            out[n, : len(ids)] = torch.tensor(ids[: length + 1])
        return out

    def decode(self, ids: torch.Tensor) -> str:
        """A sampled row ('.', c_1, c_2, ...) -> the word up to its end token."""
        return "".join(self.chars[i] for i in ids[1:].tolist()).split(".")[0]


@dataclass
class CharConfig:
    vocab_size: int = 27
    max_len: int = 16  # longest sequence (characters + the end token)
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4  # Transformer only
    dropout: float = 0.0


class CharModel(nn.Module):
    """The face shared by the text models: ``forward(inp) -> logits`` is all a subclass adds.

    A batch is ``(N, T + 1)`` ids; inputs are ``ids[:, :-1]`` and targets ``ids[:, 1:]``, so
    the logits at step t predict character t + 1 from characters 0..t (causal by construction).
    The models are unconditional; ``loss`` has no side effects in either mode (dropout aside).
    """

    config: CharConfig

    def _check(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``(N, T + 1)`` of an integer dtype, each in [0, V) or the padding −1; T + 1 ≥ 2."""
        v = self.config.vocab_size
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
            what = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"ids must be an integer tensor of character ids, got {what}")
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
            raise ValueError(
                f"ids must have shape (N, T + 1) with N >= 1, T >= 1, got {tuple(ids.shape)}"
            )
        if ids.device.type != "meta" and (ids.min() < -1 or ids.max() >= v):
            raise ValueError(
                f"ids must lie in [0, {v}) or be the padding -1, got values in "
                f"[{ids.min().item()}, {ids.max().item()}]"
            )
        return ids.long()

    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        """Exact log p(word) = Σ_t log p(c_{t+1} | c_≤t): ``(N,)``; keeps gradients."""
        ids = self._check(ids)
        inp, target = ids[:, :-1].clamp(min=0), ids[:, 1:]  # padding (-1) is fed as '.' ...
        logits = self(inp).float()  # (N, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-1, reduction="none")
        return -nll.sum(1)  # ... and ignored in the targets

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood, nats per word, averaged over the batch."""
        return -self.log_prob(ids).mean()

    @torch.no_grad()
    def sample(
        self, n: int, *, y: torch.Tensor | int | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """``(n, max_len + 1)`` ids, starting with '.', one character at a time; ``temperature``
        (finite, > 0) divides the logits. The model is unconditional: a ``y`` is refused."""
        n, temperature = checks.count(n), checks.temperature(temperature)
        checks.labels(y, n, 0)
        ids = torch.zeros(n, 1, dtype=torch.long, device=module_device(self))
        for _ in range(self.config.max_len):
            logits = self(ids)[:, -1].float() / temperature  # (n, V): the next character
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1)], 1)
        return ids


class CharRNN(CharModel):
    """Embedding -> GRU -> linear: the state h_t summarises c_0..c_t."""

    def __init__(self, config: CharConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CharConfig()
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.rnn = nn.GRU(c.dim, c.dim, c.num_layers, batch_first=True, dropout=c.dropout)
        self.head = nn.Linear(c.dim, c.vocab_size)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(inp))  # (N, T, D)
        return self.head(out)  # (N, T, V)


class CharTransformer(CharModel):
    """A small GPT: token + position embeddings, causal self-attention blocks, linear head."""

    def __init__(self, config: CharConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CharConfig()
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos = nn.Parameter(0.02 * torch.randn(c.max_len, c.dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.dim, c.num_heads, 4 * c.dim, c.dropout, batch_first=True, norm_first=True
            )
            for _ in range(c.num_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size)
        # the causal mask: -inf above the diagonal, so step t attends to steps <= t only
        causal = torch.full((c.max_len, c.max_len), float("-inf")).triu(1)
        self.register_buffer("causal", causal)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        t = inp.shape[1]
        h = self.embed(inp) + self.pos[:t]  # (N, T, D)
        for block in self.blocks:
            h = block(h, src_mask=self.causal[:t, :t])
        return self.head(self.norm(h))  # (N, T, V)


def train_char_model(
    kind: str,
    words: list[str],
    vocab: Vocab,
    *,
    epochs: int,
    seed: int = 0,
    progress: bool = True,
    val_words: list[str] | None = None,
    checkpoint: str | Path | None = None,
) -> tuple[CharModel, History]:
    """Train a ``"rnn"`` or ``"transformer"`` character model on ``words`` with the shared loop."""
    seed_everything(seed)
    max_len = max(len(w) for w in words + (val_words or [])) + 1
    config = CharConfig(vocab_size=len(vocab), max_len=max_len)
    model = {"rnn": CharRNN, "transformer": CharTransformer}[kind](config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    val = None
    if val_words:
        val = make_loader(vocab.encode(val_words, max_len), batch_size=512, shuffle=False)
    history = fit(
        model,
        opt,
        make_loader(vocab.encode(words, max_len), batch_size=64),
        val,
        epochs=epochs,
        grad_clip=1.0,
        seed=seed,
        checkpoint=checkpoint,
        progress=progress,
        desc=kind,
    )
    return model, history


# =========================================================================== text: evaluation
def split_sample(ids: torch.Tensor, vocab: Vocab) -> tuple[str, bool]:
    """One sampled row ``(T + 1,)`` ('.', c_1, c_2, ...) -> ``(word, ended)``.

    ``ended`` is True when the model emitted the end token '.' within the row, i.e. within the
    length limit; the word is the characters before it (all of them when it never ended).
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or len(ids) < 1:
        raise ValueError("ids must be one sampled row of shape (T + 1,) starting with '.'")
    chars = [vocab.chars[i] for i in ids[1:].tolist()]
    ended = "." in chars
    return "".join(chars[: chars.index(".")] if ended else chars), ended


def well_formed(word: str, ended: bool = True) -> bool:
    """The book's rule for a usable generated name, kept deliberately simple:

    it ended (the end token came within the length limit), it has at least 2 characters, all
    letters, and no letter three times in a row (``"aaa"``: the garbage that high temperatures
    produce). Every one of the 3000 names of the corpus passes it.
    """
    if not isinstance(word, str):
        raise TypeError(f"word must be a str, got {type(word).__name__}")
    triple = any(a == b == c for a, b, c in zip(word, word[1:], word[2:]))
    return bool(ended) and len(word) >= 2 and word.isalpha() and not triple


@torch.no_grad()
def nll_per_char(model: CharModel, vocab: Vocab, words: list[str]) -> float:
    """Nats per character of ``words`` under ``model``, the end token counted as a character:

        Σ_w −log p(w) / Σ_w (len(w) + 1);

    its exponential is the per-character perplexity.
    """
    if not words:
        raise ValueError("nll_per_char needs at least one word")
    ids = vocab.encode(words, model.config.max_len)  # (N, max_len + 1)
    return -model.log_prob(ids.to(module_device(model))).sum().item() / sum(
        len(w) + 1 for w in words
    )
