"""Chapter 03's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # 0-d tensors; the gap computed as log p(x) - ELBO, not as a KL
    "vae-ex1-solution": (
        "sd_exact = torch.tensor(0.0)\n"
        "log_p2 = -0.5 * torch.log(torch.tensor(4 * math.pi)) - 4.0 / 4  # log N(2; 0, 2)\n"
        "elbo_prior = -0.5 * math.log(2 * math.pi) - 0.5 * (4.0 + 1.0)  # E (2 - z)^2 = 4 + 1\n"
        "gap_prior = log_p2 - elbo_prior\n"
    ),
    # CDF differences with infinite edges, computed in float32
    "vae-ex2-solution": (
        "def discretized_logistic_log_prob(x, loc, log_scale):\n"
        "    # the bug was the last bin: sigma(lower) is the mass below 15.5, not above it\n"
        "    xf = x.float()\n"
        "    hi = torch.where(x >= 16, torch.tensor(math.inf), xf + 0.5)\n"
        "    lo = torch.where(x <= 0, torch.tensor(-math.inf), xf - 0.5)\n"
        "    s = log_scale.float().exp()\n"
        "    p = torch.sigmoid((hi - loc.float()) / s) - torch.sigmoid((lo - loc.float()) / s)\n"
        "    return p.log()\n"
    ),
    # one row at a time, the trace term written as a trace
    "vae-ex3-solution": (
        "def linear_gaussian_elbo(x, W, b, s2, mu, logvar):\n"
        "    out = []\n"
        "    for xi, mi, li in zip(x, mu, logvar):\n"
        "        v = li.exp()\n"
        "        r = xi - W @ mi - b\n"
        "        trace = torch.trace(W @ torch.diag(v) @ W.T)\n"
        "        e_sq = r @ r + trace\n"
        "        rec = -0.5 * len(xi) * torch.log(torch.tensor(2 * math.pi * s2, dtype=x.dtype))\n"
        "        rec = rec - e_sq / (2 * s2)\n"
        "        kl = 0.5 * torch.sum(mi * mi + v - li - 1)\n"
        "        out.append(rec - kl)\n"
        "    return torch.stack(out)\n"
    ),
    # Gauss-Seidel sweeps (coordinate ascent on the ELBO) instead of a solve; a Cholesky logdet
    "vae-ex5-solution": (
        "def best_diagonal_q(x, W, b, s2):\n"
        "    D = W.shape[1]\n"
        "    lam = torch.eye(D, dtype=torch.float64) + W.double().T @ W.double() / s2\n"
        "    rhs = (x.double() - b.double()) @ W.double() / s2  # (B, D)\n"
        "    mu = torch.zeros_like(rhs)\n"
        "    for _ in range(2000):  # coordinate ascent: each mu_j optimal given the others\n"
        "        for j in range(D):\n"
        "            mu[:, j] = (rhs[:, j] - mu @ lam[:, j] + mu[:, j] * lam[j, j]) / lam[j, j]\n"
        "    logvar = torch.stack([-torch.log(lam[j, j]) for j in range(D)])  # (D,)\n"
        "    return mu, logvar\n"
        "\n"
        "\n"
        "def mean_field_gap(W, s2):\n"
        "    # the gap is the KL to the posterior, the same for every x: m cancels out\n"
        "    lam = torch.eye(W.shape[1], dtype=torch.float64) + W.double().T @ W.double() / s2\n"
        "    chol = torch.linalg.cholesky(lam)\n"
        "    return float(0.5 * (lam.diagonal().log().sum() - 2 * chol.diagonal().log().sum()))\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # the posterior's own spread for the first, the KL the wrong way round for the second
    "vae-ex1-solution": (
        "sd_exact = math.sqrt(0.5)\n"
        "gap_prior = 0.5 * (0.5 + 1.0 - math.log(0.5) - 1.0)  # KL(N(1, 1/2) || N(0, 1))\n"
    ),
    # leaves the bug in and renormalises the 17 probabilities: they add up to 1, wrongly shared
    "vae-ex2-solution": (
        "def discretized_logistic_log_prob(x, loc, log_scale):\n"
        "    def raw(k):\n"
        "        s = log_scale.exp()\n"
        "        upper, lower = (k + 0.5 - loc) / s, (k - 0.5 - loc) / s\n"
        "        middle = torch.log(torch.sigmoid(upper) - torch.sigmoid(lower))\n"
        "        first = torch.nn.functional.logsigmoid(upper)\n"
        "        last = torch.nn.functional.logsigmoid(lower)\n"
        "        return torch.where(k == 0, first, torch.where(k == 16, last, middle))\n"
        "    shape = torch.broadcast_shapes(x.shape, loc.shape, log_scale.shape)\n"
        "    ks = torch.arange(17).view(17, *[1] * len(shape))\n"
        "    return raw(x) - torch.logsumexp(raw(ks), 0)\n"
    ),
    # decodes the mean only: no trace term (exact for a point-mass q, too high otherwise)
    "vae-ex3-solution": (
        "def linear_gaussian_elbo(x, W, b, s2, mu, logvar):\n"
        "    d = x.shape[-1]\n"
        "    resid = x - mu @ W.T - b\n"
        "    rec = -0.5 * d * math.log(2 * math.pi * s2) - (resid**2).sum(-1) / (2 * s2)\n"
        "    return rec - 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(-1)\n"
    ),
    # the posterior's marginal variances Sigma_jj instead of 1 / Lambda_jj (right when Sigma is
    # diagonal), and the gap that this q leaves
    "vae-ex5-solution": (
        "def best_diagonal_q(x, W, b, s2):\n"
        "    lam = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s2\n"
        "    sig = torch.linalg.inv(lam)\n"
        "    mu = (x - b) @ W @ sig / s2\n"
        "    return mu, torch.diagonal(sig).log().expand_as(mu)\n"
        "\n"
        "\n"
        "def mean_field_gap(W, s2):\n"
        "    lam = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s2\n"
        "    v = torch.diagonal(torch.linalg.inv(lam))\n"
        "    return 0.5 * ((lam.diagonal() * v).sum() - len(v) - torch.logdet(lam) - v.log().sum())\n"  # noqa: E501
    ),
}
