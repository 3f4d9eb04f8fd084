"""EDM sampling as pure functions: noise schedules, v-prediction preconditioning, guidance, samplers.

Notation follows Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models" (EDM): x is a noisy latent at noise level sigma, a denoiser D(x, sigma) predicts the clean
latent, and the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma is integrated from
sigma_max down to 0.

A denoiser here is any callable `denoiser(x, sigma) -> denoised` with x (B, F, C, h, w) and sigma
(B,). Samplers call it once per step (Heun: twice) and report each step to an optional `callback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]


# ---- noise schedules ---------------------------------------------------------------------------


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    numerics: str = "official",
) -> torch.Tensor:
    """The EDM noise levels (EDM eq. 5), then a final 0: (num_steps + 1,) float32, decreasing.

    sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    numerics="official" computes in float32 as sgm's EDMDiscretization does; "diffusers" in float64,
    rounded to float32 at the end, as its EulerDiscreteScheduler does (they differ by ~1e-7 relative).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if numerics not in ("official", "diffusers"):
        raise ValueError(f"numerics must be 'official' or 'diffusers', got {numerics!r}")
    dtype = torch.float32 if numerics == "official" else torch.float64
    ramp = torch.linspace(0, 1, num_steps, dtype=dtype)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


# ---- preconditioning ---------------------------------------------------------------------------


def v_prediction_scalings(
    sigma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning for a v-prediction network with sigma_data = 1 (SVD's `VScalingWithEDMcNoise`).

    Returns (c_skip, c_out, c_in, c_noise), each shaped like sigma:
    c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1), c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = 0.25 ln(sigma). The network sees c_noise, never sigma itself.
    """
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against x."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def denoise_v_prediction(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) for a v-prediction network F.

    x (B, F, C, h, w) at noise level sigma (B,); `network(scaled_x, c_noise)` returns the v
    prediction of x's shape. Conditioning that must not be scaled (SVD's image latent) is the
    network's business: it is concatenated after c_in, inside the call.
    """
    c_skip, c_out, c_in, c_noise = v_prediction_scalings(sigma)
    output = network(x * _per_sample(c_in, x), c_noise)
    return output * _per_sample(c_out, x) + x * _per_sample(c_skip, x)


# ---- guidance ----------------------------------------------------------------------------------


def linear_guidance(min_scale: float, max_scale: float, num_frames: int) -> torch.Tensor:
    """The official SVD guidance: a scale per frame rising linearly from min (frame 0) to max: (F,)."""
    return torch.linspace(min_scale, max_scale, num_frames)


def constant_guidance(scale: float, num_frames: int) -> torch.Tensor:
    """The same guidance scale for every frame: (F,)."""
    return torch.full((num_frames,), float(scale))


def triangle_guidance(
    min_scale: float, max_scale: float, num_frames: int, period: float = 1.0
) -> torch.Tensor:
    """A triangle wave over the frames (official `TrianglePredictionGuider`): (F,).

    With period 1 the first and last frames get min_scale and the middle frame max_scale.
    """
    position = torch.linspace(0, 1, num_frames) / period
    wave = 2 * (position - torch.floor(position + 0.5)).abs()
    return wave * (max_scale - min_scale) + min_scale


def constant_max_guidance(min_scale: float, max_scale: float, num_frames: int) -> torch.Tensor:
    """`constant_guidance` in the schedules' common signature: max_scale for every frame, (F,)."""
    return constant_guidance(max_scale, num_frames)


GuidanceSchedule = Callable[[float, float, int], torch.Tensor]  # (min, max, num_frames) -> (F,)
# The schedules by the names the command line and SVDPipeline(guidance="...") accept.
GUIDANCE_SCHEDULES: dict[str, GuidanceSchedule] = {
    "linear": linear_guidance,  # official
    "constant": constant_max_guidance,
    "triangle": triangle_guidance,
}


def apply_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance with a scale per frame: uncond + scale[f] * (cond - uncond).

    uncond, cond (B, F, ...); scale (F,). Both references apply it per frame; the official code to the
    denoised prediction, diffusers to the network output (equal up to round-off, as D is affine in it).
    """
    if scale.ndim != 1 or scale.shape[0] != cond.shape[1]:
        raise ValueError(
            f"guidance scale must be (F,) with F={cond.shape[1]} frames, got shape {tuple(scale.shape)}"
        )
    scale = scale.to(cond.device, cond.dtype).reshape(1, -1, *([1] * (cond.ndim - 2)))
    return uncond + scale * (cond - uncond)


# ---- samplers ----------------------------------------------------------------------------------


def _steps(sigmas: torch.Tensor, progress: bool, description: str) -> range:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D tensor of at least 2 levels, got shape {tuple(sigmas.shape)}"
        )
    steps = range(sigmas.numel() - 1)
    return tqdm(steps, desc=description, disable=not progress, leave=False)


def _report(
    callback: Callback | None, step: int, sigma, x: torch.Tensor, denoised: torch.Tensor
) -> None:
    if callback is not None:
        callback({"step": step, "sigma": float(sigma), "x": x, "denoised": denoised})


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """EDM Algorithm 2 without the second-order correction: Euler steps of the probability-flow ODE.

    x is the starting latent at sigmas[0] (already scaled by sqrt(1 + sigma_max^2)). With s_churn > 0,
    noise is added before each step whose sigma lies in [s_tmin, s_tmax], raising sigma by the factor
    1 + gamma, gamma = min(s_churn / n_steps, sqrt(2) - 1) (the official EulerEDMSampler's options).
    """
    ones = x.new_ones(x.shape[0])
    num_steps = sigmas.numel() - 1
    for i in _steps(sigmas, progress, "sampling (euler)"):
        sigma, next_sigma = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / num_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            eps = (
                torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * s_noise
            )
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoiser(x, ones * sigma_hat)
        _report(callback, i, sigma_hat, x, denoised)
        d = (x - denoised) / sigma_hat  # dx/dsigma
        x = x + d * (next_sigma - sigma_hat)
    return x


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun): an Euler step, then the trapezoidal correction.

    The last step (to sigma 0) stays an Euler step. Two denoiser calls per step but the last.
    """
    ones = x.new_ones(x.shape[0])
    for i in _steps(sigmas, progress, "sampling (heun)"):
        sigma, next_sigma = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, ones * sigma)
        _report(callback, i, sigma, x, denoised)
        d = (x - denoised) / sigma
        x_euler = x + d * (next_sigma - sigma)
        if next_sigma == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, ones * next_sigma)) / next_sigma
            x = x + (d + d_next) / 2 * (next_sigma - sigma)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver in t = -ln(sigma).

    Each step is exact for a denoised prediction that is constant over the step; from the second
    step on, the prediction is extrapolated linearly from the previous one. The step to sigma 0
    returns the denoised prediction.
    """
    ones = x.new_ones(x.shape[0])
    previous_denoised = None
    for i in _steps(sigmas, progress, "sampling (dpm++ 2m)"):
        sigma, next_sigma = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, ones * sigma)
        _report(callback, i, sigma, x, denoised)
        if next_sigma == 0:
            x = denoised
        else:
            h = math.log(sigma / next_sigma)  # step length in t = -ln(sigma)
            target = denoised
            if previous_denoised is not None:
                r = math.log(sigmas[i - 1] / sigma) / h  # previous step length / this one
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous_denoised
            x = (next_sigma / sigma) * x - math.expm1(-h) * target
        previous_denoised = denoised
    return x


Sampler = Callable[..., torch.Tensor]  # sampler(denoiser, x, sigmas, callback=..., progress=...)
# The samplers by the names the command line and SVDPipeline(sampler="...") accept.
SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,  # official
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}
