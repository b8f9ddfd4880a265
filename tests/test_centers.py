"""Class centers (UniformFace Eq. 7 and the README's reading of how Eq. 6 sees them) against loop
references, plus the distributed path against a single process."""
import contextlib
import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from uniformface.nn.centers import (ClassCenters, GlobalBatch, WeightCenters, mean_min_angle, mean_min_angle_tensor,
                                    mean_min_distance, nearest_center_figures)
from uniformface.nn.heads import CosFace
from uniformface.nn.losses import uniform_loss

C, D = 7, 4


def seeded_centers(scope="all", normalize=False, initialized=(0, 2, 3, 5), seed=0):
    """A ClassCenters (float64) with some classes already initialised to known values."""
    g = torch.Generator().manual_seed(seed)
    centers = ClassCenters(C, D, scope=scope, normalize=normalize).double()
    with torch.no_grad():
        centers.centers.copy_(torch.randn(C, D, generator=g, dtype=torch.float64) * 3)
        for j in range(C):
            if j not in initialized:
                centers.centers[j] = 0.0
        centers.initialized[list(initialized)] = True
    return centers


def loop_loss_centers(stored, initialized, features, labels, scope):
    """The reading written out per class: (set of rows that enter Eq. 6)."""
    rows = []
    for j in sorted(set(labels.tolist())):
        members = [features[i] for i in range(len(labels)) if labels[i] == j]
        total = sum(members)
        if initialized[j]:
            rows.append((stored[j] + total) / (1 + len(members)))
        else:
            rows.append(total / len(members))
    if scope == "all":
        rows += [stored[j] for j in range(len(stored)) if initialized[j] and j not in set(labels.tolist())]
    return torch.stack(rows)


def sort_rows(t):
    return t[torch.argsort(t[:, 0])]


def batch(seed=1, n=9):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 6, 0, 1])[:n]
    return torch.randn(n, D, generator=g, dtype=torch.float64) * 2, labels


@pytest.mark.parametrize("scope", ["all", "batch"])
def test_loss_centers_match_the_reading_of_the_paper(scope):
    centers = seeded_centers(scope)
    features, labels = batch()
    got = centers.loss_centers(features, labels)
    expected = loop_loss_centers(centers.centers, centers.initialized.tolist(), features, labels, scope)
    # classes 0, 1, 2, 6 are in the batch (1 and 6 for the first time); 3 and 5 are absent but initialised.
    assert len(got) == (6 if scope == "all" else 4)
    torch.testing.assert_close(sort_rows(got), sort_rows(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scope", ["all", "batch"])
def test_sphere_reading_averages_unit_features_and_projects_the_centers(scope):
    """normalize=True: c~_j from the unit features x / |x|, then every center divided by its norm."""
    centers = seeded_centers(scope, normalize=True)
    features, labels = batch()
    got = centers.loss_centers(features, labels)
    unit_features = torch.stack([f / math.sqrt(sum(v * v for v in f.tolist())) for f in features])
    expected = loop_loss_centers(centers.centers, centers.initialized.tolist(), unit_features, labels, scope)
    expected = torch.stack([c / math.sqrt(sum(v * v for v in c.tolist())) for c in expected])
    torch.testing.assert_close(sort_rows(got), sort_rows(expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(got), dtype=torch.float64))


def test_sphere_reading_gradient_is_tangential_to_the_features():
    """On the sphere, L_u cannot ask for longer features: its gradient on each x is orthogonal to x."""
    centers = seeded_centers("all", normalize=True)
    features, labels = batch()
    features.requires_grad_()
    (grad,) = torch.autograd.grad(uniform_loss(centers.loss_centers(features, labels)), features)
    assert grad.abs().max() > 1e-6
    cosine = (grad * features).sum(1) / (grad.norm(dim=1) * features.norm(dim=1))
    assert cosine.abs().max() < 1e-12


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("scope", ["all", "batch"])
def test_gradcheck_of_the_moved_center_path(scope, normalize):
    centers = seeded_centers(scope, normalize=normalize)
    features, labels = batch()
    features.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: uniform_loss(centers.loss_centers(x, labels)), (features,))


def test_stored_centers_receive_no_gradient_and_stay_constant():
    centers = seeded_centers()
    before = centers.centers.clone()
    features, labels = batch()
    features.requires_grad_()
    uniform_loss(centers.loss_centers(features, labels)).backward()
    assert not centers.centers.requires_grad and features.grad is not None
    assert torch.equal(centers.centers, before)


def loop_update(stored, initialized, features, labels, rate):
    """UniformFace Eq. 7 per class; first appearance -> mean of the class's features."""
    stored, initialized = stored.clone(), list(initialized)
    for j in set(labels.tolist()):
        idx = [i for i in range(len(labels)) if labels[i] == j]
        if initialized[j]:
            delta = sum(stored[j] - features[i] for i in idx) / (1 + len(idx))
            stored[j] = stored[j] - rate * delta
        else:
            stored[j] = sum(features[i] for i in idx) / len(idx)
            initialized[j] = True
    return stored, initialized


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_update_is_eq7_with_first_appearance_init(rate, device):
    centers = seeded_centers()
    features, labels = batch()
    expected, expected_init = loop_update(centers.centers, centers.initialized.tolist(), features, labels, rate)
    centers.to(device).update(features.to(device), labels.to(device), rate)
    torch.testing.assert_close(centers.centers.cpu(), expected, rtol=1e-12, atol=1e-12)
    assert centers.initialized.tolist() == expected_init
    assert centers.initialized[[1, 6]].all() and not centers.initialized[4]
    assert torch.count_nonzero(centers.centers[4]) == 0


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_sphere_reading_update_is_eq7_on_unit_features(rate):
    centers = seeded_centers(normalize=True)
    features, labels = batch()
    unit_features = torch.stack([f / math.sqrt(sum(v * v for v in f.tolist())) for f in features])
    expected, _ = loop_update(centers.centers, centers.initialized.tolist(), unit_features, labels, rate)
    centers.update(features, labels, rate)
    torch.testing.assert_close(centers.centers, expected, rtol=1e-12, atol=1e-12)


def test_fresh_centers_start_from_the_first_batch_mean():
    centers = ClassCenters(3, 2)
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 5.0]])
    labels = torch.tensor([2, 2, 0])
    assert len(centers.loss_centers(features, labels)) == 2  # only the batch's classes exist yet
    centers.update(features, labels, 0.5)
    torch.testing.assert_close(centers.centers, torch.tensor([[5.0, 5.0], [0.0, 0.0], [2.0, 4.0]]))
    assert centers.initialized.tolist() == [True, False, True]


def test_state_dict_round_trip():
    centers = seeded_centers()
    state = centers.state_dict()
    assert set(state) == {"centers", "initialized"} and state["initialized"].dtype == torch.bool
    assert ClassCenters(C, D).centers.dtype == torch.float32
    fresh = ClassCenters(C, D).double()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.centers, centers.centers) and torch.equal(fresh.initialized, centers.initialized)


def test_initialized_centers_are_the_rows_marked_initialized(device):
    centers = seeded_centers().to(device)
    got = centers.initialized_centers()
    assert not got.requires_grad and got.device == centers.centers.device
    torch.testing.assert_close(got.cpu(), centers.centers.cpu()[[0, 2, 3, 5]], rtol=0, atol=0)


def test_bad_input_is_refused_clearly():
    centers = ClassCenters(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        centers.loss_centers(torch.randn(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="beta"):
        centers.update(torch.randn(2, 2), torch.tensor([0, 1]), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        centers.update(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), 0.5)
    assert not centers.initialized.any()
    with pytest.raises(ValueError, match="scope"):
        ClassCenters(3, 2, scope="some")


def test_weight_centers_use_the_head_weights():
    head = CosFace(D, C).double()
    wc = WeightCenters(head, scope="all")
    assert wc.state_dict() == {} and wc.loss_centers(torch.zeros(1, D), torch.tensor([0])) is head.weight
    features, labels = batch()
    batch_wc = WeightCenters(head, scope="batch", normalize=True)
    got = batch_wc.loss_centers(features, labels)
    expected = torch.stack([head.weight[j] / head.weight[j].norm() for j in (0, 1, 2, 6)])
    torch.testing.assert_close(got, expected)
    uniform_loss(got).backward()
    assert head.weight.grad is not None and torch.count_nonzero(head.weight.grad[[3, 4, 5]]) == 0
    assert torch.count_nonzero(head.weight.grad[[0, 1, 2, 6]]) > 0


def test_weight_centers_update_is_eq7():
    head = CosFace(D, C).double()
    features, labels = batch()
    everyone_initialised = [True] * C
    expected, _ = loop_update(head.weight.detach(), everyone_initialised, features, labels, 0.1)
    WeightCenters(head).update(features, labels, 0.1)
    torch.testing.assert_close(head.weight.detach(), expected, rtol=1e-12, atol=1e-12)


def expansion_uniform_loss(centers):
    """Eq. 6 the way a straightforward port computes it (|a|^2 + |b|^2 - 2 a.b, upper triangle, zeros
    dropped, sqrt): it goes NaN once two weights near-coincide far from the origin."""
    sq_norms = (centers * centers).sum(1, keepdim=True)
    sq = torch.triu(sq_norms + sq_norms.T - 2 * centers @ centers.T, diagonal=1)
    return (1 / (sq[sq != 0].sqrt() + 1)).sum() / (len(centers) * (len(centers) - 1))


def run_weight_centers(loss_fn, rate, steps=150):
    """The earlier port's setting: uniform loss on the head weights, Eq. 7 dragging them toward raw
    features (norm ~5,000) at rate 0.01 / 0.1; classes 20-39 share the features of classes 0-19, so
    pairs of weights converge onto each other. Returns the first non-finite step, or None."""
    torch.manual_seed(0)
    head = CosFace(32, 40)
    wc = WeightCenters(head, scope="all")
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    class_means = torch.randn(40, 32) * 1000
    class_means[20:] = class_means[:20]
    for step in range(steps):
        labels = torch.randint(0, 40, (64,))
        features = class_means[labels]
        loss = loss_fn(wc.loss_centers(features, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not (torch.isfinite(loss) and torch.isfinite(head.weight.grad).all() and torch.isfinite(head.weight).all()):
            return step
        wc.update(features, labels, rate)
    return None


@pytest.mark.parametrize("rate", [0.01, 0.1])
def test_weight_centers_stay_finite_where_the_earlier_port_nand(rate):
    assert run_weight_centers(expansion_uniform_loss, rate) is not None  # the setting is a hard one
    assert run_weight_centers(uniform_loss, rate) is None


def loop_mean_min_distance(points):
    p = points.double().tolist()
    return sum(min(math.dist(a, b) for j, b in enumerate(p) if j != i) for i, a in enumerate(p)) / len(p)


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_mean_min_distance(chunk):
    torch.manual_seed(1)
    points = torch.randn(13, 6) * 4 + 100
    points[7] = points[2] + 1e-3  # a near pair far from the origin
    got = mean_min_distance(points, chunk_size=chunk)
    assert got.item() == pytest.approx(loop_mean_min_distance(points), rel=1e-5)
    with pytest.raises(ValueError, match="M >= 2"):
        mean_min_distance(points[:1])


def test_mean_min_angle():
    torch.manual_seed(2)
    points = torch.randn(11, 5) * 3
    unit = [[v / math.sqrt(sum(w * w for w in p)) for v in p] for p in points.double().tolist()]
    expected = sum(min(math.degrees(math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b))))))
                       for j, b in enumerate(unit) if j != i) for i, a in enumerate(unit)) / len(unit)
    for chunk in (None, 3):
        assert mean_min_angle(points, chunk_size=chunk) == pytest.approx(expected, rel=1e-9)
    assert mean_min_angle(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])) == pytest.approx(90.0)


def loop_nearest_figures(points):
    """Both figures by brute force in float64, each with its own nearest neighbour: (nearest by distance,
    nearest by angle, mean distance to the first, mean angle in degrees to the second)."""
    p = points.double().tolist()

    def degrees_between(a, b):
        cosine = sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
        return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))

    others = [[j for j in range(len(p)) if j != i] for i in range(len(p))]
    by_distance = [min(js, key=lambda j: math.dist(p[i], p[j])) for i, js in enumerate(others)]
    by_angle = [min(js, key=lambda j: degrees_between(p[i], p[j])) for i, js in enumerate(others)]
    distance = sum(math.dist(p[i], p[j]) for i, j in enumerate(by_distance)) / len(p)
    angle = sum(degrees_between(p[i], p[j]) for i, j in enumerate(by_angle)) / len(p)
    return by_distance, by_angle, distance, angle


@pytest.mark.parametrize("chunk", [None, 1, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_center_figures_are_both_figures_from_one_sweep(dtype, chunk):
    """The trainer's log point: the distance and angle figures from one sweep, against a float64 brute
    force, on centers of very unequal norms (the nearest by distance is then often not the nearest by
    angle, and each figure must keep its own), and to the bit what the two separate sweeps give."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(40, 6, generator=g, dtype=torch.float64) + 0.5
    points *= torch.exp(torch.randn(40, 1, generator=g, dtype=torch.float64))  # norms ~0.1x to ~10x each other
    points[11] = points[4] * 3.0 + 1e-3  # nearly the same direction, far apart
    points[23] = points[17] + 1e-4  # a near pair
    points = points.to(dtype)
    by_distance, by_angle, distance, angle = loop_nearest_figures(points)
    assert sum(a != b for a, b in zip(by_distance, by_angle)) >= 5  # a shared neighbour would change a figure
    got_distance, got_angle = nearest_center_figures(points, chunk_size=chunk)
    assert got_distance.dtype == dtype and got_angle.dtype == torch.float64
    assert got_distance.item() == pytest.approx(distance, rel=1e-12 if dtype == torch.float64 else 1e-6)
    assert got_angle.item() == pytest.approx(angle, rel=1e-12)
    assert torch.equal(got_distance, mean_min_distance(points, chunk_size=chunk))
    assert torch.equal(got_angle, mean_min_angle_tensor(points, chunk_size=chunk))
    with pytest.raises(ValueError, match="M >= 2"):
        nearest_center_figures(points[:1])


# ------------------------------------------------------------------------------------------ distributed
WORLD = 2
SPLIT = [5, 4]  # unequal on purpose: ranks may drop different numbers of broken images


def _features_model():
    torch.manual_seed(123)
    return nn.Linear(6, D).double()


def _global_inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(SPLIT), 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2, 6, 2, 0, 1, 4])
    return x, labels


def _one_process_step(model, centers, head, weight_centers, x, labels):
    """What every configuration computes; returns (uniform loss, model grads, centers, head weight)."""
    loss = uniform_loss(centers.loss_centers(model(x), labels))
    loss.backward()
    features = model(x).detach()
    centers.update(features, labels, 0.5)
    uniform_loss(weight_centers.loss_centers(features, labels)).backward()
    weight_centers.update(features, labels, 0.1)
    grads = [p.grad.clone() for p in model.parameters()]
    return loss.detach(), grads, centers.state_dict(), head.weight.detach().clone(), head.weight.grad.clone()


@contextlib.contextmanager
def gloo_rank(rank, init_file, barrier=False, world=WORLD):
    """Rank `rank` of a `world`-process gloo group on the loopback, one thread; `barrier`: wait for every
    rank before tearing down, so that none closes gloo's connections while another still reads."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependence on hostname lookup
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        yield
        if barrier:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank, init_file, out_dir):
    with gloo_rank(rank, init_file):
        model = nn.parallel.DistributedDataParallel(_features_model())
        centers, head = seeded_centers("all"), CosFace(D, C).double()
        torch.manual_seed(5)
        nn.init.normal_(head.weight)
        x, labels = _global_inputs()
        start = sum(SPLIT[:rank])
        rows = slice(start, start + SPLIT[rank])
        result = _one_process_step(model, centers, head, WeightCenters(head, scope="batch"), x[rows], labels[rows])
        ddp_mean(result[-1])  # the trainer's head sits inside DDP (trainer.Recognizer) with the backbone
        torch.save(result, f"{out_dir}/rank{rank}.pt")


def ddp_mean(grad):
    """What DDP does to a parameter's gradient: the mean over the ranks, in place. Each rank's uniform-loss
    gradient covers its share of the rows only (times WORLD, `losses._UniformLoss`); only the mean is the
    single process's gradient."""
    dist.all_reduce(grad)
    grad /= dist.get_world_size()


@pytest.mark.slow
def test_distributed_equals_one_process_with_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    model, centers, head = _features_model(), seeded_centers("all"), CosFace(D, C).double()
    torch.manual_seed(5)
    nn.init.normal_(head.weight)
    x, labels = _global_inputs()
    loss, grads, state, weight, weight_grad = _one_process_step(model, centers, head,
                                                                WeightCenters(head, scope="batch"), x, labels)
    for rank in range(WORLD):
        r_loss, r_grads, r_state, r_weight, r_weight_grad = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(r_loss, loss, rtol=1e-12, atol=1e-14)
        for got, want in zip(r_grads, grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(r_state["centers"], state["centers"], rtol=1e-12, atol=1e-14)
        assert torch.equal(r_state["initialized"], state["initialized"])
        torch.testing.assert_close(r_weight_grad, weight_grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(r_weight, weight, rtol=1e-12, atol=1e-14)


# Uniform loss alone (no cross-entropy to hide an error behind a 1e4 times larger gradient), for every
# reading: the features themselves are the inputs, so that the gathered global batch is bit-identical to
# the one a single process sees.
READINGS = [(normalize, scope, reduction) for normalize in (True, False) for scope in ("all", "batch")
            for reduction in ("center", "pairs")]


def _uniform_only(features, labels, normalize, scope, reduction):
    """(feature gradient, centers after Eq. 7) of one step of the uniform loss alone."""
    centers = seeded_centers(scope, normalize=normalize)
    features = features.clone().requires_grad_()
    loss = uniform_loss(centers.loss_centers(features, labels), reduction=reduction)
    (grad,) = torch.autograd.grad(loss, features)
    centers.update(features.detach(), labels, 0.5)
    return grad, centers.centers.clone()


def _uniform_only_worker(rank, init_file, out_dir):
    with gloo_rank(rank, init_file, barrier=True):
        x, labels = _global_inputs()
        features = torch.tanh(x[:, :D]) * 3
        rows = slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))
        results = [_uniform_only(features[rows], labels[rows], *reading) for reading in READINGS]
        torch.save(results, f"{out_dir}/uniform_rank{rank}.pt")


@pytest.mark.slow
def test_distributed_uniform_loss_alone_equals_one_process(tmp_path):
    """Every rank computes the same L_u from the gathered global batch, so all_gather's backward hands
    each rank WORLD times dL_u/dx for its own rows; DDP's mean over ranks of the parameter gradients
    divides that factor out again. So rank r's feature gradient / WORLD must be the single process's
    gradient for those rows, and the centers must be bit-identical."""
    mp.spawn(_uniform_only_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x, labels = _global_inputs()
    features = torch.tanh(x[:, :D]) * 3
    for index, reading in enumerate(READINGS):
        grad, centers = _uniform_only(features, labels, *reading)
        assert grad.abs().max() > 1e-4, reading  # the loss does reach the features
        for rank in range(WORLD):
            rank_grad, rank_centers = torch.load(tmp_path / f"uniform_rank{rank}.pt")[index]
            rows = slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))
            torch.testing.assert_close(rank_grad / WORLD, grad[rows], rtol=1e-10, atol=1e-14, msg=str(reading))
            assert torch.equal(rank_centers, centers), reading


# One gather a step: the trainer hands one GlobalBatch to the loss's centers and to Eq. 7.
@contextlib.contextmanager
def counted_gathers():
    """Records (kind, shape) of the tensor each all_gather sends while inside: "integer" for the labels and
    their count, "float" for the features (the autograd-aware gather calls dist.all_gather_single too)."""
    calls = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_gather_single")}

    def counting(original):
        def gather(output, tensor, *args, **kwargs):
            calls.append(("float" if tensor.is_floating_point() else "integer", tuple(tensor.shape)))
            return original(output, tensor, *args, **kwargs)
        return gather

    for name, original in originals.items():
        setattr(dist, name, counting(original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def one_exchange(rows, dim):
    """What one exchange of a step's batch sends, rows padded to the largest rank's: the count, the
    labels, the features."""
    return [("integer", (1,)), ("integer", (rows,)), ("float", (rows, dim))]


def _shared_uniform_only(features, labels, normalize, scope, reduction):
    """`_uniform_only` as the trainer's step does it: one GlobalBatch for the loss and for Eq. 7."""
    centers = seeded_centers(scope, normalize=normalize)
    features = features.clone().requires_grad_()
    batch = GlobalBatch(features, labels)
    loss = uniform_loss(centers.loss_centers_of(batch), reduction=reduction)
    (grad,) = torch.autograd.grad(loss, features)
    centers.update_from(batch, 0.5)
    return grad, centers.centers.clone()


def _shared_weight_centers(features, labels):
    """WeightCenters (scope "batch") with one GlobalBatch: (head weight after Eq. 7, its gradient)."""
    head = CosFace(D, C).double()
    torch.manual_seed(5)
    nn.init.normal_(head.weight)
    weight_centers, batch = WeightCenters(head, scope="batch"), GlobalBatch(features, labels)
    uniform_loss(weight_centers.loss_centers_of(batch)).backward()
    weight_centers.update_from(batch, 0.1)
    if dist.is_initialized():
        ddp_mean(head.weight.grad)
    return head.weight.detach().clone(), head.weight.grad.clone()


def _shared_batch_worker(rank, init_file, out_dir):
    with gloo_rank(rank, init_file, barrier=True):
        x, labels = _global_inputs()
        features = torch.tanh(x[:, :D]) * 3
        rows = slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))
        results, gathers = [], []
        for reading in READINGS:
            with counted_gathers() as calls:
                results.append(_shared_uniform_only(features[rows], labels[rows], *reading))
            gathers.append(calls)
        with counted_gathers() as calls:
            weights = _shared_weight_centers(features[rows], labels[rows])
        gathers.append(calls)
        with counted_gathers() as separate:  # the counter sees every exchange: separate calls make two
            _uniform_only(features[rows], labels[rows], *READINGS[0])
        torch.save((results, weights, gathers, separate), f"{out_dir}/shared_rank{rank}.pt")


@pytest.mark.slow
def test_one_global_batch_is_gathered_once_for_the_loss_and_the_update(tmp_path):
    """A GlobalBatch shared by `loss_centers_of` and `update_from` sends the labels and the features once
    a step (not once for the loss and again for Eq. 7), and gives what the separate calls give: with one
    process the same to the bit; with 2 gloo ranks the centers to the bit and the feature gradient
    WORLD times the single process's (all_gather's backward; DDP's averaging divides it out)."""
    mp.spawn(_shared_batch_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x, labels = _global_inputs()
    features = torch.tanh(x[:, :D]) * 3
    single = [_shared_uniform_only(features, labels, *reading) for reading in READINGS]
    for (grad, centers), reading in zip(single, READINGS):
        separate_grad, separate_centers = _uniform_only(features, labels, *reading)
        assert torch.equal(grad, separate_grad) and torch.equal(centers, separate_centers), reading
    weight, weight_grad = _shared_weight_centers(features, labels)
    for rank in range(WORLD):
        results, (r_weight, r_weight_grad), gathers, separate = torch.load(tmp_path / f"shared_rank{rank}.pt")
        assert gathers == [one_exchange(max(SPLIT), D)] * (len(READINGS) + 1), rank
        assert separate == one_exchange(max(SPLIT), D) * 2, rank
        rows = slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))
        for (rank_grad, rank_centers), (grad, centers), reading in zip(results, single, READINGS):
            torch.testing.assert_close(rank_grad / WORLD, grad[rows], rtol=1e-10, atol=1e-14, msg=str(reading))
            assert torch.equal(rank_centers, centers), reading
        torch.testing.assert_close(r_weight_grad, weight_grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(r_weight, weight, rtol=1e-12, atol=1e-14)


# Eq. 6 sharded over the ranks (each sweeps its share of the rows), for M not divisible by the world size.
SHARDED_C, SHARDED_D = 40, 6
SHARDED_LABELS = torch.tensor([1, 1, 3, 0, 5, 7, 7, 2, 9, 11, 4, 13, 15, 17])  # 12 classes, 9 of them new
SHARDED_SPLITS = {2: [8, 6], 3: [5, 5, 4]}  # unequal on purpose


def _sharded_inputs():
    """(shared centers for the bare loss, the global batch's float32 features, a seeded ClassCenters factory,
    a seeded WeightCenters factory). 20 initialised classes + the batch's 9 new ones: M = 29 centers."""
    g = torch.Generator().manual_seed(11)
    shared = torch.randn(25, SHARDED_D, generator=g) * 2
    features = torch.randn(len(SHARDED_LABELS), SHARDED_D, generator=g) * 3
    stored = torch.randn(SHARDED_C, SHARDED_D, generator=g)
    head_weight = torch.randn(SHARDED_C + 1, SHARDED_D, generator=g)  # 41 rows: M = 41 for WeightCenters "all"

    def class_centers(normalize):
        centers = ClassCenters(SHARDED_C, SHARDED_D, scope="all", normalize=normalize)
        with torch.no_grad():
            centers.centers[0::2] = stored[0::2]
            centers.initialized[0::2] = True
        return centers

    def weight_centers():
        head = CosFace(SHARDED_D, SHARDED_C + 1)
        with torch.no_grad():
            head.weight.copy_(head_weight)
        return head, WeightCenters(head, scope="all", normalize=True)

    return shared, features, class_centers, weight_centers


def _sharded_step(shared, features, labels, class_centers, weight_centers):
    """Every sharded case of one step: {case: (loss, gradient)}; the bare-loss gradients as each rank has
    them, the feature gradients as the gather's backward leaves them, the head's after DDP's mean."""
    results = {}
    centers = shared[:13].clone().requires_grad_()  # + 12 constant rows: M = 25
    loss = uniform_loss(centers, chunk_size=4, reduction="center", batch_size=4, others=shared[13:], sharded=True)
    results["bare, others"] = (loss.detach(), torch.autograd.grad(loss, centers)[0])
    centers = shared.clone().requires_grad_()
    loss = uniform_loss(centers, chunk_size=3, sharded=True)
    results["bare, all rows"] = (loss.detach(), torch.autograd.grad(loss, centers)[0])
    for normalize in (True, False):
        x = features.clone().requires_grad_()
        loss = class_centers(normalize).uniform_loss_of(GlobalBatch(x, labels), "center", len(SHARDED_LABELS))
        results[f"ClassCenters normalize={normalize}"] = (loss.detach(), torch.autograd.grad(loss, x)[0])
    head, weights = weight_centers()
    loss = weights.uniform_loss_of(GlobalBatch(features, labels))
    loss.backward()
    if dist.is_initialized():
        ddp_mean(head.weight.grad)
    results["WeightCenters"] = (loss.detach(), head.weight.grad.clone())
    return results


@contextlib.contextmanager
def counted_collectives():
    """Counts the calls of each collective the uniform loss's step may make while inside."""
    counts = {}
    names = ("all_reduce", "all_gather", "all_gather_single", "reduce_scatter_single")
    originals = {name: getattr(dist, name) for name in names}

    def counting(name, original):
        def collective(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)
        return collective

    for name, original in originals.items():
        setattr(dist, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def _sharded_worker(rank, world, init_file, out_dir):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gloo_rank(rank, init_file, barrier=True, world=world):
            shared, features, class_centers, weight_centers = _sharded_inputs()
            split = SHARDED_SPLITS[world]
            rows = slice(sum(split[:rank]), sum(split[:rank + 1]))
            results = _sharded_step(shared, features[rows], SHARDED_LABELS[rows], class_centers, weight_centers)
            x = features[rows].clone().requires_grad_()
            with counted_collectives() as counts:  # one training step's uniform loss, forward and backward
                loss = class_centers(True).uniform_loss_of(GlobalBatch(x, SHARDED_LABELS[rows]), "center", 14)
                loss.backward()
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    torch.save((results, counts, messages), f"{out_dir}/sharded_rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_uniform_loss_equals_one_process(tmp_path, world):
    """Under torch.distributed each rank sweeps its own share of Eq. 6's rows (M = 25, 29, 41: not divisible
    by 2 or 3) and every rank still returns the single process's loss (one all_reduce a step); the
    gradients summed over the ranks (the gather's backward, DDP's mean) are the single process's, to 1e-6.
    No collective warns (torch.distributed.nn.functional.all_gather is deprecated)."""
    mp.spawn(_sharded_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    shared, features, class_centers, weight_centers = _sharded_inputs()
    single = _sharded_step(shared, features, SHARDED_LABELS, class_centers, weight_centers)
    split = SHARDED_SPLITS[world]
    ranks = [torch.load(tmp_path / f"sharded_rank{rank}.pt") for rank in range(world)]
    for case, (loss, grad) in single.items():
        assert grad.abs().max() > 1e-4, case  # the loss does reach what it should
        tolerance = dict(rtol=1e-6, atol=1e-6 * float(grad.abs().max()), msg=case)
        for results, _, _ in ranks:
            torch.testing.assert_close(results[case][0], loss, rtol=1e-6, atol=0, msg=case)
        if case.startswith("bare"):
            # each rank holds world x the gradient of its own rows and nothing else: the work was split
            grad_rows = 13 if case == "bare, others" else 25
            owned = [torch.nonzero(results[case][1].abs().sum(1)).squeeze(1).tolist() for results, _, _ in ranks]
            assert owned == [list(range(grad_rows * r // world, grad_rows * (r + 1) // world))
                             for r in range(world)], case
            total = sum(results[case][1] for results, _, _ in ranks)
            torch.testing.assert_close(total / world, grad, **tolerance)
        elif case.startswith("ClassCenters"):
            for rank, (results, _, _) in enumerate(ranks):
                rows = slice(sum(split[:rank]), sum(split[:rank + 1]))
                torch.testing.assert_close(results[case][1] / world, grad[rows], **tolerance)
        else:
            for results, _, _ in ranks:
                torch.testing.assert_close(results[case][1], grad, **tolerance)
    for _, counts, messages in ranks:
        assert counts == {"all_gather": 2, "all_gather_single": 1, "all_reduce": 1, "reduce_scatter_single": 1}
        assert not [m for m in messages if "deprecated" in m], messages


@pytest.mark.parametrize("normalize", [True, False])
def test_uniform_loss_of_is_eq6_over_loss_centers_to_the_bit(normalize):
    """One process: `uniform_loss_of` (constant rows without a gradient) gives what `uniform_loss` over
    `loss_centers_of` gives, value and feature gradient to the bit; the head's gradient too."""
    shared, features, class_centers, weight_centers = _sharded_inputs()
    for scope in ("all", "batch"):
        centers = class_centers(normalize)
        centers.scope = scope
        got, want = [], []
        for out, compute in ((got, lambda b: centers.uniform_loss_of(b, "center", 14)),
                             (want, lambda b: uniform_loss(centers.loss_centers_of(b), reduction="center",
                                                           batch_size=14))):
            x = features.clone().requires_grad_()
            loss = compute(GlobalBatch(x, SHARDED_LABELS))
            out += [loss, torch.autograd.grad(loss, x)[0]]
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), scope
    grads = []
    for through_loss_of in (True, False):
        head, weights = weight_centers()
        weights.normalize = normalize
        batch = GlobalBatch(features, SHARDED_LABELS)
        loss = weights.uniform_loss_of(batch) if through_loss_of else uniform_loss(weights.loss_centers_of(batch))
        loss.backward()
        grads.append((loss.detach(), head.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
