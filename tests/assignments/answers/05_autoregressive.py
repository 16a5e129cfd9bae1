"""Chapter 05's exercises: other correct answers and planted wrong answers (tests/assignments)."""

# {solution grade_id: code}: a correct answer written differently -> must score full marks
ALTERNATIVE: dict[str, str] = {
    # the exact expectation by propagating the tempered chain, as a 0-d float64 tensor
    "ar-ex1-solution": (
        "# log p(next | prev), rows = the previous value\n"
        "log_p = torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64).log()\n"
        "tempered = (2 * log_p).softmax(-1)  # p_T at T = 0.5, rows = the previous value\n"
        "marginal = torch.tensor([0.5, 0.5], dtype=torch.float64)\n"
        "prediction = torch.tensor(math.log(0.5), dtype=torch.float64)\n"
        "for _ in range(63):\n"
        "    joint = marginal[:, None] * tempered  # (prev, next)\n"
        "    prediction = prediction + (joint * log_p).sum()\n"
        "    marginal = joint.sum(0)\n"
    ),
    # a loop over the taps, adding shifted copies of x, in float64
    "ar-ex2-solution": (
        "def causal_conv1d(x, weight, bias, mask_type):\n"
        "    n, c_in, d = x.shape\n"
        "    k = weight.shape[-1]\n"
        "    offset = k if mask_type == 'A' else k - 1  # tap j reads position i - offset + j\n"
        "    out = bias.double()[None, :, None].expand(n, -1, d).clone()\n"
        "    for j in range(k):\n"
        "        shift = offset - j  # x_{i - shift}\n"
        "        if shift >= d:\n"
        "            continue\n"
        "        shifted = torch.cat([x.new_zeros(n, c_in, shift), x[..., : d - shift]], -1)\n"
        "        tap = weight[:, :, j].double()  # (C_out, C_in)\n"
        "        out = out + torch.einsum('oc,ncd->nod', tap, shifted.double())\n"
        "    return out\n"
    ),
    # one row at a time with topk, in float64
    "ar-ex3-solution": (
        "def nucleus_probs(logits, p):\n"
        "    flat = logits.reshape(-1, logits.shape[-1]).double()\n"
        "    out = torch.zeros_like(flat)\n"
        "    for r, row in enumerate(flat.softmax(-1)):\n"
        "        for size in range(1, len(row) + 1):\n"
        "            top = torch.topk(row, size)\n"
        "            if top.values.sum() >= p or size == len(row):\n"
        "                out[r, top.indices] = top.values / top.values.sum()\n"
        "                break\n"
        "    return out.reshape(logits.shape)\n"
    ),
    # the closed form of the derivation, term by term
    "ar-ex4-solution": (
        "def full_conditional(x, W, b, i):\n"
        "    D = x.shape[1]\n"
        "    L = torch.tril(W, diagonal=-1)\n"
        "    x0 = x.clone()\n"
        "    x0[:, i] = 0\n"
        "    delta = b[i] + x0[:, :i] @ L[i, :i]\n"
        "    for k in range(i + 1, D):\n"
        "        a0 = b[k] + x0[:, :k] @ L[k, :k]\n"
        "        delta = delta + x[:, k] * L[k, i] - F.softplus(a0 + L[k, i]) + F.softplus(a0)\n"
        "    return 1 / (1 + torch.exp(-delta))\n"
    ),
}

# {solution grade_id: code}: a plausible wrong answer that PASSES the visible tests -> must lose
# the hidden points of that exercise's test cells
PLANTED: dict[str, str] = {
    # forgets that the first position contributes log 1/2 as well: 0.69 nats too high
    "ar-ex1-solution": (
        "stay = 0.8**2 / (0.8**2 + 0.2**2)\n"
        "prediction = 63 * (stay * math.log(0.8) + (1 - stay) * math.log(0.2))\n"
    ),
    # causal now, but zeroes position 0 after adding the bias: the type-A output there must be
    # the bias (the visible tests use a zero bias)
    "ar-ex2-solution": (
        "def causal_conv1d(x, weight, bias, mask_type):\n"
        "    k = weight.shape[-1]\n"
        "    out = F.conv1d(F.pad(x, (k - 1, 0)), weight) + bias[:, None]\n"
        "    if mask_type == 'A':\n"
        "        out = torch.roll(out, shifts=1, dims=-1)\n"
        "        out[..., 0] = 0\n"
        "    return out\n"
    ),
    # accumulates the mass in the symbols' own order instead of sorting them first: right when
    # the logits happen to be sorted already
    "ar-ex3-solution": (
        "def nucleus_probs(logits, p):\n"
        "    probs = logits.softmax(-1)\n"
        "    keep = probs.cumsum(-1) - probs < p\n"
        "    kept = probs * keep\n"
        "    return kept / kept.sum(-1, keepdim=True)\n"
    ),
    # the chain-rule factor sigma(a_i) instead of the full conditional: right for the last pixel
    "ar-ex4-solution": (
        "def full_conditional(x, W, b, i):\n    return torch.sigmoid(b[i] + x[:, :i] @ W[i, :i])\n"
    ),
}
