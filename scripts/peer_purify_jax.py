#!/usr/bin/env python3
"""Peer measurement for BENCHMARKS.md: one purification + classification, the same
computation as `cargo bench -p pursamere-core --bench purify`, JIT-compiled with JAX
on the CPU:

    residual denoiser D(y) = y + net(y), net 784-256-256-784 (ReLU), classifier
    784-256-256-10, F(x) = 1/M sum_m ||D(x + sigma e_m) - x||^2 with M = 8 fixed
    noise vectors, K = 20 SAM steps: g = grad F(x), x~ = x + rho g / ||g||,
    h = grad F(x~), x <- clip(x - eta h, max(x0 - delta, 0), min(x0 + delta, 1)),
    then the classifier's logits at the purified point.

sigma 0.25, eta 0.05, rho 0.05, delta 0.3 (the bench's settings). Weights are random
f32 (the cost does not depend on their values; ours are int8 with one f32 scale per
row). `grad F` comes from `jax.grad` (forward + VJP of the M noisy copies, batched as
one [M, 784] matrix through each layer). A batch of B images is `jax.vmap` of the
single-image function, so batch 1 is the same program as ours: one image at a time.

    pip install jax jaxlib
    python3 scripts/peer_purify_jax.py [BATCH ...]   # default: 1 256
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# The same networks as the attack-cost peer beside this file.
from peer_attack_cost_jax import mlp, mlp_params

D, H, C, K, M = 784, 256, 10, 20, 8
SIGMA, ETA, RHO, DELTA = 0.25, 0.05, 0.05, 0.3
# Nominal multiply-accumulates per image, counted as in BENCHMARKS.md.
MACS = 2 * K * M * 2 * (D * H + H * H + H * D) + (D * H + H * H + H * C)


def main():
    rng = np.random.default_rng(0)
    den = mlp_params(rng, [D, H, H, D])
    cls = mlp_params(rng, [D, H, H, C])
    noise = jnp.asarray(SIGMA * rng.standard_normal((M, D)).astype(np.float32))

    def ere(x):  # x: [D]
        y = x[None, :] + noise
        r = y + mlp(den, y) - x[None, :]
        return jnp.sum(r * r) / M

    grad_ere = jax.grad(ere)

    def purify_classify(x0):  # x0: [D]
        lo, hi = jnp.maximum(x0 - DELTA, 0.0), jnp.minimum(x0 + DELTA, 1.0)

        def body(_, x):
            g = grad_ere(x)
            n = jnp.sqrt(jnp.sum(g * g))
            xt = jnp.where(n > 0, x + g * (RHO / n), x)
            return jnp.clip(x - ETA * grad_ere(xt), lo, hi)

        x = jax.lax.fori_loop(0, K, body, x0)
        return x, mlp(cls, x)

    run = jax.jit(jax.vmap(purify_classify))
    batches = [int(b) for b in sys.argv[1:]] or [1, 256]
    print(f"jax {jax.__version__}, devices {jax.devices()}, {MACS} MACs per image")
    for b in batches:
        x = jnp.asarray(rng.random((b, D)).astype(np.float32))
        jax.block_until_ready(run(x))  # compile
        reps, rounds = max(3, 512 // b), []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                jax.block_until_ready(run(x))
            rounds.append((time.perf_counter() - t) / reps / b)
        rounds.sort()
        print(
            f"batch {b}: best {1e3 * rounds[0]:.3f} ms, median {1e3 * rounds[2]:.3f} ms per image, "
            f"{MACS / rounds[0] / 1e9:.1f} GMAC/s (best of 5 x {reps} calls)"
        )


if __name__ == "__main__":
    main()
