"""The compiled decoder's pieces against torch (the whole pass is checked through Context in test_model)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simagents import kernels


@pytest.mark.parametrize("n_out", [24, 27])  # 27: the last outputs outside a 4x4 tile
@pytest.mark.parametrize("rows", range(1, 10))  # the 4-, 2- and 1-row paths and their mixes
def test_linear_equals_torch_on_any_number_of_rows(rows, n_out):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 40)).astype(np.float32)
    w = rng.standard_normal((n_out, 40)).astype(np.float32)  # (out, in), as torch stores it
    b = rng.standard_normal(n_out).astype(np.float32)
    out = np.full((rows, n_out), np.nan, np.float32)
    kernels.linear(x, w, b, out)
    expected = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gelu_is_torchs_exact_gelu_to_float32_rounding():
    u = np.linspace(-12, 12, 48_000, dtype=np.float32).reshape(3, -1)
    expected = F.gelu(torch.from_numpy(u)).numpy()  # the erf form, as nn.GELU()
    h = u.copy()
    kernels.gelu_(h)
    error = np.abs(h - expected)
    assert error.max() < 1e-6 * 12, error.max()
    # the tanh approximation differs by ~1e-3 near |u| = 2: this test would see it
    tanh_form = F.gelu(torch.from_numpy(u), approximate="tanh").numpy()
    assert np.abs(tanh_form - expected).max() > 100 * error.max()


def test_layer_norm_equals_torch():
    rng = np.random.default_rng(0)
    x = (5 + 3 * rng.standard_normal((5, 64))).astype(np.float32)
    w, b = rng.standard_normal((2, 64)).astype(np.float32)
    out = np.empty_like(x)
    kernels.layer_norm(x, w, b, 1e-5, out)
    expected = F.layer_norm(torch.from_numpy(x), (64,), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("log_support", "best"),
    [(-np.inf, 1), (np.log(0.2), 3), (np.log(0.7), 0)],
)
def test_best_supported_takes_the_best_total_among_the_supported(log_support, best):
    # probabilities 0.5, 0.05, 0.15, 0.3 (as log densities up to a shared constant + 2)
    log_p = np.log(np.array([0.5, 0.05, 0.15, 0.3], np.float32)) + 2
    total = np.array([1.0, 9.0, 2.0, 5.0], np.float32)
    assert kernels.best_supported(total, log_p, log_support) == best


def test_best_supported_takes_the_first_of_ties_as_argmax_does():
    total = np.array([0.0, 3.0, 3.0], np.float32)
    assert kernels.best_supported(total, np.zeros(3, np.float32), np.log(0.5)) == int(np.argmax(total)) == 1


def test_evaluation_heads_equal_the_heads_in_torch():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 8)).astype(np.float32)
    value, reward = torch.nn.Linear(8, 7), torch.nn.Linear(8, 1)
    bins = np.linspace(-3, 4, 7).astype(np.float32)
    weight = torch.cat([value.weight, reward.weight]).detach().numpy()
    bias = torch.cat([value.bias, reward.bias]).detach().numpy()
    logits, expected, predicted = kernels.evaluation_heads(h, weight, bias, bins, 2.5)
    with torch.no_grad():
        h_t = torch.from_numpy(h)
        torch.testing.assert_close(torch.from_numpy(logits), value(h_t))
        torch.testing.assert_close(
            torch.from_numpy(expected), F.softmax(value(h_t), -1) @ torch.from_numpy(bins)
        )
        torch.testing.assert_close(torch.from_numpy(predicted), 2.5 * reward(h_t)[:, 0])
