"""relu keeps the sign of zero as torch's does (issue 12, item 5): relu(-0.0) = -0.0."""

import numpy as np
import pytest
import torch

import minimp
import minimp.functional as F

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_of_signed_zeros_infinities_and_nans_has_torchs_bits_and_gradient(dtype):
    values = np.array([-0.0, 0.0, -1.5, 2.0, -np.inf, np.inf, np.nan, -np.nan, -1e-40, 3e-5])
    x = minimp.tensor(values, dtype=dtype, requires_grad=True)
    t = torch.tensor(values, dtype=torch.float32).to(DTYPES[dtype]).requires_grad_()
    out, expected = F.relu(x), torch.relu(t)
    ours = out.numpy().astype(np.float32)
    theirs = expected.detach().float().numpy()
    finite = ~np.isnan(theirs)  # (a NaN's sign is the cast's business, not relu's)
    assert np.signbit(ours[finite]).tolist() == np.signbit(theirs[finite]).tolist()
    np.testing.assert_array_equal(ours, theirs)
    out.backward(minimp.tensor(np.ones(values.shape), dtype=dtype))
    expected.backward(torch.ones_like(expected))
    np.testing.assert_array_equal(x.grad.numpy().astype(np.float32), t.grad.float().numpy())
