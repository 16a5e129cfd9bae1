"""Chapter 07's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # 0-dim tensors, from the minimum mean squared error 1 - rho^2 of a Gaussian pair
    "diffusion-ex1-solution": (
        "rho2 = lambda abar: (1 - abar) / (abar * 0.25 + 1 - abar)  # corr(eps, x_t)^2\n"
        "floor_mid = torch.tensor(64 * (1 - rho2(0.5)))\n"
        "floor_low_noise = torch.tensor(64.0) * (1 - rho2(0.99))\n"
    ),
    # a loop over the rows, float64 log-weights and logsumexp; returns float64
    "diffusion-ex2-solution": (
        "def x0_hat_empirical(xt, abar_t, points):\n"
        "    a, var = math.sqrt(float(abar_t)), 1 - float(abar_t)\n"
        "    pts = points.double()\n"
        "    rows = []\n"
        "    for row in xt.double():\n"
        "        logw = -((row - a * pts) ** 2).sum(1) / (2 * var)  # (M,)\n"
        "        w = (logw - torch.logsumexp(logw, 0)).exp()\n"
        "        rows.append(w @ pts)\n"
        "    return torch.stack(rows)\n"
    ),
    # log Phi written with erfcx, the bin from its mirror image on the upper side, float64
    "diffusion-ex4-solution": (
        "def discretized_gaussian_log_prob(x, mean, std, K):\n"
        "    x, mean = x.double(), mean.double()\n"
        "    std = torch.as_tensor(std, dtype=torch.float64)\n"
        "\n"
        "    def log_phi(a):  # log Phi(a) = log(erfc(-a / sqrt 2) / 2)\n"
        "        r = -a / math.sqrt(2)\n"
        "        low = torch.log(torch.special.erfcx(r.clamp(min=0)) / 2) - r.clamp(min=0) ** 2\n"
        "        high = torch.log1p(-torch.special.erfc(-r.clamp(max=0)) / 2)\n"
        "        return torch.where(r > 0, low, high)\n"
        "\n"
        "    step = 2.0 / (K - 1)\n"
        "    top, bottom = x >= 1 - step / 2, x <= -1 + step / 2\n"
        "    upper = (x + step / 2 - mean) / std\n"
        "    lower = (x - step / 2 - mean) / std\n"
        "    upper = torch.where(top, torch.full_like(upper, math.inf), upper)\n"
        "    lower = torch.where(bottom, torch.full_like(lower, -math.inf), lower)\n"
        "    above = (upper + lower) > 0  # the bin lies mostly above the mean: mirror it\n"
        "    hi = torch.where(above, -lower, upper)\n"
        "    lo = torch.where(above, -upper, lower)\n"
        "    l_hi, l_lo = log_phi(hi), log_phi(lo)\n"
        "    gap = (l_lo - l_hi).clamp(max=0)\n"
        "    return l_hi + torch.where(gap > -0.693, torch.log(-torch.expm1(gap)),\n"
        "                              torch.log1p(-torch.exp(gap)))\n"
    ),
    # E[x | z] - (1 - sigma_min) E[eps | z], each by Gaussian conditioning
    "diffusion-ex5-solution": (
        "def gaussian_marginal_velocity(z, t, mu, s, sigma_min):\n"
        "    c = 1 - (1 - sigma_min) * t\n"
        "    var = c * c + (t * s) ** 2\n"
        "    resid = (z - t * mu) / var\n"
        "    x_mean = mu + t * s * s * resid\n"
        "    eps_mean = c * resid\n"
        "    return x_mean - (1 - sigma_min) * eps_mean\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # takes the floor for the noise's own variance, D (1 - abar): numbers, but wrong ones
    "diffusion-ex1-solution": "floor_mid = 64 * (1 - 0.5)\nfloor_low_noise = 64 * (1 - 0.99)\n",
    # fixes the normalisation but exponentiates without subtracting the largest log-weight:
    # 0 / 0 = NaN once every weight underflows at low noise
    "diffusion-ex2-solution": (
        "def x0_hat_empirical(xt, abar_t, points):\n"
        "    d2 = ((xt[:, None, :] - abar_t**0.5 * points[None]) ** 2).sum(-1)\n"
        "    w = torch.exp(-d2 / (2 * (1 - abar_t)))\n"
        "    return (w / w.sum(1, keepdim=True)) @ points\n"
    ),
    # the library's decoder, generalised to K levels: clips the probability at 1e-12
    "diffusion-ex4-solution": (
        "def discretized_gaussian_log_prob(x, mean, std, K):\n"
        "    h = 1.0 / (K - 1)\n"
        "    normal = torch.distributions.Normal(mean, std)\n"
        "    hi = torch.where(x > 1 - h, torch.inf, x + h)\n"
        "    lo = torch.where(x < -1 + h, -torch.inf, x - h)\n"
        "    return (normal.cdf(hi) - normal.cdf(lo)).clamp(min=1e-12).log()\n"
    ),
    # the field for sigma_min = 0, whatever sigma_min is
    "diffusion-ex5-solution": (
        "def gaussian_marginal_velocity(z, t, mu, s, sigma_min):\n"
        "    c = 1 - t\n"
        "    return mu + (t * s**2 - c) / (c**2 + t**2 * s**2) * (z - t * mu)\n"
    ),
}
