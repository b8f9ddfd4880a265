"""Uniform loss (UniformFace Eq. 6) and RegularFace's regulariser against float64 loop references."""
import math

import pytest
import torch

from uniformface.nn.losses import regularface_loss, uniform_loss


def uniform_reference(centers, reduction="pairs"):
    """Eq. 6 without lambda: 1/(M(M-1)) sum over ordered pairs j1 != j2 of 1/(|c_j1 - c_j2| + 1);
    reduction "center": sum over j1 of the mean over j2 != j1 of the same."""
    c = centers.double().tolist()
    m = len(c)
    total = 0.0
    for j1 in range(m):
        for j2 in range(m):
            if j1 != j2:
                total += 1.0 / (math.dist(c[j1], c[j2]) + 1.0)
    if reduction == "center":
        return sum(sum(1.0 / (math.dist(c[j1], c[j2]) + 1.0) for j2 in range(m) if j2 != j1) / (m - 1)
                   for j1 in range(m))
    return total / (m * (m - 1))


def uniform_gradient_reference(centers):
    """d/dc_i of the above: sum over j != i of 2 * -(c_i - c_j) / (|c_i - c_j| (|c_i - c_j| + 1)^2), / M(M-1)."""
    c = centers.double()
    m = len(c)
    grad = torch.zeros_like(c)
    for i in range(m):
        for j in range(m):
            if i != j:
                diff = c[i] - c[j]
                dist = diff.norm().item()
                grad[i] += -2.0 * diff / (dist * (dist + 1.0) ** 2)
    return grad / (m * (m - 1))


def test_center_reduction_is_each_centers_mean_potential_summed():
    torch.manual_seed(3)
    cpu_centers = torch.randn(7, 5, dtype=torch.float64)
    centers = cpu_centers.clone().requires_grad_()
    loss = uniform_loss(centers, chunk_size=3, reduction="center")
    assert loss.item() == pytest.approx(uniform_reference(cpu_centers, "center"), rel=1e-12)
    loss.backward()
    # M times Eq. 6 as printed, so its gradient is M times the printed one's.
    torch.testing.assert_close(centers.grad, 7 * uniform_gradient_reference(cpu_centers), rtol=1e-9, atol=1e-12)
    # shared out per image of the batch: / batch_size, value and gradient
    per_image = uniform_loss(cpu_centers, reduction="center", batch_size=4)
    assert per_image.item() == pytest.approx(uniform_reference(cpu_centers, "center") / 4, rel=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        uniform_loss(centers, reduction="mean")
    with pytest.raises(ValueError, match="batch_size"):
        uniform_loss(centers, reduction="center", batch_size=0)


def spread_on_the_sphere(m, reduction, steps=2, step_size=0.5, dim=16):
    """Gain in the mean nearest-neighbour angle (degrees) of M crowded unit centers after a few steps of
    gradient descent on L_u, each followed by the projection back onto the sphere."""
    generator = torch.Generator().manual_seed(m)
    pole = torch.zeros(dim)
    pole[0] = 2.0
    points = torch.nn.functional.normalize(torch.randn(m, dim, generator=generator) + pole, dim=1)

    def mean_nearest_angle(p):
        cosine = p @ p.T
        cosine.fill_diagonal_(-2.0)
        return math.degrees(torch.acos(cosine.max(1).values.clamp(-1, 1)).mean().item())

    before = mean_nearest_angle(points)
    for _ in range(steps):
        points.requires_grad_()
        (grad,) = torch.autograd.grad(uniform_loss(points, reduction=reduction), points)
        points = torch.nn.functional.normalize(points.detach() - step_size * grad, dim=1)
    return mean_nearest_angle(points) - before


@pytest.mark.slow
def test_the_center_reduction_spreads_centers_at_any_scale_where_the_printed_one_goes_inert():
    """The synthetic check behind the default (README, "The uniform loss's reading"): the per-center
    reduction moves 100 and 10,000 centers apart alike (its force on a center is 2 / batch_size times the
    mean of the others' pushes, whatever M; here batch_size 1 and the step stand for lr / batch_size);
    Eq. 6 as printed fades like 1/M."""
    gain_small, gain_large = spread_on_the_sphere(100, "center"), spread_on_the_sphere(10_000, "center")
    assert gain_small > 1.0 and gain_large > 0.5 * gain_small
    assert spread_on_the_sphere(10_000, "pairs") < 1e-3 * gain_large


@pytest.mark.parametrize("m,chunk", [(2, None), (5, 1), (9, 4), (9, 9), (17, None)])
def test_value_and_gradient_match_the_double_loop(m, chunk, device):
    torch.manual_seed(m)
    cpu_centers = torch.randn(m, 6, dtype=torch.float64) * 2
    centers = cpu_centers.to(device).requires_grad_()
    loss = uniform_loss(centers, chunk_size=chunk)
    assert loss.item() == pytest.approx(uniform_reference(cpu_centers), rel=1e-12)
    loss.backward()
    torch.testing.assert_close(centers.grad.cpu(), uniform_gradient_reference(cpu_centers), rtol=1e-9, atol=1e-12)


def test_every_ordered_pair_counts():
    """Two points at distance 3: both orders give 1/4, divided by M(M-1) = 2 -> 1/4 (not the earlier
    port's half)."""
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert uniform_loss(centers).item() == pytest.approx(0.25, rel=1e-7)


def test_chunked_equals_unchunked_in_float32():
    torch.manual_seed(0)
    centers = (torch.randn(300, 32) * 3 + 10).requires_grad_()
    full = uniform_loss(centers, chunk_size=300)
    (grad_full,) = torch.autograd.grad(full, centers)
    for chunk in (1, 7, 128):
        part = uniform_loss(centers, chunk_size=chunk)
        (grad_part,) = torch.autograd.grad(part, centers)
        torch.testing.assert_close(part, full, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad_part, grad_full, rtol=1e-5, atol=1e-9)
    assert full.item() == pytest.approx(uniform_reference(centers.detach()), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coinciding_centers_give_a_finite_gradient(dtype):
    torch.manual_seed(1)
    centers = torch.randn(6, 4, dtype=dtype)
    centers[4] = centers[1]
    centers[5] = centers[1]
    centers.requires_grad_()
    loss = uniform_loss(centers)
    loss.backward()
    assert torch.isfinite(centers.grad).all()
    assert loss.item() == pytest.approx(uniform_reference(centers.detach()), rel=1e-6)
    # The coinciding rows share the same pull from the others and nothing from each other.
    torch.testing.assert_close(centers.grad[4], centers.grad[1])
    c = centers.detach().double()
    pull = sum(-2.0 * (c[1] - c[j]) / ((c[1] - c[j]).norm() * ((c[1] - c[j]).norm() + 1) ** 2) for j in (0, 2, 3))
    torch.testing.assert_close(centers.grad[1].double(), pull / 30, rtol=1e-4, atol=1e-7)


def test_all_centers_equal():
    centers = torch.ones(5, 3).requires_grad_()
    loss = uniform_loss(centers)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert torch.count_nonzero(centers.grad) == 0


def test_gradcheck():
    torch.manual_seed(2)
    centers = torch.randn(7, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: uniform_loss(c, chunk_size=3), (centers,))


def test_fewer_than_two_centers_give_zero():
    assert uniform_loss(torch.zeros(0, 4)).item() == 0.0
    assert uniform_loss(torch.randn(1, 4)).item() == 0.0


def test_far_away_centers_stay_finite_and_accurate():
    """Norms of 1e20 overflow |c|^2 in float32; the loss must still be right and finite."""
    torch.manual_seed(3)
    base = torch.randn(8, 16, dtype=torch.float64)
    centers = (base * 1e20).float().requires_grad_()
    loss = uniform_loss(centers)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(centers.grad).all()
    assert loss.item() == pytest.approx(uniform_reference(centers.detach()), rel=1e-5)
    # Large but close centers: the float32 expansion must not cancel into garbage.
    close = (1e4 + base[:, :4] * 1e-1).float().requires_grad_()
    loss = uniform_loss(close)
    assert loss.item() == pytest.approx(uniform_reference(close.detach()), rel=1e-3)


def test_low_precision_input_is_computed_in_float32():
    centers = torch.randn(10, 8).bfloat16().requires_grad_()
    loss = uniform_loss(centers)
    assert loss.dtype == torch.float32
    loss.backward()
    assert centers.grad.dtype == torch.bfloat16 and torch.isfinite(centers.grad.float()).all()
    assert loss.item() == pytest.approx(uniform_reference(centers.detach().float()), rel=1e-5)


def test_autograd_keeps_only_the_centers_not_the_pairwise_matrix():
    """Memory: what the graph saves must be O(M d), never O(M^2)."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    centers = torch.randn(400, 8).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = uniform_loss(centers, chunk_size=50)
    assert sum(saved) <= 400 * 8
    loss.backward()


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\(M, d\)"):
        uniform_loss(torch.randn(3))
    with pytest.raises(ValueError, match="chunk_size"):
        uniform_loss(torch.randn(3, 2), chunk_size=0)


def regularface_reference(weight):
    w = weight.double()
    unit = [row / row.norm() for row in w]
    best = [max(float(unit[i] @ unit[j]) for j in range(len(unit)) if j != i) for i in range(len(unit))]
    return sum(best) / len(best)


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_regularface_matches_loop_and_its_gradient_is_the_max(chunk):
    torch.manual_seed(4)
    weight = torch.randn(9, 5, dtype=torch.float64).requires_grad_()
    loss = regularface_loss(weight, chunk_size=chunk)
    assert loss.item() == pytest.approx(regularface_reference(weight.detach()), rel=1e-12)
    loss.backward()
    # Dense reference: the same max over a masked cosine matrix, differentiated by autograd.
    w = weight.detach().clone().requires_grad_()
    unit = w / w.norm(dim=1, keepdim=True)
    cos = unit @ unit.T - 3.0 * torch.eye(9, dtype=torch.float64)
    cos.max(dim=1).values.mean().backward()
    torch.testing.assert_close(weight.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_regularface_with_one_class_is_zero():
    assert regularface_loss(torch.randn(1, 4)).item() == 0.0


def test_exact_matmul_turns_tf32_off_for_cuda_and_restores_it():
    from uniformface.nn.losses import exact_matmul

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no per-backend fp32_precision switch")
    original = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with exact_matmul(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        with exact_matmul(torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"  # CPU matmuls are left alone
    finally:
        matmul.fp32_precision = original
