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
