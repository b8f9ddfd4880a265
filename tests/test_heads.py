"""Margin heads against float64 loop references written from the official Caffe layer and the papers
(SPEC section 4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from uniformface.heads import ArcFace, ASoftmax, CosFace, build_head


def sign(v):
    return (v > 0) - (v < 0)


def caffe_quadruple_logits(x, weight, labels, lamb):
    """`margin_inner_product_layer.cpp`, QUADRUPLE (m = 4), element by element in float64."""
    x, weight = x.double().tolist(), weight.double().tolist()
    w_unit = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in weight]
    out = []
    for xi, yi in zip(x, labels.tolist()):
        x_norm = math.sqrt(sum(v * v for v in xi))
        row = []
        for j, wj in enumerate(w_unit):
            dot = sum(a * b for a, b in zip(xi, wj))
            if j != yi:
                row.append(dot)
                continue
            cos = dot / x_norm
            sign_0 = sign(cos)
            sign_3 = sign_0 * sign(2 * cos ** 2 - 1)
            sign_4 = 2 * sign_0 + sign_3 - 3
            margin = x_norm * (sign_3 * (8 * cos ** 4 - 8 * cos ** 2 + 1) + sign_4)
            row.append((margin + lamb * dot) / (1 + lamb))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def psi_reference(cos, m):
    theta = math.acos(max(-1.0, min(1.0, cos)))
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def general_logits(x, weight, labels, m, lamb):
    x, weight = x.double(), weight.double()
    out = torch.zeros(len(x), len(weight), dtype=torch.float64)
    for i in range(len(x)):
        norm = math.sqrt(float((x[i] * x[i]).sum()))
        for j in range(len(weight)):
            cos = float(x[i] @ weight[j]) / norm / math.sqrt(float(weight[j] @ weight[j]))
            out[i, j] = norm * cos if j != labels[i] else norm * (lamb * cos + psi_reference(cos, m)) / (1 + lamb)
    return out


def lambda_reference(iteration):
    return max(5.0, 1000.0 * (1.0 + 0.12 * iteration) ** -1.0)


def sample(n=6, d=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 7, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("iteration", [1, 10, 300, 1658, 1659, 20000])
def test_asoftmax_matches_caffe_layer(iteration, device):
    x, labels = sample()
    head = ASoftmax(8, 5)
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.5, 2.0, 5)[:, None])  # unnormalised rows
    weight_before = head.weight.detach().clone()
    head.iteration.fill_(iteration - 1)
    head.to(device).train()
    logits = head(x.to(device), labels.to(device)).cpu()
    assert int(head.iteration) == iteration
    expected = caffe_quadruple_logits(x, weight_before, labels, lambda_reference(iteration))
    torch.testing.assert_close(logits.double(), expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    head64 = ASoftmax(8, 5).double()
    with torch.no_grad():
        head64.weight.copy_(weight_before.double())
    head64.iteration.fill_(iteration - 1)
    torch.testing.assert_close(head64(x.double(), labels), expected, rtol=1e-12, atol=1e-12)


def test_asoftmax_covers_every_branch_of_psi():
    """Targets at angles in all four k intervals of m = 4, including exactly 0 and pi."""
    torch.manual_seed(3)
    head = ASoftmax(2, 1).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    angles = [0.0, 0.3, 0.9, 1.5, 1.7, 2.2, 2.5, 3.0, math.pi]
    x = torch.tensor([[2 * math.cos(a), 2 * math.sin(a)] for a in angles], dtype=torch.float64)
    labels = torch.zeros(len(angles), dtype=torch.long)
    head.iteration.fill_(4999)
    expected = caffe_quadruple_logits(x, head.weight.detach(), labels, lambda_reference(5000))
    torch.testing.assert_close(head(x, labels), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_asoftmax_other_margins_follow_the_general_psi(m):
    x, labels = sample(seed=m)
    head = ASoftmax(8, 5, m=m).double()
    head.iteration.fill_(99)
    expected = general_logits(x, head.weight.detach(), labels, m, lambda_reference(100))
    torch.testing.assert_close(head(x.double(), labels), expected, rtol=1e-10, atol=1e-10)


def test_lambda_schedule():
    head = ASoftmax(4, 3)
    x, labels = torch.randn(2, 4), torch.tensor([0, 2])
    assert int(head.iteration) == 0
    head(x, labels)
    assert int(head.iteration) == 1
    assert head.lamb == pytest.approx(1000 / 1.12, rel=1e-12)
    head.iteration.fill_(1657)
    head(x, labels)
    assert int(head.iteration) == 1658 and head.lamb > 5.0
    head(x, labels)
    assert int(head.iteration) == 1659 and head.lamb == 5.0
    for it in (1, 500, 1658, 1659, 30000):
        assert head.lambda_at(it) == pytest.approx(lambda_reference(it), rel=1e-12)
    assert lambda_reference(1658) > 5.0 and lambda_reference(1659) == 5.0


def test_eval_does_not_advance_the_iteration_nor_touch_the_weights():
    head = ASoftmax(4, 3)
    with torch.no_grad():
        head.weight.mul_(3.0)
    before = head.weight.detach().clone()
    head.iteration.fill_(41)
    head.eval()
    x, labels = torch.randn(2, 4), torch.tensor([0, 1])
    head(x, labels)
    head(x, labels)
    assert int(head.iteration) == 41
    assert torch.equal(head.weight, before)


def test_training_forward_renormalises_the_stored_rows_like_caffe():
    head = ASoftmax(4, 3)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[0.2], [3.0], [7.0]]))
    direction = F.normalize(head.weight.detach().clone(), dim=1)
    head(torch.randn(2, 4), torch.tensor([0, 1]))
    torch.testing.assert_close(head.weight.detach().norm(dim=1), torch.ones(3))
    torch.testing.assert_close(head.weight.detach(), direction)


def test_iteration_is_a_saved_long_buffer():
    head = ASoftmax(4, 3)
    head.iteration.fill_(1234)
    state = head.state_dict()
    assert state["iteration"].dtype == torch.long and int(state["iteration"]) == 1234
    fresh = ASoftmax(4, 3)
    fresh.load_state_dict(state)
    assert int(fresh.iteration) == 1234 and fresh.lamb == pytest.approx(lambda_reference(1234))


def test_asoftmax_gradient_is_autograds_of_the_forward():
    x, labels = sample(n=4, d=5, c=3, seed=7)
    head = ASoftmax(5, 3).double().eval()
    head.iteration.fill_(200)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: _with_weight(head, w, a, labels), (x, head.weight.detach().clone().requires_grad_()))


def _with_weight(head, weight, x, labels):
    return torch.func.functional_call(head, {"weight": weight, "iteration": head.iteration}, (x, labels))


HEADS = [lambda: ASoftmax(3, 2), lambda: CosFace(3, 2), lambda: ArcFace(3, 2)]


@pytest.mark.parametrize("make", HEADS)
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_gradients_are_finite_at_cos_plus_minus_one(make, direction):
    head = make()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    x = torch.tensor([[direction * 4.0, 0.0, 0.0], [0.0, direction * 2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    loss = F.cross_entropy(head(x, labels), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("make", [lambda: ASoftmax(16, 7), lambda: CosFace(16, 7), lambda: ArcFace(16, 7)])
def test_bf16_autocast_keeps_the_margin_math_in_float32(make, device):
    torch.manual_seed(5)
    head = make().eval().to(device)
    x, labels = (torch.randn(8, 16) * 5).to(device), torch.randint(0, 7, (8,)).to(device)
    plain = head(x, labels)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mixed = head(x, labels)
    assert mixed.dtype == torch.float32
    # bf16 keeps ~3 significant digits: a bf16 cosine would be off by ~1e-2 of the logit scale.
    torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def cosine_matrix(x, weight):
    x, weight = x.double(), weight.double()
    return torch.tensor([[float(xi @ wj) / math.sqrt(float(xi @ xi) * float(wj @ wj)) for wj in weight] for xi in x],
                        dtype=torch.float64)


def test_cosface_matches_formula():
    x, labels = sample(seed=11)
    head = CosFace(8, 5, s=30.0, m=0.2)
    cos = cosine_matrix(x, head.weight.detach())
    expected = torch.tensor([[30.0 * (cos[i, j] - (0.2 if j == labels[i] else 0.0)) for j in range(5)]
                             for i in range(len(x))], dtype=torch.float64)
    torch.testing.assert_close(head(x, labels).double(), expected, rtol=1e-5, atol=1e-4)


def test_arcface_matches_formula_including_the_fallback():
    torch.manual_seed(2)
    head = ArcFace(2, 3, s=64.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))
    angles = [0.1, 1.0, 2.5, 2.9, 3.1]  # the last two have theta + m > pi: the fallback branch
    x = torch.tensor([[math.cos(a), math.sin(a)] for a in angles]) * 3
    labels = torch.zeros(len(angles), dtype=torch.long)
    cos = cosine_matrix(x, head.weight.detach())
    expected = 64.0 * cos.clone()
    for i in range(len(angles)):
        c = cos[i, 0].item()
        theta = math.acos(c)
        if c > math.cos(math.pi - 0.5):
            expected[i, 0] = 64.0 * math.cos(theta + 0.5)
        else:
            expected[i, 0] = 64.0 * (c - math.sin(math.pi - 0.5) * 0.5)
    assert (cos[:, 0] <= math.cos(math.pi - 0.5)).sum() == 2
    torch.testing.assert_close(head(x, labels).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,cls", [("sphereface", ASoftmax), ("cosface", CosFace), ("arcface", ArcFace)])
def test_build_head_and_weight_init(name, cls):
    head = build_head(name, 64, 1000)
    assert type(head) is cls and head.weight.shape == (1000, 64)
    bound = math.sqrt(3.0 / 64)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.99 * bound


def test_build_head_errors_name_the_problem():
    with pytest.raises(ValueError, match="sphereface, cosface, arcface"):
        build_head("softmax", 4, 3)
    with pytest.raises(TypeError, match="cosface"):
        build_head("cosface", 4, 3, base=1000)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        ASoftmax(4, 3)(torch.randn(2, 5), torch.tensor([0, 1]))


def test_default_margins_are_the_papers():
    """SPEC §4: A-Softmax m=4 with lambda (1000, 0.12, 1, 5); CosFace s=64 m=0.35; ArcFace s=64 m=0.5."""
    from uniformface.heads import ArcFace, ASoftmax, CosFace

    cos, arc, sphere = CosFace(2, 3), ArcFace(2, 3), ASoftmax(2, 3)
    assert (cos.s, cos.m) == (64.0, 0.35) and (arc.s, arc.m) == (64.0, 0.5)
    assert [sphere.lambda_at(i) for i in (0, 1, 1659)] == [1000.0, 1000.0 / 1.12, 5.0]
