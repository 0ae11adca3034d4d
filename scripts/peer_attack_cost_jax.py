#!/usr/bin/env python3
"""Peer measurement for BENCHMARKS.md: one exact-gradient attack step through the
unrolled purifier, JIT-compiled with JAX on the CPU, the same shapes and settings as
`cargo bench -p pursamere-trainer --bench attack_cost` (full_step):

    denoiser 784-256-256-784 (ReLU, no skip), classifier 784-256-256-10,
    K = 10 gradient steps of eta = 0.5 on F(x) = 1/M sum_m ||D(x + sigma e_m) - x||^2,
    M = 4, sigma = 0.5, projection onto [max(x0 - 0.3, 0), min(x0 + 0.3, 1)],
    cross-entropy of the classifier at the purified point, gradient w.r.t. x0.

Weights are random (the cost does not depend on their values). Run:

    pip install jax jaxlib
    python3 scripts/peer_attack_cost_jax.py [BATCH ...]   # default: 32 1
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

D, H, C, K, M = 784, 256, 10, 10, 4
SIGMA, ETA, DELTA = 0.5, 0.5, 0.3


def mlp_params(rng, dims):
    return [
        (rng.standard_normal((i, o)).astype(np.float32) / np.sqrt(i), np.zeros(o, np.float32))
        for i, o in zip(dims[:-1], dims[1:])
    ]


def mlp(params, x):
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i + 1 < len(params):
            x = jax.nn.relu(x)
    return x


def main():
    rng = np.random.default_rng(0)
    den = mlp_params(rng, [D, H, H, D])
    cls = mlp_params(rng, [D, H, H, C])
    noise = jnp.asarray(SIGMA * rng.standard_normal((M, D)).astype(np.float32))

    def ere(x):  # x: [D]
        y = x[None, :] + noise
        r = mlp(den, y) - x[None, :]
        return jnp.sum(r * r) / M

    grad_ere = jax.vmap(jax.grad(ere))

    def purify(x0):
        lo, hi = jnp.maximum(x0 - DELTA, 0.0), jnp.minimum(x0 + DELTA, 1.0)

        def body(_, x):
            return jnp.clip(x - ETA * grad_ere(x), lo, hi)

        return jax.lax.fori_loop(0, K, body, x0)

    def loss(x0, labels):
        logits = mlp(cls, purify(x0))
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels])

    step = jax.jit(jax.grad(loss))
    batches = [int(b) for b in sys.argv[1:]] or [32, 1]
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    for b in batches:
        x = jnp.asarray(rng.random((b, D)).astype(np.float32))
        y = jnp.asarray(np.arange(b) % C)
        step(x, y).block_until_ready()  # compile
        reps, best = max(3, 320 // b), float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                step(x, y).block_until_ready()
            best = min(best, (time.perf_counter() - t) / reps)
        print(f"batch {b}: {1e3 * best:.2f} ms per step, {1e3 * best / b:.3f} ms per image (best of 5)")


if __name__ == "__main__":
    main()
