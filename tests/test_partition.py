import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedabd.data.partition import partition


def _labels(n, classes, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, classes, n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 400), clients=st.integers(1, 10), classes=st.integers(1, 10), seed=st.integers(0, 2**31),
       scheme=st.sampled_from(["iid", "dirichlet", "pathological"]), alpha=st.floats(0.05, 100),
       k=st.integers(1, 3))
def test_every_sample_assigned_exactly_once(n, clients, classes, seed, scheme, alpha, k):
    labels = _labels(n, classes, seed)
    try:
        parts = partition(labels, clients, scheme, seed=seed, alpha=alpha, classes_per_client=k)
    except ValueError as e:  # only the documented impossible cases may refuse
        assert "could not draw" in str(e) or "too many clients" in str(e)
        return
    assert len(parts) == clients
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n))
    assert min(len(p) for p in parts) >= 1  # no empty client unless asked


def test_deterministic_and_seed_dependent():
    labels = _labels(500, 10, 0)
    a = partition(labels, 5, "dirichlet", seed=1, alpha=0.3)
    b = partition(labels, 5, "dirichlet", seed=1, alpha=0.3)
    c = partition(labels, 5, "dirichlet", seed=2, alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_small_alpha_is_skewed_and_pathological_limits_classes():
    labels = torch.arange(2000) % 10
    skew = partition(labels, 5, "dirichlet", seed=0, alpha=0.05)
    flat = partition(labels, 5, "dirichlet", seed=0, alpha=1000.0)

    def mean_classes(parts):
        return np.mean([len(np.unique(labels[p].numpy())) for p in parts])

    assert mean_classes(skew) < mean_classes(flat)
    patho = partition(labels, 5, "pathological", seed=0, classes_per_client=2)
    assert all(len(np.unique(labels[p].numpy())) <= 2 for p in patho)


def test_empty_clients_only_when_allowed():
    labels = torch.arange(30) % 3
    parts = partition(labels, 10, "dirichlet", seed=0, alpha=0.01, allow_empty=True)
    assert sorted(np.concatenate(parts).tolist()) == list(range(30))


@pytest.mark.parametrize("kwargs, msg", [
    (dict(scheme="dirichlet", alpha=0.0), "alpha must be > 0"),
    (dict(scheme="bogus"), "unknown partition scheme"),
    (dict(scheme="iid", n_clients=0), "must be >= 1"),
    (dict(scheme="iid", n_clients=100), "cannot split"),
])
def test_bad_arguments(kwargs, msg):
    kwargs.setdefault("n_clients", 3)
    with pytest.raises(ValueError, match=msg):
        partition(torch.arange(10) % 2, kwargs.pop("n_clients"), **kwargs)
