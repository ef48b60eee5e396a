"""Flow-matching maths: Euler exactness, zero loss at the true velocity, time samplers, seeding."""

import pytest
import torch

from latentvla.models import flow_matching as fm

torch.set_num_threads(1)


def test_constant_velocity_integrates_exactly():
    noise = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))
    c = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(1))
    for steps in (1, 4, 7):
        out = fm.euler_integrate(lambda x, t: c, noise, steps)
        torch.testing.assert_close(out, noise + c, rtol=0, atol=1e-6)


def test_true_velocity_recovers_data_and_time_runs_from_zero_to_one():
    """The straight path's velocity a - eps, integrated from the noise, lands exactly on the data."""
    g = torch.Generator().manual_seed(2)
    noise, actions = torch.randn(4, 8, 3, generator=g), torch.rand(4, 8, 3, generator=g) * 2 - 1
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        return fm.target_velocity(noise, actions)

    out = fm.euler_integrate(v, noise, 4)
    torch.testing.assert_close(out, actions, rtol=0, atol=1e-6)
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_interpolation_endpoints_and_derivative():
    g = torch.Generator().manual_seed(3)
    noise, actions = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    torch.testing.assert_close(fm.interpolate(noise, actions, torch.zeros(2)), noise)
    torch.testing.assert_close(fm.interpolate(noise, actions, torch.ones(2)), actions)
    t, h = torch.tensor([0.3, 0.6]), 1e-3
    fd = (fm.interpolate(noise, actions, t + h) - fm.interpolate(noise, actions, t)) / h
    torch.testing.assert_close(fd, fm.target_velocity(noise, actions), rtol=0, atol=1e-3)


def test_loss_is_zero_for_true_velocity_and_respects_padding():
    g = torch.Generator().manual_seed(4)
    noise, actions = torch.randn(3, 6, 2, generator=g), torch.randn(3, 6, 2, generator=g)
    u = fm.target_velocity(noise, actions)
    assert torch.equal(fm.flow_matching_loss(u, u, None), torch.zeros(3))
    pred = u.clone()
    pred[:, -2:] += 10.0  # errors only on padded steps
    is_pad = torch.zeros(3, 6, dtype=torch.bool)
    is_pad[:, -2:] = True
    assert torch.equal(fm.flow_matching_loss(pred, u, is_pad), torch.zeros(3))
    assert torch.allclose(fm.flow_matching_loss(pred, u, None), torch.full((3,), 100.0 * 2 / 6))


@pytest.mark.parametrize("kind", ["beta", "uniform"])
def test_time_samplers_in_range_and_seeded(kind):
    a = fm.sample_time(20000, torch.Generator().manual_seed(5), kind=kind)
    b = fm.sample_time(20000, torch.Generator().manual_seed(5), kind=kind)
    assert torch.equal(a, b) and a.shape == (20000,)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_beta_sampler_matches_lara_schedule():
    """t = (s - u)/s, u ~ Beta(1.5, 1): mean (0.999 - 0.6) / 0.999 ~ 0.4, biased toward noisy t (< 0.5)."""
    t = fm.sample_time(50000, torch.Generator().manual_seed(6), kind="beta")
    assert abs(float(t.mean()) - (0.999 - 0.6) / 0.999) < 0.01
    assert float((t < 0.5).float().mean()) > 0.55
    u = fm.sample_time(50000, torch.Generator().manual_seed(6), kind="uniform")
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_general_beta_uses_gamma_path_with_right_mean():
    t = fm.sample_time(40000, torch.Generator().manual_seed(7), kind="beta", alpha=2.0, beta=3.0, s=1.0)
    assert abs(float(t.mean()) - (1 - 2.0 / 5.0)) < 0.01  # t = 1 - u, E[u] = alpha / (alpha + beta)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="uniform"):
        fm.sample_time(4, kind="gaussian")
    with pytest.raises(ValueError, match="num_steps"):
        fm.euler_integrate(lambda x, t: x, torch.zeros(1, 2, 2), 0)
    with pytest.raises(ValueError, match="must match"):
        fm.interpolate(torch.zeros(2, 3, 1), torch.zeros(2, 4, 1), torch.zeros(2))
