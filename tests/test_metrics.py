"""PSNR and SSIM against written-out values and scikit-image."""

import math

import pytest
import torch
from skimage.metrics import structural_similarity

from nerfcomp.metrics import mse_to_psnr, psnr, ssim

pytestmark = pytest.mark.usefixtures("one_thread")


def image(h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_inf():
    x = image()
    assert psnr(x, x) == math.inf
    assert mse_to_psnr(0.0) == math.inf


@pytest.mark.parametrize("mse, db", [(0.01, 20.0), (1e-3, 30.0), (1.0, 0.0), (0.25, 6.0206)])
def test_psnr_of_known_mse(mse, db):
    a = torch.zeros(8, 8, 3)
    b = torch.full((8, 8, 3), math.sqrt(mse))  # every pixel off by √mse
    assert psnr(a, b) == pytest.approx(db, abs=1e-4)
    assert psnr(b, a) == psnr(a, b)
    assert mse_to_psnr(mse) == pytest.approx(db, abs=1e-4)


def test_psnr_half_the_pixels_wrong():
    a = torch.zeros(4, 4, 3)
    b = a.clone()
    b[:2] = 0.2  # MSE = .04 / 2 = .02 → 10·log10(50) dB
    assert psnr(a, b) == pytest.approx(10 * math.log10(50), abs=1e-5)


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return structural_similarity(
        a.double().numpy(),
        b.double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=2,
    )


@pytest.mark.parametrize(
    "shape, noise",
    [((16, 16), 0.05), ((16, 16), 0.3), ((24, 17), 0.1), ((11, 11), 0.2)],
)
def test_ssim_matches_skimage(shape, noise):
    g = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(
        torch.linspace(0, 1, shape[0]), torch.linspace(0, 1, shape[1]), indexing="ij"
    )
    clean = torch.stack([x, y, (x * y) ** 0.5], dim=-1)  # smooth structure
    noisy = (clean + noise * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    ours = ssim(clean, noisy)
    assert ours == pytest.approx(skimage_ssim(clean, noisy), abs=1e-6)
    assert ours < 1.0


def test_ssim_random_images_match_skimage():
    a, b = image(seed=0), image(seed=1)
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-6)
    assert abs(ssim(a, b)) < 0.2  # unrelated noise: little structure in common


def test_ssim_of_an_image_with_itself_is_one():
    x = image()
    assert ssim(x, x) == 1.0
    assert ssim(torch.ones(16, 16, 3), torch.ones(16, 16, 3)) == 1.0  # constant: C1, C2 guard


def test_ssim_is_symmetric_and_falls_with_noise():
    x = image(seed=3)
    g = torch.Generator().manual_seed(4)
    scores = [
        ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)) for s in (0.02, 0.1, 0.4)
    ]
    assert scores[0] > scores[1] > scores[2]
    y = image(seed=5)
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)
