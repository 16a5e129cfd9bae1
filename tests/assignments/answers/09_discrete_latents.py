"""Chapter 09's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # 0-dim tensors, the rates counted cell by cell in nats, bits converted
    "latent-ex1-solution": (
        "rate_uniform = sum(torch.log(torch.tensor(64.0)) for _ in range(4))\n"
        "max_bits = rate_uniform / math.log(2)\n"
        "rate_learned = -torch.log(torch.tensor(1e-5, dtype=torch.float64))\n"
        "gain_nats = (torch.tensor(-60.0) - rate_learned) - (torch.tensor(-60.0) - rate_uniform)\n"
    ),
    # loops over the codes, the smoothing written as N_k + eps rescaled, float64 inside
    "latent-ex2-solution": (
        "def soft_ema_step(counts, sums, z, resp, gamma, eps):\n"
        "    K = counts.shape[0]\n"
        "    zd, rd = z.double(), resp.double()\n"
        "    n = torch.stack([rd[:, k].sum() for k in range(K)])\n"
        "    s = torch.stack([(rd[:, k : k + 1] * zd).sum(0) for k in range(K)])\n"
        "    N = counts.double() * gamma + n * (1 - gamma)\n"
        "    m = sums.double() * gamma + s * (1 - gamma)\n"
        "    S = N.sum()\n"
        "    Nt = S * (N + eps) / (S + K * eps)\n"
        "    return N.to(z.dtype), m.to(z.dtype), (m / Nt.unsqueeze(1)).to(z.dtype)\n"
    ),
    # torch.cartesian_prod for the grids, one image at a time, float64 before the logsumexp
    "latent-ex4-solution": (
        "def exact_log_prob(model, x):\n"
        "    K, g = model.config.vqvae.num_codes, model.config.vqvae.grid\n"
        "    cells = [torch.arange(K)] * (g * g)\n"
        "    grids = torch.cartesian_prod(*cells).reshape(-1, g, g) if g > 1 else "
        "torch.arange(K).reshape(-1, 1, 1)\n"
        "    out = []\n"
        "    with torch.no_grad():\n"
        "        lp = model.prior.log_prob(grids.unsqueeze(1)).double()\n"
        "        logits = model.vqvae.decode(grids)\n"
        "        for i in range(len(x)):\n"
        "            xi = x[i : i + 1].repeat(len(grids), 1, 1, 1)\n"
        "            joint = categorical_log_prob(logits, xi).double() + lp\n"
        "            out.append(torch.logsumexp(joint, 0))\n"
        "    return torch.stack(out)\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # bits and nats mixed up: the rate in nats reported as bits, the learned rate in bits
    "latent-ex1-solution": (
        "max_bits = 4 * math.log(64)\ngain_nats = 4 * math.log(64) - 5 * math.log2(10)\n"
    ),
    # no Laplace smoothing: e_k = m_k / N_k, right for used codes, 0 / 0 for a dead one
    "latent-ex2-solution": (
        "def soft_ema_step(counts, sums, z, resp, gamma, eps):\n"
        "    N = gamma * counts + (1 - gamma) * resp.sum(0)\n"
        "    m = gamma * sums + (1 - gamma) * resp.T @ z\n"
        "    return N, m, m / N[:, None]\n"
    ),
    # the best single grid (the MAP code) instead of the sum over grids: a tighter bound, not
    # log p(x); it still passes the visible check that it is above the encoder's bound
    "latent-ex4-solution": (
        "def exact_log_prob(model, x):\n"
        "    K, g = model.config.vqvae.num_codes, model.config.vqvae.grid\n"
        "    grids = torch.tensor(list(itertools.product(range(K), repeat=g * g))).view(-1, g, g)\n"
        "    with torch.no_grad():\n"
        "        lp = model.prior.log_prob(grids[:, None])\n"
        "        logits = model.vqvae.decode(grids)\n"
        "        ll = torch.stack([categorical_log_prob(logits, xi.expand(len(grids), *xi.shape))\n"
        "                          for xi in x])\n"
        "    return (ll + lp).max(dim=1).values\n"
    ),
}
