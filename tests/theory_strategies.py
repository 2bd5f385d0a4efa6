"""Shared hypothesis strategies for the theory tests: extreme but valid softmax inputs."""
import numpy as np
from hypothesis import strategies as st

from learning_dynamics.theory.softmax import softmax

SIZES = st.sampled_from([2, 3, 5, 17, 256, 10_000])
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 3.0, 30.0, 1e3])
FLOORS = st.sampled_from([1e-12, 1e-9, 1e-4])
ETAS = st.sampled_from([1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3])


@st.composite
def distributions(draw, sizes=SIZES):
    """(p [V], k): softmax of scaled Gaussian logits (|z| up to ~4e3), floored at 1e-12..1e-4
    so every label has mass; k is a random label, the argmin (a "valley") or the argmax."""
    V = draw(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    p = softmax(draw(SCALES) * rng.standard_normal(V))
    floor = draw(FLOORS)
    floor = min(floor, 0.5 / V)
    p = p * (1.0 - V * floor) + floor
    p /= p.sum()
    how = draw(st.sampled_from(["random", "argmin", "argmax"]))
    k = {"random": int(rng.integers(V)), "argmin": int(np.argmin(p)), "argmax": int(np.argmax(p))}[how]
    return p, k
