"""The kernel profile's classification (scripts/experiments/profile_step.py); the profile itself needs CUDA."""

from __future__ import annotations

import pytest
import torch

from scripts.experiments.profile_step import conv_kind, kernel_kind, profile_step

# recorded input shapes as torch.profiler gives them: tensors as lists, other arguments as []
FORWARD = [[16, 32, 384, 384], [32, 1, 3, 3], [], [], [], [], [], [], []]
BACKWARD = [[16, 32, 384, 384], [16, 32, 384, 384], [32, 1, 3, 3], [], [], [], [], [], [], [], []]


def test_conv_kind_forward_and_backward():
    assert conv_kind(FORWARD) == "depthwise"
    assert conv_kind(BACKWARD) == "depthwise"
    assert conv_kind([[16, 32, 96, 96], [64, 32, 1, 1]]) == "pointwise"
    assert conv_kind([[16, 64, 96, 96], [16, 64, 96, 96], [64, 32, 1, 1]]) == "pointwise"
    assert conv_kind([[16, 64, 48, 48], [64, 32, 2, 2]]) == "2x2 transposed"
    assert conv_kind([[16, 32, 384, 384], [32, 32, 3, 3]]) == "full 3x3"


def test_conv_kind_one_input_channel_is_a_plain_convolution():
    """BasicUNet's first layer has weight (32, 1, 3, 3) like a depthwise one, but one input channel."""
    assert conv_kind([[16, 1, 384, 384], [32, 1, 3, 3]]) == "full 3x3"


def test_conv_kind_without_4d_weights():
    assert conv_kind([[16, 1, 512], [1, 1, 5]]) == "other"  # ECA's 1D convolution
    assert conv_kind([]) == "other"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("triton_red_fused__native_batch_norm_legit_functional_6", "triton reduction"),
        ("triton_per_fused_sum_3", "triton reduction"),
        ("triton_poi_fused__native_batch_norm_legit_functional_hardswish_23", "triton pointwise"),
        ("wgrad2d_c1_k1_nhwc", "convolution (library)"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution (library)"),
        ("nvjet_sm90_tst_64x32_64x16_1x1_h_bz_splitK_NTT", "matrix product (library)"),
        ("Memcpy DtoD (Device -> Device)", "copy / memset"),
        ("void at::native::nll_loss2d_forward_kernel<float>", "other"),
    ],
)
def test_kernel_kind(name, kind):
    assert kernel_kind(name) == kind


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_profile_step_needs_cuda():
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        profile_step()
