"""Margin heads against float64 loop references written from the official Caffe layer and the papers
(margin_inner_product_layer.cpp)."""
import math

import pytest
import torch
import torch.nn.functional as F

from uniformface.nn.heads import ArcFace, ASoftmax, CosFace, build_head


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


def test_asoftmax_autograd_mode_passes_gradcheck():
    x, labels = sample(n=4, d=5, c=3, seed=7)
    head = ASoftmax(5, 3, gradient="autograd").double().eval()
    head.iteration.fill_(200)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: _with_weight(head, w, a, labels), (x, head.weight.detach().clone().requires_grad_()))


def _with_weight(head, weight, x, labels):
    return torch.func.functional_call(head, {"weight": weight, "iteration": head.iteration}, (x, labels))


HEADS = [lambda: ASoftmax(3, 2), lambda: ASoftmax(3, 2, gradient="autograd"), lambda: CosFace(3, 2),
         lambda: ArcFace(3, 2)]


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


@pytest.mark.parametrize("make", [lambda: ASoftmax(16, 7), lambda: ASoftmax(16, 7, gradient="autograd"),
                                  lambda: CosFace(16, 7), lambda: ArcFace(16, 7)])
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
    """The papers' values: A-Softmax m=4 with lambda (1000, 0.12, 1, 5); CosFace s=64 m=0.35; ArcFace s=64 m=0.5."""
    from uniformface.nn.heads import ArcFace, ASoftmax, CosFace

    cos, arc, sphere = CosFace(2, 3), ArcFace(2, 3), ASoftmax(2, 3)
    assert (cos.s, cos.m) == (64.0, 0.35) and (arc.s, arc.m) == (64.0, 0.5)
    assert [sphere.lambda_at(i) for i in (0, 1, 1659)] == [1000.0, 1000.0 / 1.12, 5.0]


# ------------------------------------------------------------------ the official backward (Backward_cpu)
def caffe_backward(x, weight, labels, top_diff, m, lamb, normalise=True):
    """`margin_inner_product_layer.cpp` Backward_cpu (types SINGLE..QUADRUPLE for m = 1..4), line by line in
    float64 loops, after Forward_cpu has renormalised the weight rows and set the sign_* blobs. Returns
    (bottom_diff, weight_diff). `normalise=False` skips the `coeff / coeff_norm` lines."""
    x, top = x.double().tolist(), top_diff.double().tolist()
    w = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in weight.double().tolist()]
    M, N, K = len(x), len(w), len(x[0])
    weight_diff = [[sum(top[i][j] * x[i][k] for i in range(M)) for k in range(K)] for j in range(N)]
    bottom = [[0.0] * K for _ in range(M)]

    def axpby(alpha, vec, out):
        for k in range(K):
            out[k] += alpha * vec[k]

    for i in range(M):
        x_norm = math.sqrt(sum(v * v for v in x[i]))
        if m == 1:  # SINGLE: top_diff * W
            for j in range(N):
                axpby(top[i][j], w[j], bottom[i])
            continue
        for j in range(N):
            if j != int(labels[i]):
                axpby(1.0 / (1.0 + lamb) * top[i][j], w[j], bottom[i])
                continue
            cos = sum(a * b for a, b in zip(x[i], w[j])) / x_norm
            sign_0 = sign(cos)
            if m == 2:
                coeff_w = 4.0 * sign_0 * cos
                coeff_x = 1.0 / (-x_norm) * (2.0 * sign_0 * cos ** 2 + 1.0)
            elif m == 3:
                sign_1 = sign(abs(cos) - 0.5)
                sign_2 = sign_0 * (1 + sign_1) - 2
                coeff_w = sign_1 * (12.0 * cos ** 2 - 3.0)
                coeff_x = 1.0 / (-x_norm) * (8.0 * sign_1 * cos ** 3 - sign_2)
            else:
                sign_3 = sign_0 * sign(2 * cos ** 2 - 1)
                sign_4 = 2 * sign_0 + sign_3 - 3
                coeff_w = sign_3 * (32.0 * cos ** 3 - 16.0 * cos)
                coeff_x = 1.0 / (-x_norm) * (sign_3 * (24.0 * cos ** 4 - 8.0 * cos ** 2 - 1.0) - sign_4)
            if normalise:
                coeff_norm = math.sqrt(coeff_w * coeff_w + coeff_x * coeff_x)
                coeff_w, coeff_x = coeff_w / coeff_norm, coeff_x / coeff_norm
            axpby(1.0 / (1.0 + lamb) * top[i][j] * coeff_w, w[j], bottom[i])
            axpby(1.0 / (1.0 + lamb) * top[i][j] * coeff_x, x[i], bottom[i])
        for j in range(N):  # + lambda / (1 + lambda) top_diff * W, every column
            axpby(lamb / (1.0 + lamb) * top[i][j], w[j], bottom[i])
    return torch.tensor(bottom, dtype=torch.float64), torch.tensor(weight_diff, dtype=torch.float64)


def head_gradients(m, iteration, gradient, dtype, device="cpu", seed=0):
    """One training forward of a head with unnormalised rows at `iteration`, backward of a random top_diff."""
    x, labels = sample(n=7, d=6, c=5, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    top_diff = torch.randn(7, 5, generator=g, dtype=torch.float64)
    head = ASoftmax(6, 5, m=m, gradient=gradient).to(dtype)
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.5, 2.0, 5, dtype=dtype)[:, None])
    weight_before = head.weight.detach().clone()
    head.iteration.fill_(iteration - 1)
    head.to(device).train()
    xd = x.to(dtype).to(device).requires_grad_()
    head(xd, labels.to(device)).backward(top_diff.to(dtype).to(device))
    return (x, weight_before, labels, top_diff), xd.grad.cpu().double(), head.weight.grad.cpu().double()


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("iteration", [1, 1659])  # lambda = 1000/1.12 = 892.857 (first step) and 5
def test_official_gradient_matches_caffe_backward(m, iteration):
    lamb = lambda_reference(iteration)
    (x, weight, labels, top_diff), grad_x, grad_w = head_gradients(m, iteration, "official", torch.float64)
    expected_x, expected_w = caffe_backward(x, weight, labels, top_diff, m, lamb)
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-10, atol=1e-12)
    if m > 1:  # the normalisation matters (if only ~1/(1 + lambda) of it at the first step): a different gradient
        unnormalised, _ = caffe_backward(x, weight, labels, top_diff, m, lamb, normalise=False)
        assert (grad_x - unnormalised).abs().max() > 1e-2 / (1 + lamb) * expected_x.abs().max()


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("iteration", [1, 1659])
def test_official_gradient_in_float32_on_each_device(m, iteration, device):
    (x, weight, labels, top_diff), grad_x, grad_w = head_gradients(m, iteration, "official", torch.float32, device)
    expected_x, expected_w = caffe_backward(x, weight, labels, top_diff, m, lambda_reference(iteration))
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-4, atol=1e-5 * expected_x.abs().max().item())
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-4, atol=1e-5 * expected_w.abs().max().item())


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("iteration", [1, 1659])
def test_autograd_mode_is_caffe_backward_without_the_division_by_n(m, iteration):
    (x, weight, labels, top_diff), grad_x, _ = head_gradients(m, iteration, "autograd", torch.float64, seed=1)
    expected_x, _ = caffe_backward(x, weight, labels, top_diff, m, lambda_reference(iteration), normalise=False)
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-10, atol=1e-12)


# cos theta = +-1, and each m's cosines where coeff_w vanishes (DOUBLE: 0; TRIPLE: +-1/2; QUADRUPLE: 0, +-1/sqrt 2)
SPECIAL_COSINES = {1: [1.0, -1.0, 0.0], 2: [1.0, -1.0, 0.0], 3: [1.0, -1.0, 0.5, -0.5],
                   4: [1.0, -1.0, 0.0, 2 ** -0.5, -(2 ** -0.5)]}


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_official_gradient_is_finite_at_special_cosines(m, dtype):
    cosines = SPECIAL_COSINES[m]
    x = torch.tensor([[3 * c, 3 * math.sqrt(max(0.0, 1 - c * c)), 0.0] for c in cosines] + [[0.0, 0.0, 0.0]],
                     dtype=dtype, requires_grad=True)  # the last row: a zero feature (|x| = 0)
    labels = torch.zeros(len(x), dtype=torch.long)
    head = ASoftmax(3, 2, m=m).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    top_diff = torch.linspace(-1.0, 2.0, 2 * len(x), dtype=dtype).view(len(x), 2)
    head(x, labels).backward(top_diff)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    # where the cosine is exact (+-1, 0) the signs are unambiguous: compare with the transcription
    exact = [i for i, c in enumerate(cosines) if c in (1.0, -1.0, 0.0)]
    expected, _ = caffe_backward(x.detach()[exact], head.weight.detach(), labels[exact], top_diff[exact], m,
                                 lambda_reference(1))
    torch.testing.assert_close(x.grad[exact].double(), expected, rtol=1e-5, atol=1e-6)


def test_official_gradient_under_bf16_autocast_is_the_float32_one(device):
    torch.manual_seed(5)
    head = ASoftmax(16, 7).eval().to(device)
    x, labels = (torch.randn(8, 16) * 5).to(device), torch.randint(0, 7, (8,)).to(device)
    top_diff = torch.randn(8, 7).to(device)
    grads = []
    for enabled in (False, True):
        xi = x.clone().requires_grad_()
        head.weight.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            logits = head(xi, labels)
            logits.backward(top_diff)
        grads.append((xi.grad, head.weight.grad.clone()))
    for plain, mixed in zip(*grads):
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_official_and_autograd_share_the_forward_and_the_renormalisation():
    x, labels = sample(seed=4)
    heads = [ASoftmax(8, 5, gradient=g) for g in ("official", "autograd")]
    heads[1].load_state_dict(heads[0].state_dict())
    for head in heads:
        with torch.no_grad():
            head.weight.mul_(3.0)
        head.iteration.fill_(10)
    out = [head(x, labels) for head in heads]
    assert torch.equal(out[0], out[1])
    assert torch.equal(heads[0].weight, heads[1].weight) and int(heads[0].iteration) == 11


def test_gradient_option_is_checked():
    assert ASoftmax(4, 3).gradient == "official" and "gradient=official" in repr(ASoftmax(4, 3))
    with pytest.raises(ValueError, match="official, autograd"):
        ASoftmax(4, 3, gradient="caffe")
    with pytest.raises(ValueError, match="m = 1..4"):
        ASoftmax(4, 3, m=5)
    assert ASoftmax(4, 3, m=5, gradient="autograd").m == 5
    assert build_head("sphereface", 4, 3, gradient="autograd").gradient == "autograd"


def test_config_default_builds_the_official_gradient():
    from pathlib import Path

    from uniformface.base.config import ConfigError, load_config
    from uniformface.train.build import head_kwargs

    paper = Path(__file__).resolve().parents[1] / "code" / "config.yaml"
    for cfg, expected in ((load_config(None), "official"), (load_config(paper), "official"),
                          (load_config(paper, ["loss.gradient=autograd"]), "autograd")):
        head = build_head(cfg.loss.name, 8, 5, **head_kwargs(cfg))
        assert head.gradient == expected
    with pytest.raises(ConfigError, match="loss.gradient"):
        load_config(None, ["loss.gradient=exact"])


def test_official_gradient_through_a_trainer_step(tmp_path, aligned_tree):
    """A default-config Trainer builds the official head, and one step moves the class weights by exactly
    -lr top_diff^T x (plain SGD here: no momentum, no weight decay)."""
    from uniformface.base.config import load_config
    from uniformface.train.trainer import Trainer

    overrides = [f"dataset.train={aligned_tree}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=16", "batch_size=8", "num_workers=0", "max_iters=1", "device=cpu", "alpha=0",
                 "momentum=0", "weight_decay=0", "warmup_iters=0", "lr=0.1", "deterministic=true"]
    trainer = Trainer(load_config(None, overrides), tmp_path / "run", progress=False)
    head = trainer.model.head
    assert isinstance(head, ASoftmax) and head.gradient == "official"
    captured = {}
    head.register_forward_hook(lambda mod, inputs, out: captured.update(x=inputs[0].detach(), labels=inputs[1],
                                                                         w=mod.weight.detach().clone()))
    images, labels, _ = next(iter(trainer._loader()))
    trainer.step(images, labels)
    x, w = captured["x"].double(), captured["w"].double()
    head_ref = ASoftmax(16, head.num_classes, gradient="autograd").double()
    with torch.no_grad():
        head_ref.weight.copy_(w)
    head_ref.iteration.fill_(0)  # its training forward uses iteration 1, as the trainer's first step
    logits = head_ref(x, captured["labels"]).detach().requires_grad_()  # top_diff: of the mean cross-entropy
    F.cross_entropy(logits, captured["labels"]).backward()
    lr_mult = next(g["lr_mult"] for g in trainer.optimizer.param_groups if any(p is head.weight for p in g["params"]))
    expected = w - 0.1 * lr_mult * logits.grad.t() @ x
    torch.testing.assert_close(head.weight.detach().double(), expected, rtol=1e-4, atol=1e-6)
