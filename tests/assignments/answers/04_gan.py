"""Chapter 04's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # tensors instead of floats, the loss written as a sum of the two cross-entropies
    "gan-ex1-solution": (
        "d_on_generator = torch.tensor(1.0) / 3\n"
        "best_d_loss = -0.5 * torch.log(torch.tensor(1 / 3)) - torch.log(torch.tensor(2 / 3))\n"
    ),
    # quantile functions on the merged grid of levels: the area between the inverse CDFs
    "gan-ex2-solution": (
        "def wasserstein_1d(x, y):\n"
        "    xs, ys = x.sort().values, y.sort().values\n"
        "    n, m = len(xs), len(ys)\n"
        "    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,\n"
        "                        torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()\n"
        "    widths = levels.diff(prepend=torch.zeros(1, dtype=torch.float64))\n"
        "    # the quantile at level u in (u_prev, u]: the ceil(u n)-th smallest sample\n"
        "    ix = (levels * n - 1e-9).ceil().long().clamp(1, n) - 1\n"
        "    iy = (levels * m - 1e-9).ceil().long().clamp(1, m) - 1\n"
        "    return ((xs[ix] - ys[iy]).abs() * widths.to(xs.dtype)).sum()\n"
    ),
    # another classifier (Tanh MLP, BCE-with-logits, minibatches) and log((1 - D) / D)
    "gan-ex3-solution": (
        "def kl_from_classifier(p_samples, q_samples):\n"
        "    net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(),\n"
        "                              torch.nn.Linear(64, 64), torch.nn.Tanh(),\n"
        "                              torch.nn.Linear(64, 1))\n"
        "    x = torch.cat([p_samples, q_samples]).float()\n"
        "    labels = torch.cat([torch.ones(len(p_samples)), torch.zeros(len(q_samples))])\n"
        "    opt = torch.optim.Adam(net.parameters(), lr=3e-3)\n"
        "    bce = torch.nn.BCEWithLogitsLoss()\n"
        "    for epoch in range(15):\n"
        "        for idx in torch.randperm(len(x)).split(500):\n"
        "            loss = bce(net(x[idx]).squeeze(1), labels[idx])\n"
        "            opt.zero_grad()\n"
        "            loss.backward()\n"
        "            opt.step()\n"
        "    with torch.no_grad():\n"
        "        d = torch.sigmoid(net(q_samples.float()).squeeze(1)).clamp(1e-6, 1 - 1e-6)\n"
        "    return torch.log((1 - d) / d).mean()\n"
    ),
    # a linear programme: maximise sum (p - q) f subject to the steps' Lipschitz bounds
    "gan-ex5-solution": (
        "def optimal_critic(x, p, q):\n"
        "    import numpy as np\n"
        "    from scipy.optimize import linprog\n"
        "\n"
        "    g = len(x)\n"
        "    rows, bounds = [], []\n"
        "    for i in range(g - 1):\n"
        "        step = np.zeros(g)\n"
        "        step[i], step[i + 1] = -1.0, 1.0\n"
        "        gap = float(x[i + 1] - x[i])\n"
        "        rows += [step, -step]\n"
        "        bounds += [gap, gap]\n"
        "    free = [(0, 0)] + [(None, None)] * (g - 1)  # f_1 = 0\n"
        "    res = linprog(-(p - q).numpy(), A_ub=np.array(rows), b_ub=np.array(bounds),\n"
        "                  bounds=free, method='highs')\n"
        "    return res.x.tolist()\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # the equilibrium's values: D = 1/2 and log 4, as if the matched mode were all that counted
    "gan-ex1-solution": "d_on_generator = 0.5\nbest_d_loss = math.log(4)\n",
    # the distance between the means: right for shifts and for duplicated samples, wrong when the
    # CDFs cross
    "gan-ex2-solution": ("def wasserstein_1d(x, y):\n    return (x.mean() - y.mean()).abs()\n"),
    # the closed-form KL between the Gaussians fitted to each sample: exact for the Gaussians of
    # the visible test, not for the mixtures of the hidden ones
    "gan-ex3-solution": (
        "def kl_from_classifier(p_samples, q_samples):\n"
        "    mp, mq = p_samples.mean(), q_samples.mean()\n"
        "    vp, vq = p_samples.var(), q_samples.var()\n"
        "    return float(0.5 * (torch.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1))\n"
    ),
    # the best *linear* critic f(x) = +-x: 1-Lipschitz and optimal when the CDFs do not cross
    "gan-ex5-solution": (
        "def optimal_critic(x, p, q):\n    return torch.sign(((p - q) * x).sum()) * x\n"
    ),
}
