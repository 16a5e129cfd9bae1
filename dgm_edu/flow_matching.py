"""Flow matching (chapter 7): a velocity field that carries noise to data along straight paths.

The clock runs from noise (t = 0) to data (t = 1). The conditional optimal-transport path (Lipman
et al. 2023; Liu et al. 2023) between noise eps ~ N(0, I) and a data point x is

    z_t = (1 − (1 − σ_min) t) eps + t x,   velocity u_t(z_t | x) = dz_t/dt = x − (1 − σ_min) eps.

A network u_θ(z_t, t) regresses that per-pair velocity (:meth:`FlowMatching.loss`); by the flow
matching theorem (Lipman et al. 2023) this loss differs from the regression on the marginal field
u_t(z) = E[u_t(z_t | x) | z_t = z] by a constant, so its minimiser is the marginal field. Sampling
integrates dz/dt = u_θ(z, t) from z_0 ~ N(0, I) at t = 0 to t = 1 with Euler steps
(:meth:`FlowMatching.sample`). The model shares the networks, the data
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
    velocity u = x − (1 − σ_min) eps, ``sample`` integrates dz/dt = u_θ(z, t) from noise."""

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
        """E_{t ~ U[0, 1]} ‖u_θ(z_t, t) − u_t(z_t | x)‖², summed over coordinates, mean over the
        batch.

        Train mode: each label is replaced by the null label with probability ``p_uncond`` (the
        only side effect); eval mode: the validation objective, ``y=None`` the unconditional one.
        """
        x = self._encode(x)  # data, at t = 1
        y = self._labels(y, len(x))
        eps = torch.randn_like(x)  # noise, at t = 0
        t = torch.rand(len(x), device=x.device)
        tb = t.view(-1, *([1] * len(self.shape)))
        zt = (1 - (1 - self.sigma_min) * tb) * eps + tb * x  # z_t on the straight path
        u = x - (1 - self.sigma_min) * eps  # its velocity dz_t/dt
        return (self.net(zt, t, self._drop_labels(y)).float() - u).pow(2).flatten(1).sum(1).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: torch.Tensor | int | None = None,
        steps: int = 50,
        guidance: float = 1.0,
        return_path: bool = False,
        z_0: torch.Tensor | None = None,
    ) -> Samples:
        """Euler steps z ← z + u_θ(z, t) dt from t = 0 (noise ``z_0``, drawn from N(0, I) unless
        given) to t = 1 (data); ``steps`` ≥ 1.

        Guidance ω: u = u_u + ω (u_c − u_u), with u_u the velocity under the null label (Ho &
        Salimans write 1 + w for ω: ω = 1 is the plain conditional model).
        """
        n, steps = checks.count(n), checks.steps(steps)
        y = self._labels(y, n, sampling=True)
        guidance = self._guidance(guidance, y)
        z = self._noise(n, z_0, "z_0")  # (n, *shape): z at t = 0
        path = [z]
        for i in range(steps):
            t = torch.full((n,), i / steps, device=z.device)
            u = self.net(z, t, y).float()
            if y is not None and guidance != 1.0:
                u_u = self.net(z, t, None).float()
                u = u_u + guidance * (u - u_u)
            z = z + u / steps  # Euler: z_{t + dt} = z_t + u_θ(z_t, t) dt
            path.append(z)
        out = self._decode(z)
        return (out, torch.stack(path)) if return_path else out
