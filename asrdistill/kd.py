"""Knowledge-distillation loss (Hinton, Vinyals & Dean 2015), usable in any training loop.

``kd_loss`` mixes a *soft* term, the KL divergence from a teacher distribution
softened at temperature ``T`` to the student's softened distribution (scaled by
``T**2`` so its gradients keep the same magnitude whatever ``T``, as the paper
prescribes), with the usual *hard* cross-entropy against labels at ``T = 1``::

    loss = (1 - hard_weight) * T**2 * KL(p_teacher^T || q_student^T) + hard_weight * CE(q_student^1, labels)

The teacher can be given three ways (exactly one):

* ``teacher_logits``: raw teacher logits, same shape as the student's;
* ``teacher_probs=<tensor>``: a dense distribution already softened at ``T``
  (e.g. an ensemble average), rows summing to 1;
* ``teacher_probs=(indices, probs)`` or ``teacher_topk=(indices, probs)``: a
  sparse top-k teacher, ``(..., k)`` class ids and their probabilities at ``T``.
  The teacher's remaining mass ``1 - sum(probs)`` is kept as one aggregated
  "rest" class and compared with the student's own mass outside those k
  classes, so the soft term is an exact KL between the two distributions
  coarsened to k + 1 outcomes; no dense (N, C) teacher tensor is built.

Frames whose label equals ``ignore_index`` (padding) are excluded from both
terms. The loss is computed in float32 even under autocast.

Dropping it into an existing loop::

    from asrdistill.kd import kd_loss

    for x, y in loader:
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(student(x), teacher_logits=t, labels=y, temperature=2.0, hard_weight=0.5)
        opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

__all__ = ["kd_loss", "KDLoss"]

_SUM_TOLERANCE = 1e-2  # float16-stored targets sum to 1 within ~1e-3; allow slack
_TINY = 1e-30  # floor for the student's rest mass (keeps its log and 1 / rest finite)

SparseTeacher = tuple[Tensor, Tensor]


def _check_distribution(probs: Tensor, what: str, exact_sum: bool) -> None:
    """One host sync: negative entries, non-finite values, or bad row sums raise ``ValueError``."""
    if probs.numel() == 0:
        return
    sums = probs.sum(-1)
    bad_sum = (sums - 1).abs() > _SUM_TOLERANCE if exact_sum else sums > 1 + _SUM_TOLERANCE
    problems = torch.stack([(probs < 0).any(), (~torch.isfinite(probs)).any(), bad_sum.any()]).tolist()
    if problems[0]:
        raise ValueError(f"kd_loss: {what} has negative probabilities")
    if problems[1]:
        raise ValueError(f"kd_loss: {what} has non-finite values")
    if problems[2]:
        worst = (sums - 1).abs().max().item()
        rule = "sum to 1" if exact_sum else "sum to at most 1"
        raise ValueError(f"kd_loss: {what} rows must {rule} (tolerance {_SUM_TOLERANCE}); worst deviation {worst:.4g}")


def kd_loss(
    student_logits: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    teacher_probs: Tensor | SparseTeacher | None = None,
    teacher_topk: SparseTeacher | None = None,
    labels: Tensor | None = None,
    temperature: float = 2.0,
    hard_weight: float = 0.5,
    ignore_index: int = -100,
    check_values: bool = True,
) -> Tensor:
    """Distillation loss of ``student_logits`` (``(N, C)`` or ``(B, T, C)``); a scalar tensor.

    See the module docstring for the teacher forms. With ``labels=None`` the
    result is the soft term alone and every frame counts; a ``hard_weight`` other
    than 0 then has no effect, which a ``UserWarning`` says. ``labels`` must be an
    integer tensor of class ids in ``[0, C)`` or ``ignore_index`` (else
    ``ValueError``). The teacher is detached: no gradient reaches it.
    ``check_values=False`` skips the checks on values (teacher probabilities,
    label and sparse class ids: host syncs) in hot GPU loops; shape and dtype
    checks always run.
    """
    teacher_probs, sparse = _check_arguments(
        student_logits, teacher_logits, teacher_probs, teacher_topk, labels, temperature, hard_weight
    )
    if check_values:
        _check_values(student_logits.shape[-1], teacher_probs, sparse, labels, ignore_index)
    return _loss(student_logits, teacher_logits, teacher_probs, sparse, labels, temperature, hard_weight, ignore_index)


def _check_arguments(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | SparseTeacher | None,
    teacher_topk: SparseTeacher | None,
    labels: Tensor | None,
    temperature: float,
    hard_weight: float,
) -> tuple[Tensor | None, SparseTeacher | None]:
    """:func:`kd_loss`'s checks of arguments, shapes and dtypes (no host sync, so they always run); returns the
    teacher as ``(dense teacher_probs, sparse (indices, probs))``, a sparse ``teacher_probs`` moved to the second."""
    given = [
        n
        for n, v in (
            ("teacher_logits", teacher_logits),
            ("teacher_probs", teacher_probs),
            ("teacher_topk", teacher_topk),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"kd_loss: give exactly one of teacher_logits, teacher_probs, teacher_topk; got {given or 'none'}"
        )
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature!r}")
    if not 0.0 <= hard_weight <= 1.0:
        raise ValueError(f"kd_loss: hard_weight must be in [0, 1], got {hard_weight!r}")
    if student_logits.dim() not in (2, 3):
        raise ValueError(
            f"kd_loss: student_logits must be (N, C) or (B, T, C), got shape {tuple(student_logits.shape)}"
        )
    frame_shape = student_logits.shape[:-1]
    sparse: SparseTeacher | None = teacher_topk
    if isinstance(teacher_probs, (tuple, list)):
        if len(teacher_probs) != 2:
            raise ValueError("kd_loss: a sparse teacher_probs must be a pair (indices, probs)")
        sparse, teacher_probs = (teacher_probs[0], teacher_probs[1]), None
    dense = teacher_logits if teacher_logits is not None else teacher_probs
    if dense is not None and dense.shape != student_logits.shape:
        name = "teacher_logits" if teacher_logits is not None else "teacher_probs"
        raise ValueError(
            f"kd_loss: {name} shape {tuple(dense.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)} (class count or frame count mismatch)"
        )
    if sparse is not None:
        idx, top_p = sparse
        if idx.shape != top_p.shape or idx.shape[:-1] != frame_shape:
            raise ValueError(
                f"kd_loss: sparse teacher indices {tuple(idx.shape)} and probs {tuple(top_p.shape)} "
                f"must both be {tuple(frame_shape)} + (k,)"
            )
        if idx.dtype.is_floating_point:
            raise ValueError("kd_loss: sparse teacher indices must be an integer tensor")
    if labels is not None and labels.shape != frame_shape:
        raise ValueError(f"kd_loss: labels shape {tuple(labels.shape)} != student frames {tuple(frame_shape)}")
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool):
        raise ValueError(f"kd_loss: labels must be an integer tensor of class ids, got {labels.dtype}")
    if labels is None and hard_weight != 0:
        warnings.warn(
            f"kd_loss: hard_weight={hard_weight} has no effect without labels (the soft term alone is "
            "returned); pass hard_weight=0.0 to say so",
            UserWarning,
            stacklevel=3,  # the caller of kd_loss
        )
    return teacher_probs, sparse


def _check_values(
    num_classes: int,
    teacher_probs: Tensor | None,
    sparse: SparseTeacher | None,
    labels: Tensor | None,
    ignore_index: int,
) -> None:
    """:func:`kd_loss`'s checks of values (label and class ids in range, teacher distributions): host syncs, so
    ``check_values=False`` skips them in hot GPU loops."""
    if labels is not None and labels.numel():
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"kd_loss: labels outside [0, {num_classes}) that are not ignore_index "
                f"({ignore_index}), e.g. {int(labels[bad][0])} (class count mismatch)"
            )
    if teacher_probs is not None:
        _check_distribution(teacher_probs.float(), "teacher_probs", exact_sum=True)
    if sparse is not None:
        idx = sparse[0]
        if idx.numel() and bool(((idx < 0) | (idx >= num_classes)).any()):
            raise ValueError(f"kd_loss: sparse teacher class ids outside [0, {num_classes}) (class count mismatch)")
        _check_distribution(sparse[1].float(), "sparse teacher probs", exact_sum=False)


def _loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | None,
    sparse: SparseTeacher | None,
    labels: Tensor | None,
    temperature: float,
    hard_weight: float,
    ignore_index: int,
) -> Tensor:
    """:func:`kd_loss` of checked arguments: in float32 whatever the autocast context; the teacher is a constant."""
    num_classes = student_logits.shape[-1]
    teacher_logits = teacher_logits.detach() if teacher_logits is not None else None
    teacher_probs = teacher_probs.detach() if teacher_probs is not None else None
    sparse = (sparse[0].detach(), sparse[1].detach()) if sparse is not None else None
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = student_logits.reshape(-1, num_classes).float()
        if labels is None:
            valid = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        else:
            labels = labels.reshape(-1)
            valid = labels != ignore_index
        if sparse is not None:
            idx = sparse[0].reshape(-1, sparse[0].shape[-1]).long()
            p = sparse[1].reshape(idx.shape).float().clamp(min=0)
            return _SparseKD.apply(s, idx, p, labels, valid, float(temperature), float(hard_weight))

        # dense teacher: plain autograd; one log-softmax per temperature, shared when T == 1
        log_q1 = torch.log_softmax(s, dim=-1) if labels is not None else None
        log_qt = log_q1 if (temperature == 1 and log_q1 is not None) else torch.log_softmax(s / temperature, dim=-1)
        if teacher_logits is not None:
            log_p = torch.log_softmax(teacher_logits.reshape(-1, num_classes).float() / temperature, dim=-1)
            kl = (log_p.exp() * (log_p - log_qt)).sum(-1)
        else:
            p = teacher_probs.reshape(-1, num_classes).float()
            kl = (torch.xlogy(p, p) - p * log_qt).sum(-1)
        count = valid.sum().clamp(min=1)
        soft = torch.where(valid, kl, 0.0).sum() / count * (temperature**2)
        if labels is None:
            return soft
        target = torch.where(valid, labels, 0).long()
        hard = torch.where(valid, -log_q1.gather(1, target[:, None]).squeeze(1), 0.0).sum() / count
        return (1 - hard_weight) * soft + hard_weight * hard


class _SparseKD(torch.autograd.Function):
    """Top-k (+ rest) soft term and hard term with a closed-form backward.

    One fused log-softmax at T = 1 serves both terms: the student's tempered
    distribution is ``u / sum(u)`` with ``u = exp(log_softmax(s) / T)``, so no
    second log-softmax is run. Only the k teacher classes and the label are
    gathered; the student's rest mass is the sum of ``u`` outside the top k
    (exact: no ``1 - sum`` cancellation). Dense (N, C) passes: log-softmax, exp
    and one sum forward, one multiply backward; when T != 1 with a hard term, a
    scale and an exp more forward (``softmax(s)``) and an add backward.
    """

    @staticmethod
    def forward(
        ctx,
        s: Tensor,
        idx: Tensor,
        p: Tensor,
        labels: Tensor | None,
        valid: Tensor,
        temperature: float,
        hard_weight: float,
    ) -> Tensor:
        t = temperature
        hw = hard_weight if labels is not None else 0.0
        log_q1 = torch.log_softmax(s, dim=-1)
        log_u_top = log_q1.gather(1, idx)  # T = 1: log softmax(s) of the k classes
        if t != 1:
            log_u_top = log_u_top * (1 / t)
        ce = target = None
        if labels is not None:
            target = torch.where(valid, labels, 0).long()[:, None]
            ce = -log_q1.gather(1, target).squeeze(1)
        u = log_q1.mul(1 / t).exp_() if t != 1 else log_q1.exp_()
        q1 = log_q1.exp_() if (t != 1 and hw > 0 and ctx.needs_input_grad[0]) else None  # for the hard gradient
        u.scatter_(1, idx, 0.0)
        u_rest = u.sum(-1)
        u_sum = u_rest + log_u_top.exp().sum(-1)
        log_q = log_u_top - u_sum.log()[:, None]  # student log-probs of the k classes at T
        q_rest = u_rest / u_sum  # student's mass outside the k classes at T
        rest_p = (1 - p.sum(-1)).clamp(min=0)
        kl = (
            (torch.xlogy(p, p) - p * log_q).sum(-1)
            + torch.xlogy(rest_p, rest_p)
            - rest_p * q_rest.clamp(min=_TINY).log()
        )
        count = valid.sum().clamp(min=1)
        loss = torch.where(valid, kl, 0.0).sum() / count * (t * t)
        if ce is not None:
            loss = (1 - hw) * loss + hw * torch.where(valid, ce, 0.0).sum() / count
        ctx.save_for_backward(u, u_sum, q_rest, rest_p, log_q, idx, p, valid, count, target, q1)
        ctx.temperature, ctx.hard_weight = t, hw
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        u, u_sum, q_rest, rest_p, log_q, idx, p, valid, count, target, q1 = ctx.saved_tensors
        t, hw = ctx.temperature, ctx.hard_weight
        w = valid.float() * (grad_out / count)
        a = w * hw  # hard: a * (softmax(s) - onehot(label))
        b = w * ((1 - hw) * t)  # soft: T^2 / T times d KL / d(s / T), which is
        # q - p on the top k and q * (1 - rest_p / q_rest) on the other classes, q = u / u_sum
        q_top = log_q.exp()
        coef = b * (1 - rest_p / q_rest.clamp(min=_TINY)) / u_sum
        top = b[:, None] * (q_top - p)
        if hw > 0 and t == 1:  # u is softmax(s) with the top k zeroed
            coef = coef + a
            top = top + a[:, None] * (q_top * u_sum[:, None])
        grad = u * coef[:, None]
        grad.scatter_(1, idx, top)
        if hw > 0:
            if q1 is not None:
                grad.addcmul_(q1, a[:, None])
            grad.scatter_add_(1, target, -a[:, None])
        return grad, None, None, None, None, None, None


class KDLoss(nn.Module):
    """``nn.Module`` twin of :func:`kd_loss` holding temperature, hard_weight and ignore_index."""

    def __init__(self, temperature: float = 2.0, hard_weight: float = 0.5, ignore_index: int = -100):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KDLoss: temperature must be > 0, got {temperature!r}")
        if not 0.0 <= hard_weight <= 1.0:
            raise ValueError(f"KDLoss: hard_weight must be in [0, 1], got {hard_weight!r}")
        self.temperature = temperature
        self.hard_weight = hard_weight
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: Tensor,
        *,
        teacher_logits: Tensor | None = None,
        teacher_probs: Tensor | SparseTeacher | None = None,
        teacher_topk: SparseTeacher | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        return kd_loss(
            student_logits,
            teacher_logits=teacher_logits,
            teacher_probs=teacher_probs,
            teacher_topk=teacher_topk,
            labels=labels,
            temperature=self.temperature,
            hard_weight=self.hard_weight,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard_weight={self.hard_weight}, ignore_index={self.ignore_index}"
