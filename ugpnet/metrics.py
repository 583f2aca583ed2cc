"""Image-quality metrics on batches (B,3,H,W) in [0,1]; each returns per-image values (B,).

PSNR and SSIM follow the official validation (reference §5: uint8-rounded RGB, full frame, no crop,
no Y channel). The texture-aware measures catch what PSNR rewards away (over-smoothing):
`high_frequency_energy_ratio` (1.0 ideal, < 1 blurrier than GT, > 1 noisier or hallucinated detail)
and `gmsd` (gradient magnitude similarity deviation, Xue et al. 2014; 0 ideal).
"""


import torch
from torch.nn import functional as F

from ugpnet.images import quantize_levels

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
# dB: identical images have infinite PSNR; means (training validation, evaluation tables) and plots
# count them as this much, so that one perfect image does not make a mean infinite.
PSNR_CAP_DB = 100.0


def psnr(output: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Float PSNR in dB over all channels and pixels."""
    mse = (output.double() - target.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def psnr_uint8(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB on uint8-rounded images, as the official validation (identical images give inf).
    The levels are those an 8-bit file written by ugpnet.images would hold."""
    return psnr(quantize_levels(output), quantize_levels(target), data_range=255.0)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype=dtype, device=device)


def ssim(output: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM (Wang et al. 2004): 11×11 Gaussian window σ 1.5, K1 0.01, K2 0.03, valid region,
    computed per RGB channel and averaged."""
    x, y = output.double(), target.double()
    c = x.shape[1]
    window = gaussian_window(dtype=x.dtype, device=x.device).expand(c, 1, 11, 11)

    def local_mean(z):
        return F.conv2d(z, window, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()


def luma(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def high_frequency_energy_ratio(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Energy of the Laplacian of the output's luma ÷ that of GT (valid region)."""
    laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64,
                             device=output.device).view(1, 1, 3, 3)

    def energy(images):
        return F.conv2d(luma(images.double()), laplacian).pow(2).flatten(1).mean(1)

    return (energy(output) / (energy(target) + 1e-12)).float()


def gmsd(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GMSD on luma in 0–255 after 2×2 average downsampling, Prewitt gradients, c = 170 (the paper's)."""
    prewitt_x = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=torch.float64,
                             device=output.device) / 3
    kernels = torch.stack([prewitt_x, prewitt_x.t()]).unsqueeze(1)

    def gradient_magnitude(images):
        y = F.avg_pool2d(luma(images.double()) * 255, 2)
        g = F.conv2d(y, kernels)
        return g.pow(2).sum(1).sqrt()

    m_out, m_gt = gradient_magnitude(output), gradient_magnitude(target)
    c = 170.0
    similarity = (2 * m_out * m_gt + c) / (m_out**2 + m_gt**2 + c)
    return similarity.flatten(1).std(1, unbiased=False).float()
