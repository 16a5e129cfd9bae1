"""Chapter 02's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # a tensor computation instead of math, and an int and a 0-dim tensor instead of floats
    "rbm-ex1-solution": (
        "delta_log_z = torch.nn.functional.softplus(torch.tensor(2.0))\ndelta_nll = 0\n"
    ),
    # one pixel at a time: flip it, and compare free energies (float64, a loop over pixels)
    "rbm-ex2-solution": (
        "def pixel_log_conditionals(v, W, b, c):\n"
        "    v, W, b, c = (t.double() for t in (v, W, b, c))\n"
        "\n"
        "    def free_energy(u):\n"
        "        a = u @ W + c\n"
        "        return -(u @ b) - torch.logaddexp(torch.zeros_like(a), a).sum(-1)\n"
        "\n"
        "    columns = []\n"
        "    for i in range(v.shape[1]):\n"
        "        flipped = v.clone()\n"
        "        flipped[:, i] = 1 - flipped[:, i]\n"
        "        # p(v_i | v_-i) = p(v) / (p(v) + p(flipped)) = sigmoid(F(flipped) - F(v))\n"
        "        gap = free_energy(flipped) - free_energy(v)\n"
        "        columns.append(torch.nn.functional.logsigmoid(gap))\n"
        "    return torch.stack(columns, dim=1)\n"
    ),
    # plain Python floats, a loop over the hidden states of the first layer
    "rbm-ex3-solution": (
        "def dbm_log_partition(W1, W2, b, c1, c2):\n"
        "    W1, W2, b, c1, c2 = (t.double().tolist() for t in (W1, W2, b, c1, c2))\n"
        "    V, H1, H2 = len(b), len(c1), len(c2)\n"
        "\n"
        "    def softplus(a):\n"
        "        return max(a, 0.0) + math.log1p(math.exp(-abs(a)))\n"
        "\n"
        "    terms = []\n"
        "    for state in range(2**H1):\n"
        "        h = [(state >> j) & 1 for j in range(H1)]\n"
        "        t = sum(c1[j] * h[j] for j in range(H1))\n"
        "        t += sum(softplus(b[i] + sum(W1[i][j] * h[j] for j in range(H1)))\n"
        "                 for i in range(V))\n"
        "        t += sum(softplus(c2[k] + sum(W2[j][k] * h[j] for j in range(H1)))\n"
        "                 for k in range(H2))\n"
        "        terms.append(t)\n"
        "    top = max(terms)\n"
        "    return top + math.log(sum(math.exp(t - top) for t in terms))\n"
    ),
    # the library's intermediate RBMs (float32) for log f and the conditionals, products for the
    # Bernoulli tables
    "rbm-ex5-solution": (
        "def expected_ais_log_weight(W, b, c, base_logits, K):\n"
        "    V, H = W.shape\n"
        "    rbm = RBM(RBMConfig(num_visible=V, num_hidden=H))\n"
        "    with torch.no_grad():\n"
        "        for p, t in zip((rbm.W, rbm.b, rbm.c, rbm.base_logits), (W, b, c, base_logits)):\n"
        "            p.copy_(t)\n"
        "    vs, hs = binary_states(V), binary_states(H)\n"
        "\n"
        "    def table(p, x):  # (rows, 2^n): prod_i p^x (1 - p)^(1 - x)\n"
        "        return torch.prod(x[None] * p[:, None] + (1 - x[None]) * (1 - p[:, None]), -1)\n"
        "\n"
        "    q = table(torch.sigmoid(base_logits.float())[None], vs)[0]\n"
        "    out = 0.0\n"
        "    with torch.no_grad():\n"
        "        prev = -rbm.ais_intermediate(0.0).free_energy(vs)\n"
        "        for k in range(1, K + 1):\n"
        "            step = rbm.ais_intermediate(k / K)\n"
        "            cur = -step.free_energy(vs)\n"
        "            out += float((q * (cur - prev)).sum())\n"
        "            q = q @ table(step.p_h_given_v(vs), hs) @ table(step.p_v_given_h(hs), vs)\n"
        "            prev = cur\n"
        "    return out\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # right about log Z, but thinks the NLL rises with it
    "rbm-ex1-solution": (
        "delta_log_z = math.log1p(math.exp(2.0))\ndelta_nll = math.log1p(math.exp(2.0))\n"
    ),
    # still mean field, only now from the other pixels: sums to 1 and is right for W = 0
    "rbm-ex2-solution": (
        "def pixel_log_conditionals(v, W, b, c):\n"
        "    a = v @ W + c\n"
        "    p_h = torch.sigmoid(a[:, None, :] - v[:, :, None] * W)  # (N, V, H) without pixel i\n"
        "    logits = b + (p_h * W).sum(-1)\n"
        "    return v * logsigmoid(logits) + (1 - v) * logsigmoid(-logits)\n"
    ),
    # forgets the top layer's biases c2 (the visible tests have c2 = 0)
    "rbm-ex3-solution": (
        "def dbm_log_partition(W1, W2, b, c1, c2):\n"
        "    h1 = binary_states(W1.shape[1], dtype=torch.float64)\n"
        "    W1, W2, b, c1 = (t.double() for t in (W1, W2, b, c1))\n"
        "    terms = h1 @ c1 + softplus(h1 @ W1.T + b).sum(-1) + softplus(h1 @ W2).sum(-1)\n"
        "    return float(torch.logsumexp(terms, 0))\n"
    ),
    # never moves the distribution of v: every step is weighted under the base model p_0
    "rbm-ex5-solution": (
        "def expected_ais_log_weight(W, b, c, base_logits, K):\n"
        "    v = binary_states(W.shape[0], dtype=W.dtype)\n"
        "\n"
        "    def log_f(beta):\n"
        "        lin = v @ ((1 - beta) * base_logits + beta * b)\n"
        "        return lin + softplus(beta * (v @ W + c)).sum(-1)\n"
        "\n"
        "    q = (logsigmoid(base_logits) @ v.T + logsigmoid(-base_logits) @ (1 - v).T).exp()\n"
        "    steps = range(1, K + 1)\n"
        "    return float(sum((q * (log_f(k / K) - log_f((k - 1) / K))).sum() for k in steps))\n"
    ),
}
