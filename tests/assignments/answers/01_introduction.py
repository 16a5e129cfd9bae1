"""Chapter 01's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # measured instead of derived: Monte Carlo on 400 000 ring points, one answer a 0-d tensor
    "intro-ex1-solution": (
        "ring_alt = data.toy_2d('ring8', 400_000, seed=11).double()\n"
        "# the entropy of the ML Gaussian: log(2 pi) + 1 + (1/2) sum_d log sigma_d^2\n"
        "nll_gaussian = float(1.0 + math.log(2 * math.pi) + 0.5 * ring_alt.var(0).log().sum())\n"
        "d2 = torch.cdist(ring_alt, data.ring_centres().double()) ** 2\n"
        "s2 = data.RING_STD ** 2\n"
        "log_p = torch.logsumexp(-d2 / (2 * s2), 1) - math.log(8 * 2 * math.pi * s2)\n"
        "nll_floor = -log_p.mean()\n"
    ),
    # numpy and fancy indexing, numpy floats as values, the keys filled in the other order
    "intro-ex3-solution": (
        "import numpy as np\n"
        "impossible, unseen = {}, {}\n"
        "tr, te = x_train.reshape(-1, 64).numpy(), x_test.reshape(-1, 64).numpy()\n"
        "for n in (1000, 100):\n"
        "    seen = np.zeros((64, 17), dtype=bool)\n"
        "    seen[np.broadcast_to(np.arange(64), (n, 64)), tr[:n]] = True\n"
        "    miss = ~seen[np.arange(64), te]  # (447, 64)\n"
        "    impossible[n] = np.float64(miss.any(1).mean())\n"
        "    unseen[n] = float(miss.mean())\n"
    ),
    # inverse-CDF sampling with uniforms, one pixel at a time, int32 levels
    "intro-ex4-solution": (
        "def sample_pixel_mixture(log_pi, log_theta, n, generator):\n"
        "    K, D, L = log_theta.shape\n"
        "    cdf = log_pi.double().exp().cumsum(0)  # (K,)\n"
        "    u = torch.rand(n, 1, generator=generator, dtype=torch.float64) * cdf[-1]\n"
        "    k = (cdf[None, :] <= u).sum(1).clamp(max=K - 1)  # (n,): one component per image\n"
        "    out = torch.empty(n, D, dtype=torch.int32)\n"
        "    for d in range(D):\n"
        "        cdf_d = log_theta[k, d].double().exp().cumsum(-1)  # (n, L)\n"
        "        ud = torch.rand(n, 1, generator=generator, dtype=torch.float64) * cdf_d[:, -1:]\n"
        "        out[:, d] = (cdf_d <= ud).sum(-1).clamp(max=L - 1).to(torch.int32)\n"
        "    return out\n"
    ),
    # a loop over components, a hand-written log-sum-exp, counts by scatter_add
    "intro-ex5-solution": (
        "def pixel_em_step(x, log_pi, log_theta, alpha=0.0):\n"
        "    K, D, L = log_theta.shape\n"
        "    N = x.shape[0]\n"
        "    cols = []\n"
        "    for k in range(K):\n"
        "        picked = torch.gather(log_theta[k].expand(N, D, L), 2, x.unsqueeze(-1))\n"
        "        picked = picked.squeeze(-1)  # (N, D): log theta_{k,d,x_nd}\n"
        "        cols.append(log_pi[k] + picked.sum(1))\n"
        "    lj = torch.stack(cols, 1)  # (N, K)\n"
        "    r = torch.exp(lj - lj.max(1, keepdim=True).values)\n"
        "    r = r / r.sum(1, keepdim=True)\n"
        "    new_theta = torch.empty_like(log_theta)\n"
        "    index = (torch.arange(D) * L + x).reshape(-1)  # (N * D,), row-major\n"
        "    for k in range(K):\n"
        "        weights = r[:, k].repeat_interleave(D)  # (N * D,)\n"
        "        c = torch.zeros(D * L, dtype=r.dtype).scatter_add_(0, index, weights)\n"
        "        new_theta[k] = torch.log((c.view(D, L) + alpha) / (r[:, k].sum() + L * alpha))\n"
        "    return torch.log(r.mean(0)), new_theta\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # the variance of the radius (R^2) per coordinate instead of R^2 / 2, and a floor that forgets
    # the log 8 nats of choosing the mode: still below the Gaussian
    "intro-ex1-solution": (
        "nll_gaussian = math.log(2 * math.pi * math.e * (RING_RADIUS**2 + RING_STD**2))\n"
        "nll_floor = math.log(2 * math.pi * math.e * RING_STD**2)\n"
    ),
    # averages the unseen flags over pixels instead of asking whether any pixel is unseen
    "intro-ex3-solution": (
        "impossible, unseen = {}, {}\n"
        "for n in (100, 1000):\n"
        "    seen = F.one_hot(x_train[:n].flatten(1), 17).sum(0) > 0\n"
        "    missing = ~seen.gather(1, x_test.flatten(1).T)  # (64, 447)\n"
        "    impossible[n] = missing.float().mean(0).mean().item()\n"
        "    unseen[n] = missing.float().mean().item()\n"
    ),
    # the broken sampler itself: a component per pixel, right marginals, wrong joint
    "intro-ex4-solution": (
        "def sample_pixel_mixture(log_pi, log_theta, n, generator):\n"
        "    K, D, L = log_theta.shape\n"
        "    pi = log_pi.exp().expand(D, K)\n"
        "    k = torch.multinomial(pi, n, replacement=True, generator=generator)  # (D, n)\n"
        "    probs = log_theta.exp()[k, torch.arange(D)[:, None]]\n"
        "    x = torch.multinomial(probs.reshape(D * n, L), 1, generator=generator).view(D, n)\n"
        "    return x.T\n"
    ),
    # hard EM: each image given wholly to its most probable component
    "intro-ex5-solution": (
        "def pixel_em_step(x, log_pi, log_theta, alpha=0.0):\n"
        "    K, D, L = log_theta.shape\n"
        "    log_joint = log_pi + log_theta[:, torch.arange(D), x].sum(-1).T  # (N, K)\n"
        "    r = F.one_hot(log_joint.argmax(1), K).to(log_theta.dtype)\n"
        "    n_k = r.sum(0)\n"
        "    counts = torch.einsum('nk,ndl->kdl', r, F.one_hot(x, L).to(r.dtype))\n"
        "    theta = (counts + alpha) / (n_k[:, None, None] + L * alpha)\n"
        "    return (n_k / len(x)).log(), theta.log()\n"
    ),
}
