"""Chapter 08's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # 0-dim tensors, by running the recursion of the mean and the variance step by step
    "energy-ex1-solution": (
        "mean_after, var_after = torch.tensor(-2.0), torch.tensor(0.0)\n"
        "for _ in range(3):\n"
        "    mean_after = mean_after + 0.1 * (-(mean_after - 1) / 0.25)\n"
        "    var_after = (1 - 0.1 / 0.25) ** 2 * var_after + 2 * 0.1\n"
    ),
    # the kernel's score written from x_t and the shrunken mean, abar made a tensor
    "energy-ex2-solution": (
        "def vp_dsm_loss(score, x0, abar, z):\n"
        "    a = torch.as_tensor(abar, dtype=x0.dtype)\n"
        "    xt = a.sqrt() * x0 + (1 - a).sqrt() * z\n"
        "    kernel = -(xt - a.sqrt() * x0) / (1 - a)  # grad log N(x_t; sqrt(a) x_0, (1 - a) I)\n"
        "    return ((score(xt) - kernel) ** 2).sum(dim=-1) / 2\n"
    ),
    # three Metropolis steps of scale 1 per level, the uniform drawn first, the increment written
    # as (beta_k - beta_{k-1}) (x^2 / 2 - E(x))
    "energy-ex4-solution": (
        "def ais_from_normal(energy, betas, x0, generator=None):\n"
        "    x, log_w = x0.clone(), torch.zeros_like(x0)\n"
        "    for k in range(1, len(betas)):\n"
        "        b = float(betas[k])\n"
        "        log_w += (b - float(betas[k - 1])) * (x**2 / 2 - energy(x))\n"
        "        for _ in range(3):\n"
        "            u = torch.rand(x.shape, generator=generator, dtype=torch.float64)\n"
        "            y = x + torch.randn(x.shape, generator=generator, dtype=torch.float64)\n"
        "            old = -(1 - b) * x**2 / 2 - b * energy(x)\n"
        "            new = -(1 - b) * y**2 / 2 - b * energy(y)\n"
        "            x = torch.where(torch.log(u) <= new - old, y, x)\n"
        "    return log_w, x\n"
    ),
    # the fourth-moment tensor of each probe written out and contracted with J twice
    "energy-ex5-solution": (
        "def probe_variance(J, probe):\n"
        "    D = J.shape[-1]\n"
        "    d = torch.eye(D, dtype=J.dtype)\n"
        "    m4 = (torch.einsum('ij,kl->ijkl', d, d) + torch.einsum('ik,jl->ijkl', d, d)\n"
        "          + torch.einsum('il,jk->ijkl', d, d))  # E[v_i v_j v_k v_l], Gaussian\n"
        "    if probe == 'rademacher':  # i = j = k = l: E[v^4] = 1, not 3\n"
        "        idx = torch.arange(D)\n"
        "        m4[idx, idx, idx, idx] = 1.0\n"
        "    second = torch.einsum('nij,nkl,ijkl->n', J, J, m4)  # E[(v^T J v)^2]\n"
        "    mean = torch.diagonal(J, dim1=-2, dim2=-1).sum(-1)\n"
        "    return second - mean**2\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # the continuous-time (Ornstein-Uhlenbeck) answer at time k eps: the discretisation ignored
    "energy-ex1-solution": (
        "mean_after = 1 + math.exp(-0.3 / 0.25) * (-2 - 1)\n"
        "var_after = 0.25 * (1 - math.exp(-2 * 0.3 / 0.25))\n"
    ),
    # the shrunken mean fixed, but the target divided by the variance instead of the std
    "energy-ex2-solution": (
        "def vp_dsm_loss(score, x0, abar, z):\n"
        "    xt = abar**0.5 * x0 + (1 - abar) ** 0.5 * z\n"
        "    return 0.5 * (score(xt) + z / (1 - abar)).pow(2).sum(1)\n"
    ),
    # moves first and weighs at the moved point: the weight no longer has mean Z / Z_0
    "energy-ex4-solution": (
        "def ais_from_normal(energy, betas, x0, generator=None):\n"
        "    log_f = lambda x, b: -(1 - b) * x**2 / 2 - b * energy(x)\n"
        "    x, log_w = x0.clone(), torch.zeros_like(x0)\n"
        "    for b_prev, b in zip(betas[:-1].tolist(), betas[1:].tolist()):\n"
        "        for _ in range(2):\n"
        "            prop = x + 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)\n"
        "            u = torch.rand(x.shape, generator=generator, dtype=x.dtype)\n"
        "            x = torch.where(u.log() < log_f(prop, b) - log_f(x, b), prop, x)\n"
        "        log_w = log_w + log_f(x, b) - log_f(x, b_prev)\n"
        "    return log_w, x\n"
    ),
    # the formulas for a symmetric J applied to J itself: right only when J = J^T
    "energy-ex5-solution": (
        "def probe_variance(J, probe):\n"
        "    var = 2 * (J**2).sum((-2, -1))\n"
        "    if probe == 'rademacher':\n"
        "        var = var - 2 * (torch.diagonal(J, dim1=-2, dim2=-1) ** 2).sum(-1)\n"
        "    return var\n"
    ),
}
