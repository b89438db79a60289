"""Written-out MLP passes (peerkd.batched.mlp): hand-computed values, and autograd's numbers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from peerkd.batched.cohort import Cohort, DeviceData, class_major, first_read
from peerkd.batched.mlp import (
    mlp_backward,
    mlp_forward,
    mlp_linears,
    one_hot,
    pack,
    relu_backward_,
    shared_forward,
    tall,
    train_grad,
    unpack,
    wide,
    with_ones,
)
from peerkd.batched.stacked import (
    SoftTargets,
    cross_entropy,
    hits_and_nll,
    kd_divergence,
    stack_students,
    stacked_forward,
)
from peerkd.student.batches import CohortPlan
from peerkd.student.models import CNN_SIZES, MLP_WIDTHS, build_model, stacked_mlp
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import WorldSpec, build_world

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a: torch.Tensor, b: torch.Tensor, **tol) -> None:
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **(tol or TOL))


def autograd_of(loss_fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss_fn(z)`` ``(S,)`` and the gradient of its sum with respect to ``z``, by autograd."""
    live = z.detach().clone().requires_grad_(True)
    loss = loss_fn(live)
    return loss.detach(), torch.autograd.grad(loss.sum(), live)[0]


def ce_grad(z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None):
    """``train_grad``'s cross-entropy alone on ``(S, R, C)`` logits: the loss, and the gradient as ``z``."""
    loss, grad = train_grad(z.transpose(1, 2).clone(), one_hot(labels, z.shape[-1]), weight, None, 1.0, None)
    return loss, grad.transpose(1, 2)


def kd_grad(z: torch.Tensor, soft: SoftTargets, t: float, alpha: torch.Tensor):
    """``train_grad``'s KD alone on ``(S, R, C)`` logits: the loss, and the gradient as ``z``."""
    loss, grad = train_grad(z.transpose(1, 2).clone(), None, None, class_major(soft), t, alpha)
    return loss, grad.transpose(1, 2)


def test_cross_entropy_and_its_gradient_by_hand():
    # Prepare: one student, two rows of two classes; logits (0, ln 3): softmax (1/4, 3/4).
    z = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    labels = torch.tensor([[0, 1]])
    # Execute: a mean, and weights (1/4, 3/4) as a step's counts over a shard give them.
    loss, grad = ce_grad(z, labels)
    wloss, wgrad = ce_grad(z, labels, torch.tensor([[0.25, 0.75]]))
    # Assert: -ln p of the label per row; w·(softmax - onehot).
    close(loss, torch.tensor([(math.log(4.0) + math.log(4.0 / 3.0)) / 2]))
    close(grad, torch.tensor([[[(0.25 - 1) / 2, 0.75 / 2], [0.25 / 2, (0.75 - 1) / 2]]]))
    close(wloss, torch.tensor([0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0)]))
    close(wgrad, torch.tensor([[[0.25 * -0.75, 0.25 * 0.75], [0.75 * 0.25, 0.75 * -0.25]]]))


def test_kd_and_its_gradient_by_hand():
    # Prepare: one row; at T = 2 the student's logits (0, 2 ln 3) give softmax (1/4, 3/4); the target is (1/2, 1/2).
    t = 2.0
    z = torch.tensor([[[0.0, 2 * math.log(3.0)]]])
    soft = SoftTargets.of(torch.zeros(1, 1, 2), t)
    # Execute
    loss, grad = kd_grad(z, soft, t, torch.tensor([0.5]))
    # Assert: α·T²·KL(q ‖ p) = 0.5·4·(½ ln 2 + ½ ln(2/3)); gradient α·T/R·(p − q) = 0.5·2·(−¼, ¼).
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    close(loss, torch.tensor([0.5 * 4 * kl]))
    close(grad, torch.tensor([[[-0.25, 0.25]]]))


def test_soft_targets_by_hand_and_as_torchs_softmax():
    # Prepare: at T = 3 the logits (0, 3 ln 3) soften to (1/4, 3/4); a second row far from zero.
    t = torch.tensor([[[0.0, 3 * math.log(3.0)], [1000.0, 1000.0 + 3 * math.log(3.0)]]])
    # Execute
    soft = SoftTargets.of(t, 3.0)
    # Assert: the probabilities, and Σ p log p = ¼ ln ¼ + ¾ ln ¾, in both rows; random rows as torch's.
    close(soft.probs, torch.tensor([[[0.25, 0.75], [0.25, 0.75]]]))
    close(soft.neg_entropy, torch.full((1, 2), 0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    r = torch.randn(4, 9, 10, generator=torch.Generator().manual_seed(5)) * 5
    soft = SoftTargets.of(r, 3.0)
    ref = torch.softmax(r / 3.0, dim=-1)
    close(soft.probs, ref)
    close(soft.neg_entropy, (ref * torch.log_softmax(r / 3.0, dim=-1)).sum(dim=-1))


def test_soft_targets_of_a_view_are_laid_out_in_its_axis_order():
    # Prepare: 3 students' targets on 5 inputs, viewed input-major (no copy).
    t = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(6)) * 3
    # Execute
    by_input, by_student = SoftTargets.of(t.transpose(0, 1), 4.0), SoftTargets.of(t, 4.0)
    # Assert: contiguous input by input, the same numbers as softening student by student.
    assert by_input.probs.is_contiguous() and by_input.neg_entropy.is_contiguous()
    assert torch.equal(by_input.probs, by_student.probs.transpose(0, 1))
    assert torch.equal(by_input.neg_entropy, by_student.neg_entropy.transpose(0, 1))


@pytest.mark.parametrize("block", [12, 40, 1 << 18])  # 1 row a block, 3 rows (the last block short), all at once
def test_soft_targets_block_by_block_are_the_whole_arrays_numbers(block, monkeypatch):
    # Prepare: 7 inputs × 3 students × 4 classes, viewed input-major; the whole computation as reference.
    t = (torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(7)) * 3).transpose(0, 1)
    whole = SoftTargets.of(t, 4.0)
    # Execute: blocks of `block` numbers along the first axis.
    monkeypatch.setattr("peerkd.batched.stacked.SOFT_BLOCK", block)
    soft = SoftTargets.of(t, 4.0)
    # Assert: bit for bit the same, laid out in the view's axis order.
    assert torch.equal(soft.probs, whole.probs) and torch.equal(soft.neg_entropy, whole.neg_entropy)
    assert soft.probs.is_contiguous() and soft.probs.shape == (7, 3, 4)


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_gradient_is_autograds(weighted):
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(4, 9, 10, generator=g) * 3, torch.randint(0, 10, (4, 9), generator=g)
    weight = torch.rand(4, 9, generator=g) / 9 if weighted else None
    loss, grad = ce_grad(z, labels, weight)
    ref_loss, ref_grad = autograd_of(lambda live: cross_entropy(live, labels, weight), z)
    close(loss, ref_loss)
    close(grad, ref_grad)


def test_kd_gradient_is_autograds():
    g = torch.Generator().manual_seed(1)
    z, target, alpha = (
        torch.randn(4, 9, 10, generator=g) * 3,
        torch.randn(4, 9, 10, generator=g),
        torch.rand(4, generator=g),
    )
    soft = SoftTargets.of(target, 4.0)
    loss, grad = kd_grad(z, soft, 4.0, alpha)
    ref_loss, ref_grad = autograd_of(lambda live: alpha * kd_divergence(live, soft, 4.0), z)
    close(loss, ref_loss)
    close(grad, ref_grad)


@pytest.mark.parametrize("temperature", [4.0, 3.0])
def test_one_softmax_for_both_terms_is_autograds(temperature):
    # Prepare: 4 students, 6 private rows (weighted as a step's counts) then 5 transfer rows, class-major logits.
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 11, 10, generator=g) * 3
    labels, weight = torch.randint(0, 10, (4, 6), generator=g), torch.rand(4, 6, generator=g) / 6
    soft, alpha = SoftTargets.of(torch.randn(4, 5, 10, generator=g), temperature), torch.rand(4, generator=g)
    zc = z.transpose(1, 2).contiguous()
    # Execute: the targets a transposed view, the gradient written into a given array.
    out = torch.empty_like(zc)
    loss, grad = train_grad(zc, one_hot(labels, 10), weight, class_major(soft), temperature, alpha, out=out)
    ref_loss, ref_grad = autograd_of(
        lambda live: cross_entropy(live[:, :6], labels, weight) + alpha * kd_divergence(live[:, 6:], soft, temperature),
        z,
    )
    # Assert
    assert grad.data_ptr() == out.data_ptr()
    close(loss, ref_loss)
    close(grad.transpose(1, 2), ref_grad)


def test_a_step_without_its_loss_has_the_same_gradient_and_a_zero_loss():
    # Prepare: 3 students, 4 weighted private rows then 5 transfer rows, class-major logits.
    g = torch.Generator().manual_seed(5)
    zc = torch.randn(3, 10, 9, generator=g) * 3
    labels, weight = torch.randint(0, 10, (3, 4), generator=g), torch.rand(3, 4, generator=g) / 4
    soft, alpha = class_major(SoftTargets.of(torch.randn(3, 5, 10, generator=g), 4.0)), torch.rand(3, generator=g)
    # Execute
    loss, grad = train_grad(zc.clone(), one_hot(labels, 10), weight, soft, 4.0, alpha)
    none, same = train_grad(zc.clone(), one_hot(labels, 10), weight, soft, 4.0, alpha, with_loss=False)
    # Assert: bit for bit the same gradient; the loss left at zero.
    assert torch.equal(same, grad)
    assert none.tolist() == [0.0, 0.0, 0.0] and bool((loss > 0).all())


def test_first_read_is_the_earliest_start_of_a_last_epoch():
    # 3 students of 2 epochs: 4, 2 and 3 steps an epoch -> last epochs start at steps 4, 2 and 3.
    plan = CohortPlan(torch.zeros((8, 3, 1), dtype=torch.int64), None, torch.tensor([8, 4, 6]), torch.tensor([4, 2, 3]))
    assert first_read(plan) == 2


def test_one_hot_is_class_major():
    assert one_hot(torch.tensor([[2, 0]]), 3).tolist() == [[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]]


def test_relu_backward_zeroes_where_the_output_was_not_positive():
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = relu_backward_(grad, torch.tensor([0.0, 0.5, 0.0, 2.0]))
    assert out.data_ptr() == grad.data_ptr()  # in place
    assert grad.tolist() == [0.0, 2.0, 0.0, 4.0]


@pytest.mark.parametrize("name", sorted(MLP_WIDTHS))
def test_zoo_mlps_are_recognised_and_others_not(name):
    assert mlp_linears(build_model(name, (1, 8, 8), 10, seed=0)) == [
        str(1 + 2 * i) for i in range(len(MLP_WIDTHS[name]) + 1)
    ]
    assert mlp_linears(build_model(next(iter(CNN_SIZES)), (1, 8, 8), 10, seed=0)) is None
    assert mlp_linears(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    assert mlp_linears(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))) is None
    assert mlp_linears(nn.Sequential(nn.Flatten(2), nn.Linear(4, 2))) is None
    assert mlp_linears(nn.Sequential(nn.Flatten(1, 2), nn.Linear(4, 2))) is None


@pytest.mark.parametrize("name", ["mlp64", "mlp256x2"])
@pytest.mark.parametrize("shared", [False, True])
def test_forward_and_backward_are_vmap_and_autograds(name, shared):
    # Prepare: 3 students on image inputs (flattened by the model), their own rows or one batch seen by all.
    models = [build_model(name, (1, 8, 8), 10, seed=s) for s in range(3)]
    base, params = stack_students(models)
    g = torch.Generator().manual_seed(2)
    x = (
        torch.randn(5, 1, 8, 8, generator=g).expand(3, 5, 1, 8, 8)
        if shared
        else torch.randn(3, 5, 1, 8, 8, generator=g)
    )
    labels = torch.randint(0, 10, (3, 5), generator=g)
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref_z = stacked_forward(base)(live, x)
    ref_grads = torch.autograd.grad(cross_entropy(ref_z, labels).sum(), list(live.values()))
    names, packed = mlp_linears(base), pack(params, mlp_linears(base))
    rows = with_ones(x[0], 1).expand(3, -1, -1) if shared else with_ones(x)
    # Execute: packed weights; and predicting from the unpacked ones side by side (wide).
    z, acts = mlp_forward(packed, names, rows)
    packed_grads = mlp_backward(packed, names, acts, ce_grad(z, labels)[1])
    grads = unpack(packed_grads, names, list(params))
    zc, acts_c = mlp_forward(packed, names, rows, class_major=True)
    dz = train_grad(zc.clone(), one_hot(labels, 10), None, None, 1.0, None)[1]
    grads_c = unpack(mlp_backward(packed, names, acts_c, dz.transpose(1, 2)), names, list(params))
    z_wide = mlp_forward(params, names, with_ones(x[0], 1), shared=wide(params, names))[0] if shared else z
    z_tall = shared_forward(params, names, with_ones(x[0], 1).t(), tall(params, names), {}) if shared else zc
    # Assert: the logits, and every gradient, packed as its parameter is, and back in the parameter's own layout.
    close(z, ref_z)
    close(z_wide, ref_z)
    close(z_tall.transpose(1, 2), ref_z)
    close(zc.transpose(1, 2), ref_z)
    for ref, got in zip(ref_grads, grads_c.values()):
        close(got, ref, rtol=1e-5, atol=1e-7)
    assert list(grads) == list(params)
    assert all(packed_grads[k].shape == packed[k].shape and packed_grads[k].is_contiguous() for k in packed)
    for (k, ref), got in zip(zip(live, ref_grads), grads.values()):
        assert got.shape == params[k].shape, k
        close(got, ref, rtol=1e-5, atol=1e-7)


def test_a_single_layer_gives_class_major_logits_and_autograds_gradients():
    # Prepare: 2 students of one linear layer (no hidden layer), 3 rows of 4 features, 5 classes.
    models = [nn.Sequential(nn.Flatten(), nn.Linear(4, 5)) for _ in range(2)]
    base, params = stack_students(models)
    g = torch.Generator().manual_seed(5)
    x, labels = torch.randn(2, 3, 4, generator=g), torch.randint(0, 5, (2, 3), generator=g)
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref_z = stacked_forward(base)(live, x)
    ref_grads = torch.autograd.grad(cross_entropy(ref_z, labels).sum(), list(live.values()))
    names, packed = mlp_linears(base), pack(params, mlp_linears(base))
    # Execute
    z, acts = mlp_forward(packed, names, with_ones(x), class_major=True)
    dz = train_grad(z.clone(), one_hot(labels, 5), None, None, 1.0, None)[1]
    grads = unpack(mlp_backward(packed, names, acts, dz.transpose(1, 2)), names, list(params))
    # Assert
    assert z.shape == (2, 5, 3)
    close(z.transpose(1, 2), ref_z)
    for ref, got in zip(ref_grads, grads.values()):
        close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_passes_written_into_buffers_give_the_same_numbers_and_reuse_the_memory(shared):
    # Prepare: 3 two-hidden-layer students, their own rows or one batch seen by all (wide).
    models = [build_model("mlp256x2", (1, 8, 8), 10, seed=s) for s in range(3)]
    base, params = stack_students(models)
    names, packed = mlp_linears(base), pack(params, mlp_linears(base))
    g = torch.Generator().manual_seed(3)
    x, labels = with_ones(torch.randn(3, 5, 1, 8, 8, generator=g)), torch.randint(0, 10, (3, 5), generator=g)
    wide_x, first = with_ones(torch.randn(5, 1, 8, 8, generator=g), 1), wide(params, names)

    def passes(space):
        if shared:
            return mlp_forward(params, names, wide_x, shared=first, space=space)[0].clone(), {}
        z, acts = mlp_forward(packed, names, x, space=space)
        grads = mlp_backward(packed, names, acts, ce_grad(z, labels)[1], space)
        return z.clone(), {k: v.clone() for k, v in grads.items()}

    # Execute: without buffers, then twice with the same ones.
    ref_z, ref_grads = passes(None)
    space = {}
    passes(space)
    held = {k: v.data_ptr() for k, v in space.items()}
    z, grads = passes(space)
    # Assert: the same numbers, bit for bit, and the second call wrote where the first did.
    assert torch.equal(z, ref_z) and grads.keys() == ref_grads.keys()
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads)
    assert held and {k: v.data_ptr() for k, v in space.items()} == held


def test_pack_puts_the_first_bias_under_its_weight_and_unpack_undoes_it():
    # Prepare: 2 students of a 3-feature, 2-unit first layer and a 2-class last layer.
    w = torch.arange(12.0).reshape(2, 2, 3)
    params = {"1.weight": w, "1.bias": torch.tensor([[10.0, 20.0], [30.0, 40.0]]), "3.weight": torch.ones(2, 2, 2)}
    params["3.bias"] = torch.zeros(2, 2)
    # Execute
    packed = pack(params, ["1", "3"])
    back = unpack(packed, ["1", "3"], list(params))
    # Assert: student 0's first layer is W^T with the bias as the last row; the rest untouched; unpack inverts.
    assert packed["1"][0].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0], [10.0, 20.0]]
    assert packed["3.weight"] is params["3.weight"]
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    assert with_ones(torch.zeros(2, 1, 2, 2)).tolist() == [[[0.0] * 4 + [1.0]]] * 2


def test_hits_and_nll_by_hand_ties_go_to_the_first_maximum():
    # Prepare: one student, two rows with the same logits (1, 3, 3), labels 1 and 2.
    z = torch.tensor([[[1.0, 3.0, 3.0], [1.0, 3.0, 3.0]]])
    labels = torch.tensor([[1, 2]])
    # Execute
    hits, nll = hits_and_nll(z.clone(), labels)  # the logits are overwritten
    # Assert: argmax is the first maximum (index 1); -log softmax at the label is log(e + 2e³) - 3 for both.
    assert hits.tolist() == [[True, False]]
    assert torch.equal(hits, z.argmax(dim=-1) == labels)
    close(nll, torch.full((1, 2), math.log(math.e + 2 * math.e**3) - 3.0))
    close(nll.mean(dim=-1), cross_entropy(z, labels))


def test_hits_and_nll_class_major_and_nan_rows_match_argmax_and_cross_entropy():
    # Prepare: 3 students × 40 rows × 5 classes of random logits, with rows that tie for the maximum
    # (at, and not at, the label), a row of NaN and a row with +inf; labels random.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 40, 5, generator=g)
    labels = torch.randint(0, 5, (3, 40), generator=g)
    z[0, 0] = torch.tensor([2.0, 2.0, 0.0, 1.0, 2.0])  # a tie at the maximum: argmax is class 0
    labels[0, :2] = torch.tensor([4, 0])
    z[0, 1] = z[0, 0]
    z[1, 0] = float("nan")
    z[2, 0, 3] = float("inf")
    labels[2, 0] = 3
    want_hits = z.argmax(dim=-1) == labels
    want_nll = -torch.log_softmax(z, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # Execute: row-major, and class-major (dim=1) on the transposed logits
    rm = hits_and_nll(z.clone(), labels)
    cm = hits_and_nll(z.transpose(1, 2).contiguous(), labels, dim=1)
    # Assert: hits are argmax's (the tie to the first maximum, NaN and inf as argmax takes them); the
    # finite rows' losses are -log softmax at the label, the NaN row's NaN.
    for hits, nll in (rm, cm):
        assert torch.equal(hits, want_hits)
        assert hits[0, :2].tolist() == [False, True] and hits[2, 0]
        finite = want_nll.isfinite()
        close(nll[finite], want_nll[finite])
        assert nll[1, 0].isnan()


@pytest.mark.parametrize("samples", [5, 64])  # whole shards with counts, gathered batches
@pytest.mark.parametrize("distill", [False, True])
def test_a_cohort_trains_as_it_does_by_vmap_and_autograd(samples, distill):
    # Prepare: 3 mlp64 students; with distill, clients 0 and 2 have targets and client 1 none (fewer steps).
    world = build_world(
        WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=samples, transfer_size=96)
    )
    params = RoundParams(round=2, students=("mlp64",), epochs=2, lr=1e-3, batch_size=32, alpha=0.5, temperature=4.0)
    base = build_model("mlp64", world.data.input_shape, world.num_classes, seed=0).to("meta")
    start = stacked_mlp("mlp64", world.data.input_shape, world.num_classes, [1000, 1001, 1002])
    rng = np.random.default_rng(0)
    targets = [None if i == 1 else rng.normal(size=(96, 10)).astype(np.float32) for i in range(3)] if distill else None
    # Execute: the written-out passes, and the same cohort with them switched off.
    runs = []
    for written in (True, False):
        cohort = Cohort(world, DeviceData.of(world, torch.device("cpu")), params, base, [0, 1, 2])
        if not written:
            cohort.linears = None
        runs.append(cohort.train({k: v.clone() for k, v in start.items()}, targets=targets))
    (w, losses), (ref_w, ref_losses) = runs
    # Assert: the same losses and weights after a round of Adam steps.
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for k in w:
        close(w[k], ref_w[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("proto", [False, True])
def test_a_cohort_s_class_means_are_each_student_s_class_mean_logits(proto):
    # Prepare: 3 students of shards of different sizes (3, 7, 40 samples: padding repeats rows)
    from peerkd.student.training import class_mean_logits

    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0, partition="dirichlet", min_size=3))
    params = RoundParams(round=1, students=("mlp32",), epochs=1, lr=1e-3, batch_size=32)
    base = build_model("mlp32", world.data.input_shape, world.num_classes, seed=0).to("meta")
    w = stacked_mlp("mlp32", world.data.input_shape, world.num_classes, [7, 8, 9])
    cohort = Cohort(world, DeviceData.of(world, torch.device("cpu")), params, base, [0, 1, 2])
    proj = torch.randn(32, 5, generator=torch.Generator().manual_seed(0)) if proto else None
    # Execute
    tables, counts = cohort.class_means(w, proj)
    # Assert: every student's (table, counts) as class_mean_logits gives it on that student's own outputs
    assert len({len(ix) for ix in cohort.private}) > 1
    for s, ix in enumerate(cohort.private):
        x = torch.as_tensor(world.data.x[ix])
        one = {k: v[s] for k, v in w.items()}
        model = build_model("mlp32", world.data.input_shape, world.num_classes, seed=0)
        out = torch.func.functional_call(model, one, (x,))
        if proto:
            out = cohort.features({k: v[s : s + 1] for k, v in w.items()}, x[None])[0][0] @ proj
        want_t, want_c = class_mean_logits(out.detach().numpy(), world.data.y[ix], world.num_classes)
        np.testing.assert_allclose(tables[s], want_t, rtol=1e-5, atol=1e-6)
        assert counts[s].tolist() == want_c.tolist()
