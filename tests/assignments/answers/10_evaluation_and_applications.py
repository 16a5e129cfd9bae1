"""Chapter 10's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # a 0-d tensor, from the two means' variances added coordinate by coordinate
    "eval-ex1-solution": (
        "import torch\n"
        "def expected_mean_term(n, m, d):\n"
        "    one = torch.tensor(1.0, dtype=torch.float64)\n"
        "    return d * (one / n + one / m)\n"
    ),
    # numpy's percentile over a loop, multinomial draws, tensors returned as 0-d tensors
    "eval-ex2-solution": (
        "import numpy as np\n"
        "def difference_interval(x, y, statistic, resamples=1000, level=0.9, seed=0):\n"
        "    gen = torch.Generator().manual_seed(seed)\n"
        "    stats = []\n"
        "    for _ in range(resamples):\n"
        "        draw = lambda k: torch.multinomial(torch.ones(k), k, True, generator=gen)\n"
        "        ix, iy = draw(len(x)), draw(len(y))\n"
        "        stats.append(float(statistic(x[ix], y[iy])))\n"
        "    alpha = 100 * (1 - level) / 2\n"
        "    low, high = np.percentile(np.array(stats), [alpha, 100 - alpha])\n"
        "    return torch.tensor(low), torch.tensor(high)\n"
    ),
    # collapsed onto two modes; spread as a wide uniform disc
    "eval-ex3-solution": (
        "g = torch.Generator().manual_seed(11)\n"
        "centres = data.ring_centres()\n"
        "two_modes = centres[(torch.arange(400) % 2) * 4]  # modes 0 and 4, alternately\n"
        "collapsed = two_modes + 0.03 * torch.randn(400, 2, generator=g)\n"
        "angle = 2 * math.pi * torch.rand(400, generator=g)\n"
        "radius = 4 * torch.rand(400, generator=g).sqrt()\n"
        "spread = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)\n"
    ),
    # loops over the pairs, in float64, returning a 0-d tensor
    "eval-ex4-solution": (
        "def mmd2_unbiased(x, y, kernel):\n"
        "    x, y = x.double(), y.double()\n"
        "    def off_diagonal_mean(a):\n"
        "        total, count = 0.0, 0\n"
        "        gram = kernel(a, a)\n"
        "        for i in range(len(a)):\n"
        "            for j in range(len(a)):\n"
        "                if i != j:\n"
        "                    total, count = total + gram[i, j], count + 1\n"
        "        return total / count\n"
        "    mask_free = kernel(x, y).sum() / (len(x) * len(y))\n"
        "    return off_diagonal_mean(x) + off_diagonal_mean(y) - 2 * mask_free\n"
    ),
    # each shift written out with index arithmetic, one query at a time, a numpy median
    # on an odd count (the lower median when even)
    "eval-ex5-solution": (
        "def shift_invariant_ratio(samples, train, test, max_shift=1):\n"
        "    h, w = train.shape[-2:]\n"
        "    bank = []\n"
        "    for dy in range(-max_shift, max_shift + 1):\n"
        "        for dx in range(-max_shift, max_shift + 1):\n"
        "            moved = torch.zeros_like(train, dtype=torch.float32)\n"
        "            rows_to = slice(max(dy, 0), h + min(dy, 0))\n"
        "            rows_from = slice(max(-dy, 0), h - max(dy, 0))\n"
        "            cols_to = slice(max(dx, 0), w + min(dx, 0))\n"
        "            cols_from = slice(max(-dx, 0), w - max(dx, 0))\n"
        "            moved[..., rows_to, cols_to] = train[..., rows_from, cols_from].float()\n"
        "            bank.append(moved.reshape(len(train), -1))\n"
        "    bank = torch.cat(bank)\n"
        "    def nearest(q):\n"
        "        flat = q.reshape(len(q), -1).float()\n"
        "        return torch.stack([((bank - row) ** 2).sum(1).min().sqrt() for row in flat])\n"
        "    def lower_median(v):\n"
        "        return v.sort().values[(len(v) - 1) // 2]\n"
        "    return lower_median(nearest(samples)) / lower_median(nearest(test))\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # the sample variance's n - 1 in place of n: right shape, wrong value (and n = 1 fails)
    "eval-ex1-solution": (
        "def expected_mean_term(n, m, d):\n    return d * (1 / (n - 1) + 1 / (m - 1))\n"
    ),
    # resamples both sets, but y at x's size: right when N = M, wrong otherwise
    "eval-ex2-solution": (
        "def difference_interval(x, y, statistic, resamples=1000, level=0.9, seed=0):\n"
        "    gen = torch.Generator().manual_seed(seed)\n"
        "    n = len(x)\n"
        "    draw = lambda k: torch.randint(k, (n,), generator=gen)\n"
        "    values = torch.tensor([float(statistic(x[draw(n)], y[draw(len(y))]))\n"
        "                           for _ in range(resamples)], dtype=torch.float64)\n"
        "    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)\n"
        "    low, high = torch.quantile(values, q)\n"
        "    return float(low), float(high)\n"
    ),
    # right collapse; 'spread' as the data with a little noise: recall high, but so is precision
    "eval-ex3-solution": (
        "g = torch.Generator().manual_seed(3)\n"
        "collapsed = data.ring_centres()[0] + 0.05 * torch.randn(400, 2, generator=g)\n"
        "spread = ring + 0.1 * torch.randn(400, 2, generator=g)\n"
    ),
    # the plug-in (V-statistic) estimate: whole Gram matrices, biased upwards
    "eval-ex4-solution": (
        "def mmd2_unbiased(x, y, kernel):\n"
        "    return float(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())\n"
    ),
    # shifts in one direction only (0..s instead of -s..s): finds copies moved down or right
    "eval-ex5-solution": (
        "def shift_invariant_ratio(samples, train, test, max_shift=1):\n"
        "    s, (h, w) = max_shift, train.shape[-2:]\n"
        "    padded = torch.nn.functional.pad(train.double(), (s, s, s, s))\n"
        "    bank = torch.cat([padded[..., s - dy : s - dy + h, s - dx : s - dx + w]\n"
        "                      for dy in range(0, s + 1) for dx in range(0, s + 1)]).flatten(1)\n"
        "    def nearest(q):\n"
        "        return torch.cdist(q.flatten(1).double(), bank).min(dim=1).values\n"
        "    return float(nearest(samples).median() / nearest(test).median())\n"
    ),
}
