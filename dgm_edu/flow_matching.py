"""Flow matching (chapter 7): a velocity field that carries noise to data along straight paths.

The conditional optimal-transport path (Lipman et al. 2023; Liu et al. 2023) between noise
x_0 ~ N(0, I) and a data point x_1 is

    x_t = (1 − (1 − σ_min) t) x_0 + t x_1,    with velocity u = dx_t/dt = x_1 − (1 − σ_min) x_0.

A network v(x_t, t) regresses u (:meth:`FlowMatching.loss`); sampling integrates dx/dt = v from
t = 0 to 1 with Euler steps (:meth:`FlowMatching.sample`). The model shares the networks, the data
space, the labels and classifier-free guidance with :class:`dgm_edu.diffusion.Diffusion` through
their common base :class:`dgm_edu.diffusion.Denoiser`; ``dgm_edu.diffusion.train_toy`` trains it
on the 2D toys.
"""

from __future__ import annotations

import torch

from dgm_edu import checks
from dgm_edu.diffusion import Denoiser, DiffusionConfig, Samples


class FlowMatching(Denoiser):
    """Flow matching on the conditional OT path (the module doc): ``loss`` regresses the path's
    velocity u = x_1 − (1 − σ_min) x_0, ``sample`` integrates dx/dt = v(x, t) from noise."""

    def __init__(self, config: DiffusionConfig | None = None, sigma_min: float = 1e-3) -> None:
        c = config or DiffusionConfig()
        if c.head != "eps":
            raise ValueError(
                f"FlowMatching regresses a velocity: head must be 'eps', got {c.head!r}"
            )
        super().__init__(c, 1)
        if not 0 <= checks.real(sigma_min, "sigma_min") < 1:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def loss(self, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """E_{t ~ U[0, 1]} ‖v(x_t, t) − u‖², summed over coordinates, mean over the batch.

        Train mode: each label is replaced by the null label with probability ``p_uncond`` (the
        only side effect); eval mode: the validation objective, ``y=None`` the unconditional one.
        """
        x1 = self._encode(x)
        y = self._labels(y, len(x1))
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        tb = t.view(-1, *([1] * len(self.shape)))
        xt = (1 - (1 - self.sigma_min) * tb) * x0 + tb * x1
        u = x1 - (1 - self.sigma_min) * x0
        return (self.net(xt, t, self._drop_labels(y)).float() - u).pow(2).flatten(1).sum(1).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: torch.Tensor | int | None = None,
        steps: int = 50,
        guidance: float = 1.0,
        return_path: bool = False,
        x_0: torch.Tensor | None = None,
    ) -> Samples:
        """Euler steps x ← x + v(x, t) dt from t = 0 (noise) to t = 1 (data); ``steps`` ≥ 1.

        Guidance w: v = v_u + w (v_c − v_u), with v_u the velocity under the null label.
        """
        n, steps = checks.count(n), checks.steps(steps)
        y = self._labels(y, n, sampling=True)
        guidance = self._guidance(guidance, y)
        x = self._noise(n, x_0, "x_0")
        path = [x]
        for i in range(steps):
            t = torch.full((n,), i / steps, device=x.device)
            v = self.net(x, t, y).float()
            if y is not None and guidance != 1.0:
                v_u = self.net(x, t, None).float()
                v = v_u + guidance * (v - v_u)
            x = x + v / steps
            path.append(x)
        out = self._decode(x)
        return (out, torch.stack(path)) if return_path else out
