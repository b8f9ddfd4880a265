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
    """The synthetic check behind the default (docs/DESIGN.md §4.4): the per-center
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


# Constant rows (`others`), the row shares of a sharded sweep, and the Gram products' precision.
def test_constant_rows_change_nothing_but_get_no_gradient():
    """Eq. 6 over centers + others is Eq. 6 over their concatenation, to the bit; the gradient on `centers`
    is that concatenation's on those rows, and only O(rows of centers x d) is kept for the backward."""
    torch.manual_seed(5)
    full = (torch.randn(301, 24) * 3).requires_grad_()
    whole = uniform_loss(full, chunk_size=40, reduction="center", batch_size=3)
    (whole_grad,) = torch.autograd.grad(whole, full)
    saved = []
    centers = full.detach()[:57].clone().requires_grad_()
    others = full.detach()[57:].clone().requires_grad_()  # asks for a gradient: gets none (constants)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        part = uniform_loss(centers, chunk_size=40, reduction="center", batch_size=3, others=others)
    assert sum(saved) <= 57 * 24
    part.backward()
    assert torch.equal(part, whole) and torch.equal(centers.grad, whole_grad[:57])
    assert others.grad is None
    # single process: asking for the sharded sweep changes nothing
    assert torch.equal(uniform_loss(full, chunk_size=40, reduction="center", batch_size=3, sharded=True), whole)
    with pytest.raises(ValueError, match=r"others must be \(K, 24\)"):
        uniform_loss(centers, others=torch.randn(3, 5))
    with pytest.raises(ValueError, match="precision"):
        uniform_loss(centers, precision="tf32")


@pytest.mark.parametrize("rows,grad_rows", [(25, 13), (29, 29), (85_742, 512), (7, 2), (3, 0)])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_rows_give_every_row_to_one_rank_and_share_the_gradient_rows(rows, grad_rows, world):
    from uniformface.nn.losses import shard_rows

    shares = [shard_rows(rows, grad_rows, rank, world) for rank in range(world)]
    covered = sorted(i for share in shares for first, last in share for i in range(first, last))
    assert covered == list(range(rows))
    gradient_counts = [sum(max(0, min(last, grad_rows) - first) for first, last in share) for share in shares]
    other_counts = [sum(last - first for first, last in share) - g for share, g in zip(shares, gradient_counts)]
    if world > 1:  # one process sweeps everything in one range
        assert max(gradient_counts) - min(gradient_counts) <= 1 and max(other_counts) - min(other_counts) <= 1


def round_to_bits(x, bits):
    """x (float32) rounded to nearest (ties to even) with `bits` significant bits: TF32 11, bfloat16 8."""
    drop = 24 - bits
    i = x.contiguous().view(torch.int32)
    i = (i + ((1 << (drop - 1)) - 1) + ((i >> drop) & 1)) & ~((1 << drop) - 1)
    return i.view(torch.float32)


def gram_tf32(a, b):
    return round_to_bits(a, 11) @ round_to_bits(b, 11).T  # products exact in float32, float32 sums


def gram_bf16(a, b):
    return round_to_bits(a, 8) @ round_to_bits(b, 8).T


def gram_split_bf16(a, b):
    """<a, b> ~ <a_hi, b_hi> + <a_hi, b_lo> + <a_lo, b_hi>, each part bfloat16, summed in float32."""
    a_hi, b_hi = round_to_bits(a, 8), round_to_bits(b, 8)
    a_lo, b_lo = round_to_bits(a - a_hi, 8), round_to_bits(b - b_hi, 8)
    return torch.cat([a_hi, a_hi, a_lo], 1) @ torch.cat([b_hi, b_lo, b_hi], 1).T


def random_unit_centers(m, d=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1).float()


def errors_with_gram(centers, gram):
    """(relative error of Eq. 6, relative error of its gradient's tangential part, which is all that reaches
    the features on the sphere) when only the Gram products come from `gram`; everything else float64."""
    def loss_and_tangential_grad(products):
        c = centers.double()
        sq_norms = (c * c).sum(1)
        distance = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * products).clamp_min(0.0).sqrt()
        distance.fill_diagonal_(1.0)
        potential = 1.0 / (distance + 1.0)
        potential.fill_diagonal_(0.0)
        weight = -2.0 * potential.square() / distance
        grad = c * weight.sum(1, keepdim=True) - weight @ c
        return potential.sum().item(), grad - (grad * c).sum(1, keepdim=True) * c

    loss, grad = loss_and_tangential_grad(centers.double() @ centers.double().T)
    approx_loss, approx_grad = loss_and_tangential_grad(gram(centers, centers).double())
    return abs(approx_loss - loss) / loss, ((approx_grad - grad).norm() / grad.norm()).item()


def predicted_gradient_error(unit_roundoff, m, d=512):
    """docs/DESIGN.md §4.6: rounding the centers' coordinates (relative unit roundoff u) before the Gram
    products errs a row's tangential force by (u / d) sqrt(a^2 M + b^2 d): its own rounding moves all M of
    its distances together (a coherent M / d), its partners' roundings add up at random (sqrt(M d) / d);
    the force itself, from M centers in general position, is about sqrt(M). a = 0.42 and b = 0.77 are
    fitted to the emulated errors at M = 1,000-8,000 (first order gives 0.46 for both)."""
    return unit_roundoff / d * math.sqrt(0.42 ** 2 * m + 0.77 ** 2 * d)


def test_gram_precision_bound_and_the_choice_it_makes():
    """The bound's law measured at M = 2,000 (seconds on a CPU) and carried to 10k and 100k centers: bf16
    products miss 1e-4 on the gradient already at 10k, TF32 at 100k (while the loss itself is fine at
    every precision); split bf16 (three bf16 products) holds at 100k with a wide margin."""
    m = 2000
    centers = random_unit_centers(m)
    measured = {name: errors_with_gram(centers, gram)
                for name, gram in (("tf32", gram_tf32), ("bf16", gram_bf16), ("split", gram_split_bf16))}
    for name, (loss_error, _) in measured.items():
        assert loss_error < 1e-6, name
    for name, bits in (("tf32", 11), ("bf16", 8)):
        ratio = measured[name][1] / predicted_gradient_error(2.0 ** -bits, m)
        assert 0.8 < ratio < 1.25, (name, ratio)  # the law describes what the rounding does
    assert predicted_gradient_error(2.0 ** -8, 10_000) > 1e-4
    assert predicted_gradient_error(2.0 ** -11, 10_000) < 1e-4 < predicted_gradient_error(2.0 ** -11, 100_000)
    # split bf16: about 16 bits, below what float32's own rounding leaves; its law at 100k is far within
    assert measured["split"][1] < 2e-6 and predicted_gradient_error(2.0 ** -16, 100_000) < 1e-5


def test_split_bf16_uniform_loss_is_within_1e_4_of_float64():
    """The implementation's split-bf16 path (emulated on the CPU: bf16 values multiply exactly in float32)
    against float64, on unit centers as the sphere reading gives them, the gradient through the projection
    onto the sphere (what reaches the features): as close as exact float32 is."""
    from bench_uniform_loss import precision_errors

    errors = precision_errors(random_unit_centers(2000))
    assert errors["split"][0] < 1e-6 and errors["split"][1] < 1e-4
    assert errors["split"][1] < 1.5 * errors["float32"][1] + 1e-7, errors


def test_split_bf16_keeps_coinciding_centers_finite():
    centers = random_unit_centers(40, d=16, seed=3)
    centers[7] = centers[3]
    centers = centers.requires_grad_()
    loss = uniform_loss(centers, precision="split-bf16")
    loss.backward()
    assert torch.isfinite(centers.grad).all()
    assert loss.item() == pytest.approx(uniform_reference(centers.detach()), rel=1e-5)
    torch.testing.assert_close(centers.grad[7], centers.grad[3])
