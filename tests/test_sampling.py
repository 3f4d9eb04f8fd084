"""Sampling: schedules, preconditioning and guidance against the EDM formulas and diffusers; samplers
against an ODE whose solution is known in closed form."""

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from svd_core import sampling

# The scheduler diffusers ships with the SVD repos (scheduler/scheduler_config.json).
SVD_SCHEDULER = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)


def test_karras_sigmas_follow_edm_equation_5_by_hand():
    n, rho, lo, hi = 5, 7.0, 0.002, 700.0
    expected = [
        (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        for i in range(n)
    ] + [0.0]
    sigmas = sampling.karras_sigmas(n)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    # float32 arithmetic (as sgm): a few ulp of error in the base, times 7 from the power.
    assert torch.allclose(
        sigmas.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0
    )
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-5)


@pytest.mark.parametrize("num_steps", [1, 4, 25])
def test_karras_sigmas_match_diffusers_scheduler(num_steps):
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    scheduler.set_timesteps(num_steps)
    ref = scheduler.sigmas.float()
    assert torch.equal(sampling.karras_sigmas(num_steps, numerics="diffusers"), ref)
    official = sampling.karras_sigmas(num_steps)  # float32 arithmetic, as sgm: ~4e-6 relative apart
    assert torch.allclose(official, ref, rtol=1e-5, atol=0)
    # diffusers feeds the UNet 0.25 ln(sigma) as its "timestep", as the official c_noise.
    c_noise = sampling.v_prediction_scalings(ref[:-1])[3]
    assert torch.allclose(scheduler.timesteps.float(), c_noise, rtol=1e-6, atol=1e-6)


def test_v_prediction_scalings_by_hand():
    for s in (0.002, 0.5, 1.0, 700.0):
        c_skip, c_out, c_in, c_noise = (
            t.item() for t in sampling.v_prediction_scalings(torch.tensor([s]))
        )
        assert c_skip == pytest.approx(1 / (s * s + 1), rel=1e-6)
        assert c_out == pytest.approx(-s / math.sqrt(s * s + 1), rel=1e-6)
        assert c_in == pytest.approx(1 / math.sqrt(s * s + 1), rel=1e-6)
        assert c_noise == pytest.approx(0.25 * math.log(s), rel=1e-6, abs=1e-7)


def test_denoise_scales_only_the_network_input_and_matches_diffusers_step():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2)
    sigma = torch.tensor([3.0, 3.0])
    v = torch.randn_like(x)
    seen = {}

    def network(scaled, c_noise):
        seen["scaled"], seen["c_noise"] = scaled, c_noise
        return v

    denoised = sampling.denoise_v_prediction(network, x, sigma)
    assert torch.allclose(seen["scaled"], x / math.sqrt(10))
    assert torch.allclose(seen["c_noise"], torch.full((2,), 0.25 * math.log(3.0)))
    assert torch.allclose(denoised, x / 10 - 3 / math.sqrt(10) * v)

    # One Euler step equals diffusers' EulerDiscreteScheduler.step on the same network output.
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    scheduler.set_timesteps(4)
    sigmas = scheduler.sigmas.float()
    x = torch.randn(2, 3, 4, 2, 2) * sigmas[0]
    ours = sampling.sample_euler(
        lambda x_, s_: sampling.denoise_v_prediction(lambda a, b: v, x_, s_), x, sigmas[:2]
    )
    ref = scheduler.step(v, scheduler.timesteps[0], x).prev_sample
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4 * x.abs().max().item() * 1e-3)


def test_guidance_schedules_by_hand():
    assert torch.allclose(sampling.linear_guidance(1.0, 2.5, 4), torch.tensor([1.0, 1.5, 2.0, 2.5]))
    assert torch.equal(sampling.constant_guidance(3.0, 3), torch.tensor([3.0, 3.0, 3.0]))
    assert torch.allclose(
        sampling.triangle_guidance(1.0, 3.0, 5), torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])
    )


def test_apply_guidance_per_frame_frame0_gets_min():
    uncond = torch.zeros(2, 3, 1, 1, 1)
    cond = torch.ones(2, 3, 1, 1, 1)
    out = sampling.apply_guidance(uncond, cond, sampling.linear_guidance(1.0, 3.0, 3))
    assert out[:, :, 0, 0, 0].tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="guidance scale must be"):
        sampling.apply_guidance(uncond, cond, torch.ones(4))


# An ODE with a known solution: data ~ N(0, s_data^2) has the ideal denoiser
# D(x, sigma) = x s_data^2 / (s_data^2 + sigma^2), and the probability-flow ODE carries x(sigma_max)
# to x(0) = x(sigma_max) * s_data / sqrt(s_data^2 + sigma_max^2).
S_DATA = 0.5


def gaussian_denoiser(x, sigma):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * S_DATA**2 / (S_DATA**2 + sigma**2)


def exact_end(x0, sigma_max):
    return x0 * S_DATA / math.sqrt(S_DATA**2 + sigma_max**2)


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_samplers_converge_to_the_exact_ode_solution_at_their_order(name, order):
    sampler = sampling.SAMPLERS[name]
    x0 = (
        torch.randn(1, 2, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        * 80
    )
    errors = []
    for steps in (40, 160):
        sigmas = sampling.karras_sigmas(steps, sigma_max=80.0).double()
        out = sampler(gaussian_denoiser, x0.clone(), sigmas)
        exact = exact_end(x0, sigmas[0].item())
        errors.append(((out - exact).abs().max() / exact.abs().max()).item())
    # 4x the steps: error / 4 at first order, / 16 at second (measured: 4.0, 17.6, 18.4).
    assert errors[0] / errors[1] > 0.75 * 4**order
    assert errors[1] < (0.03 if order == 1 else 0.001)


def test_euler_callback_reports_every_step():
    seen = []
    sigmas = sampling.karras_sigmas(3)
    sampling.sample_euler(
        gaussian_denoiser, torch.randn(1, 1, 1, 1, 1), sigmas, callback=seen.append
    )
    assert [s["step"] for s in seen] == [0, 1, 2]
    assert seen[0]["sigma"] == pytest.approx(sigmas[0].item())
    assert set(seen[0]) == {"step", "sigma", "x", "denoised"}


def test_euler_churn_adds_noise_only_when_asked_and_is_seeded():
    sigmas = sampling.karras_sigmas(4, sigma_max=10.0)
    x = torch.randn(1, 2, 1, 2, 2)
    plain = sampling.sample_euler(gaussian_denoiser, x, sigmas)
    churned = [
        sampling.sample_euler(
            gaussian_denoiser, x, sigmas, s_churn=1.0, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert not torch.allclose(plain, churned[0])
    assert torch.equal(churned[0], churned[1])
    # s_tmax below every sigma: churn never applies.
    untouched = sampling.sample_euler(gaussian_denoiser, x, sigmas, s_churn=1.0, s_tmax=1e-4)
    assert torch.equal(untouched, plain)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        sampling.karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sampling.karras_sigmas(3, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="numerics"):
        sampling.karras_sigmas(3, numerics="comfy")
    with pytest.raises(ValueError, match="at least 2 levels"):
        sampling.sample_euler(gaussian_denoiser, torch.zeros(1, 1, 1, 1, 1), torch.tensor([1.0]))
