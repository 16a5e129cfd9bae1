"""Chapter 06's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # the same function, as a 0-d tensor computed from the expected base log-densities
    "flows-ex1-solution": (
        "def delta(D, T):\n"
        "    log_base = lambda t: -0.5 * D * math.log(2 * math.pi) - 0.5 * D * t**2  # E log N\n"
        "    return torch.tensor(log_base(T) - log_base(1.0), dtype=torch.float64)\n"
    ),
    # erfc instead of log_ndtr, a Python loop over the 17 levels instead of fancy indexing
    "flows-ex2-solution": (
        "def exact_log_prob(x, mu, sigma, alpha):\n"
        "    mu = torch.as_tensor(mu, dtype=torch.float64).expand(1, 1, 8, 8)\n"
        "    sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(1, 1, 8, 8)\n"
        "    out = torch.zeros(x.shape, dtype=torch.float64)\n"
        "    for k in range(17):\n"
        "        p_lo = alpha + (1 - 2 * alpha) * k / 17\n"
        "        p_hi = alpha + (1 - 2 * alpha) * (k + 1) / 17\n"
        "        lo = (math.log(p_lo / (1 - p_lo)) - mu) / sigma\n"
        "        hi = (math.log(p_hi / (1 - p_hi)) - mu) / sigma\n"
        "        # erfc(t / sqrt 2) / 2 = 1 - Phi(t): accurate in both tails once reflected\n"
        "        upper = (torch.special.erfc(lo / 2**0.5) - torch.special.erfc(hi / 2**0.5)) / 2\n"
        "        lower = (torch.special.erfc(-hi / 2**0.5) - torch.special.erfc(-lo / 2**0.5)) / 2\n"  # noqa: E501
        "        mass = torch.where(lo > 0, upper, lower).expand(x.shape)\n"
        "        out = torch.where(x == k, mass.log(), out)\n"
        "    return out.sum(dim=(1, 2, 3))\n"
    ),
    # an optimiser instead of the closed form, in float32
    "flows-ex3-solution": (
        "def fit_factorized(x, alpha):\n"
        "    gen = torch.Generator().manual_seed(1)\n"
        "    mu = torch.zeros(1, 1, 8, 8, requires_grad=True)\n"
        "    log_sigma = torch.zeros(1, 1, 8, 8, requires_grad=True)\n"
        "    opt = torch.optim.Adam([mu, log_sigma], lr=0.05)\n"
        "    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)\n"
        "    for _ in range(300):\n"
        "        y = (x.float() + torch.rand(x.shape, generator=gen)) / 17\n"
        "        s = torch.logit(alpha + (1 - 2 * alpha) * y)\n"
        "        loss = -torch.distributions.Normal(mu, log_sigma.exp()).log_prob(s).mean()\n"
        "        opt.zero_grad()\n"
        "        loss.backward()\n"
        "        opt.step()\n"
        "        sched.step()\n"
        "    return mu.detach()[0, 0], log_sigma.exp().detach()[0, 0]  # (8, 8) each\n"
    ),
    # one point at a time, with the closed form 1 + a b / (a + r)^2 of the radial factor
    "flows-ex4-solution": (
        "def radial_forward(x, c, a, b):\n"
        "    zs, logdets = [], []\n"
        "    dim = x.shape[-1]\n"
        "    for row in x:\n"
        "        r = torch.sqrt(((row - c) ** 2).sum())\n"
        "        scale = 1 + b / (a + r)\n"
        "        zs.append(c + scale * (row - c))\n"
        "        logdets.append((dim - 1) * torch.log(scale.abs())\n"
        "                       + torch.log((1 + a * b / (a + r) ** 2).abs()))\n"
        "    return torch.stack(zs), torch.stack(logdets)\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # forgets the 1/2 of the Gaussian exponent: (1 - T^2) D, still 0 at T = 1
    "flows-ex1-solution": "def delta(D, T):\n    return (1 - T**2) * D\n",
    # silences the symptom with a floor instead of fixing the cancellation: finite, and the
    # mirror check passes loosely, but the tails are hundreds of nats off
    "flows-ex2-solution": (
        "def exact_log_prob(x, mu, sigma, alpha):\n"
        "    k = torch.arange(LEVELS + 1, dtype=torch.float64)\n"
        "    e = torch.logit(alpha + (1 - 2 * alpha) * k / LEVELS)\n"
        "    lo, hi = (e[x] - mu) / sigma, (e[x + 1] - mu) / sigma\n"
        "    mass = torch.special.ndtr(hi) - torch.special.ndtr(lo)\n"
        "    return torch.log(mass.clamp_min(1e-300)).flatten(1).sum(1)\n"
    ),
    # no dequantization noise: the logits of the cell centres (x + 1/2)/17, with a floor on sigma
    # for the pixels that are always 0; misses the spread inside each cell
    "flows-ex3-solution": (
        "def fit_factorized(x, alpha):\n"
        "    s = torch.logit(alpha + (1 - 2 * alpha) * (x.double() + 0.5) / LEVELS)\n"
        "    return s.mean(0, keepdim=True), s.std(0, keepdim=True).clamp_min(0.2)\n"
    ),
    # treats the radial flow as an isotropic scaling: right at the centre, wrong elsewhere
    "flows-ex4-solution": (
        "def radial_forward(x, c, a, b):\n"
        "    d = x - c\n"
        "    scale = 1 + b / (a + d.norm(dim=1, keepdim=True))  # (B, 1)\n"
        "    return c + scale * d, x.shape[1] * torch.log(scale).squeeze(1)\n"
    ),
}
