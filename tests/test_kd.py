"""kd_loss against a hand-written reference: values, gradients, T^2, masking, sparse targets, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asrdistill.kd import KDLoss, kd_loss

torch.set_num_threads(1)


def _reference(s, p_teacher, labels, temperature, hard_weight, ignore_index=-100):
    """Straightforward dense definition: T^2 * mean KL over valid frames, plus CE at T = 1."""
    s = s.reshape(-1, s.shape[-1])
    p = p_teacher.reshape(-1, s.shape[-1])
    log_q = torch.log_softmax(s / temperature, -1)
    kl = torch.stack([sum(pi * (torch.log(pi) - lq) for pi, lq in zip(pr, qr) if pi > 0) for pr, qr in zip(p, log_q)])
    if labels is None:
        return temperature**2 * kl.mean()
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    soft = temperature**2 * kl[valid].mean()
    hard = F.cross_entropy(s[valid], labels[valid])
    return (1 - hard_weight) * soft + hard_weight * hard


def _inputs(shape=(12, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return s, t, y


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("shape", [(12, 7), (3, 4, 7)])
def test_dense_teacher_value_and_gradient(temperature, shape):
    s, t, y = _inputs(shape)
    y.view(-1)[::5] = -100  # padding frames
    p = torch.softmax(t / temperature, -1)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    s3 = s.clone().requires_grad_(True)
    ours = kd_loss(s1, teacher_logits=t, labels=y, temperature=temperature, hard_weight=0.3)
    ours_p = kd_loss(s3, teacher_probs=p, labels=y, temperature=temperature, hard_weight=0.3)
    ref = _reference(s2, p, y, temperature, 0.3)
    ours.backward(), ours_p.backward(), ref.backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_p.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s3.grad, s2.grad, rtol=1e-4, atol=1e-6)


def test_t_squared_scaling_and_weights():
    s, t, y = _inputs()
    for temperature in (1.0, 3.0):
        kl = F.kl_div(torch.log_softmax(s / temperature, -1), torch.softmax(t / temperature, -1), reduction="batchmean")
        soft = kd_loss(s, teacher_logits=t, temperature=temperature)  # labels=None: soft term only
        torch.testing.assert_close(soft.double(), temperature**2 * kl, rtol=1e-5, atol=1e-7)
    hard_only = kd_loss(s, teacher_logits=t, labels=y, hard_weight=1.0)
    torch.testing.assert_close(hard_only.double(), F.cross_entropy(s, y), rtol=1e-5, atol=1e-7)
    # the T^2 factor keeps the soft gradient's size roughly constant as T grows (paper, section 2)
    norms = []
    for temperature in (4.0, 16.0):
        x = s.clone().requires_grad_(True)
        kd_loss(x, teacher_logits=t, temperature=temperature).backward()
        norms.append(float(x.grad.norm()))
    assert 0.8 < norms[1] / norms[0] < 1.25, norms  # without T^2 it would shrink 16-fold


def test_masked_frames_are_ignored_entirely():
    s, t, y = _inputs()
    y[3] = y[8] = -100
    keep = y != -100
    a = kd_loss(s, teacher_logits=t, labels=y, hard_weight=0.4)
    b = kd_loss(s[keep], teacher_logits=t[keep], labels=y[keep], hard_weight=0.4)
    torch.testing.assert_close(a, b)
    x = s.clone().requires_grad_(True)
    kd_loss(x, teacher_logits=t, labels=y).backward()
    assert x.grad[3].abs().sum() == 0 and x.grad[8].abs().sum() == 0


def test_teacher_zeros_are_finite():
    s, _, y = _inputs()
    p = torch.zeros_like(s)
    p[torch.arange(len(y)), y] = 1.0  # one-hot teacher: 0 * log 0 must count as 0
    x = s.clone().requires_grad_(True)
    loss = kd_loss(x, teacher_probs=p, labels=y, temperature=1.0, hard_weight=0.0)
    loss.backward()
    torch.testing.assert_close(loss.double(), F.cross_entropy(s, y), rtol=1e-5, atol=1e-7)
    assert torch.isfinite(x.grad).all()


def _coarsened_reference(s, idx, top_p, temperature):
    """KL between the teacher and student distributions over {top-k classes} + one rest class."""
    log_q = torch.log_softmax(s / temperature, -1)
    out = []
    for lq, i, p in zip(log_q, idx, top_p):
        q_top = lq[i].exp()
        p_full = torch.cat([p, (1 - p.sum()).reshape(1)])
        q_full = torch.cat([q_top, (1 - q_top.sum()).reshape(1)])
        out.append(sum(a * (torch.log(a) - torch.log(b)) for a, b in zip(p_full, q_full) if a > 0))
    return temperature**2 * torch.stack(out).mean()


@pytest.mark.parametrize("form", ["tuple", "keyword"])
def test_sparse_topk_teacher(form):
    s, t, y = _inputs((10, 30))
    temperature = 2.0
    p = torch.softmax(t / temperature, -1)
    top_p, idx = p.topk(5, -1)
    x1 = s.clone().requires_grad_(True)
    x2 = s.clone().requires_grad_(True)
    kw = {"teacher_probs": (idx, top_p)} if form == "tuple" else {"teacher_topk": (idx, top_p)}
    ours = kd_loss(x1, temperature=temperature, **kw)
    ref = _coarsened_reference(x2, idx, top_p, temperature)
    ours.backward(), ref.backward()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)
    # k = C is exactly the dense loss; with labels and (B, T, k) shapes too
    top_p, idx = p.topk(30, -1)
    dense = kd_loss(s, teacher_probs=p, labels=y, temperature=temperature)
    full = kd_loss(
        s.reshape(2, 5, 30),
        teacher_topk=(idx.reshape(2, 5, 30), top_p.reshape(2, 5, 30).half()),
        labels=y.reshape(2, 5),
        temperature=temperature,
    )
    torch.testing.assert_close(full, dense, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("hard_weight", [0.0, 0.3, 1.0])
def test_sparse_teacher_with_labels_value_and_gradient(temperature, hard_weight):
    s, t, y = _inputs((2, 6, 30), seed=1)
    y.view(-1)[::4] = -100  # padding frames
    top_p, idx = torch.softmax(t / temperature, -1).topk(5, -1)
    x1 = s.float().clone().requires_grad_(True)
    x2 = s.clone().requires_grad_(True)
    ours = kd_loss(x1, teacher_topk=(idx, top_p.float()), labels=y, temperature=temperature, hard_weight=hard_weight)
    keep = (y != -100).reshape(-1)
    flat = x2.reshape(-1, 30)
    soft = _coarsened_reference(flat[keep], idx.reshape(-1, 5)[keep], top_p.reshape(-1, 5)[keep], temperature)
    ref = (1 - hard_weight) * soft + hard_weight * F.cross_entropy(flat[keep], y.reshape(-1)[keep])
    ours.backward(retain_graph=True), ref.backward()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad.double(), x2.grad, rtol=1e-4, atol=1e-6)
    assert x1.grad.reshape(-1, 30)[~keep].abs().sum() == 0
    first = x1.grad.clone()
    ours.backward()  # a retained graph can be differentiated again
    torch.testing.assert_close(x1.grad, 2 * first)


def test_sparse_rest_mass_is_exact_when_tiny():
    s = torch.full((3, 40), -20.0, dtype=torch.float64)
    s[:, :2] = 25.0  # at T = 2 the student's rest mass is ~1e-9: far below float32's 1 - sum resolution
    idx = torch.tensor([[0, 1]] * 3)
    probs = torch.tensor([[0.6, 0.3]] * 3)
    x = s.float().requires_grad_(True)
    ref_x = s.clone().requires_grad_(True)
    loss = kd_loss(x, teacher_topk=(idx, probs), temperature=2.0)
    ref = _coarsened_reference(ref_x, idx, probs.double(), 2.0)
    loss.backward(), ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-7)


def test_sparse_student_concentrated_on_topk_stays_finite():
    s = torch.full((4, 50), -60.0)
    s[:, 0] = 60.0  # student puts all its mass on class 0: its rest mass underflows
    idx = torch.tensor([[0, 1]] * 4)
    probs = torch.tensor([[0.9, 0.05]] * 4)
    x = s.clone().requires_grad_(True)
    loss = kd_loss(x, teacher_topk=(idx, probs), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and loss > 1


def test_autocast_computes_in_float32():
    s, t, y = _inputs()
    ref = kd_loss(s.float().bfloat16().float(), teacher_logits=t.float(), labels=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kd_loss(s.float().bfloat16(), teacher_logits=t.float(), labels=y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_module_twin():
    s, t, y = _inputs()
    module = KDLoss(temperature=3.0, hard_weight=0.2)
    torch.testing.assert_close(
        module(s, teacher_logits=t, labels=y), kd_loss(s, teacher_logits=t, labels=y, temperature=3.0, hard_weight=0.2)
    )
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "exactly one.*none"),
        (dict(teacher_logits="T", teacher_probs="P"), "exactly one.*teacher_logits.*teacher_probs"),
        (dict(teacher_logits="T", temperature=0.0), "temperature must be > 0"),
        (dict(teacher_logits="T", temperature=-1.0), "temperature must be > 0"),
        (dict(teacher_logits="T", hard_weight=1.5), r"hard_weight must be in \[0, 1\]"),
        (dict(teacher_logits="T", hard_weight=-0.1), r"hard_weight must be in \[0, 1\]"),
        (dict(teacher_logits="T8"), "teacher_logits shape .*class count"),
        (dict(teacher_probs="P_bad"), "teacher_probs rows must sum to 1"),
        (dict(teacher_probs="P_neg"), "negative"),
        (dict(teacher_topk="K_big"), "sum to at most 1"),
        (dict(teacher_topk="K_idx"), "class ids outside"),
        (dict(teacher_topk="K_shape"), "sparse teacher"),
        (dict(teacher_logits="T", labels="Y_shape"), "labels shape"),
    ],
)
def test_errors_say_which(kwargs, message):
    s, t, y = _inputs()
    p = torch.softmax(t, -1)
    top_p, idx = p.topk(3, -1)
    p_neg = p.clone()
    p_neg[0, 1] += p_neg[0, 0] + 0.1
    p_neg[0, 0] = -0.1  # still sums to 1
    values = {
        "T": t,
        "P": p,
        "T8": torch.randn(12, 8),
        "P_bad": p * 1.2,
        "P_neg": p_neg,
        "K_big": (idx, top_p * 3),
        "K_idx": (idx + 7, top_p),
        "K_shape": (idx[:5], top_p[:5]),
        "Y_shape": y[:5],
    }
    kwargs = {k: values.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        kd_loss(s, **kwargs)


def test_wrong_student_rank_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, C\) or \(B, T, C\)"):
        kd_loss(torch.randn(7), teacher_logits=torch.randn(7))


def test_labels_are_validated_hard_weight_without_labels_warns_and_the_teacher_is_detached():
    import warnings

    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"labels outside \[0, 4\) that are not ignore_index \(-100\), e.g. 4"):
        kd_loss(s, teacher_logits=t, labels=torch.tensor([0, 1, 2, 3, 4, -100]))
    with pytest.raises(ValueError, match=r"labels outside \[0, 4\).*e.g. -1"):
        kd_loss(s, teacher_logits=t, labels=torch.tensor([0, 1, 2, 3, -1, 0]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of class ids, got torch.float32"):
        kd_loss(s, teacher_logits=t, labels=torch.tensor([0.0, 1, 2, 3, 1, 0]))
    with pytest.warns(UserWarning, match=r"hard_weight=0.5 has no effect without labels"):
        kd_loss(s, teacher_logits=t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kd_loss(s, teacher_logits=t, hard_weight=0.0)
    loss = kd_loss(s, teacher_logits=t, labels=torch.tensor([0, 1, 2, 3, -100, 0]))
    loss.backward()
    assert s.grad is not None and t.grad is None
    p = torch.softmax(torch.randn(6, 4), -1).requires_grad_()
    kd_loss(s, teacher_probs=p, hard_weight=0.0).backward()
    assert p.grad is None
