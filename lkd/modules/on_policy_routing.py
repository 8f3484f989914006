"""On-policy distillation from a Mixture-of-Experts teacher run under a routing of its experts (Wang et al. 2025,
"Every Expert Matters", arXiv:2502.12947): what :class:`lkd.modules.OnPolicyDistillModule` adds to score the
student's samples with :class:`lkd.modules.routed_teacher.RoutedTeacher`.

The routed teacher scores the joined prompt + completion sequences (B, T) exactly as the teacher's own forward would,
padding and positions included; every routing mode applies (``teacher``, ``all``, ``ka``, ``sar``,
``student_aware``). Knowledge Augmentation's ``repeats`` passes each give a per-token divergence and the module
averages them (as :class:`lkd.modules.LMDistillModule` averages its loss tables). A trained routing (``sar``,
``student_aware``) learns in the same backward from the divergence through the routed teacher's logits plus
:func:`lkd.losses.routing.router_objective`'s λ · CE(routed teacher) and β · L_bal, where the routed teacher's LM loss
reads **real text only** (:func:`real_text_mask`: the prompts and the reference completions): on the student's own
samples it would reward bending the teacher toward what the student already writes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lkd.losses.lm import token_logprobs
from lkd.models.routing import Routing
from lkd.modules.routed_teacher import RoutedTeacher, TeacherPasses

TRAINED_MODES = ("sar", "student_aware")


def routing_problems_on_policy(router: Routing | None, *, loss: str) -> list[str]:
    """Why a routing is refused on-policy (empty: it works). ``loss: sampled`` holds the teacher's log-probability as a
    constant reward (:func:`lkd.losses.on_policy.sampled_token_reverse_kl`), so no distillation gradient reaches a
    trained routing from the sampled rows."""
    trained = router is not None and (router.mode in TRAINED_MODES or router.trainable)  # unbound: no parameters yet
    if not trained or loss != "sampled":
        return []
    problem = (f"loss: sampled stops the gradient at the teacher's log-probabilities, so the trained {router.mode!r} routing "
               "would learn from the routed teacher's own LM loss alone. HINT: use loss: jsd or jsd_topk with "
               f"{' / '.join(TRAINED_MODES)}; the untrained modes (teacher, all, ka) work with every loss")
    return [problem]


def teacher_scores(logits: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A teacher pass as the routing's objective reads it: ``logits`` (B, T, V) and ``token_logprobs`` (B, T)
    (:func:`lkd.losses.lm.token_logprobs`: log p(x_i | x_<i), 0 at i = 0)."""
    return {"logits": logits, "token_logprobs": token_logprobs(logits, input_ids)}


def routed_scores(routed: RoutedTeacher, model_inputs: dict[str, torch.Tensor], stage: str, global_step: int,
                  student_out) -> TeacherPasses:
    """The routed teacher's passes over the joined sequences: its own forward first (no gradient) when
    :meth:`RoutedTeacher.needs_own` (the student-aware router's gap features, drift outside training), the routing's
    context (:meth:`RoutedTeacher.context`: the student's last hidden states, every position) and the routed passes
    (:meth:`RoutedTeacher.passes`, with gradient into a routing that learns this step).

    Args:
        model_inputs: the teacher's forward arguments: ``input_ids``, ``attention_mask``, ``position_ids`` (B, T) each.
        student_out: the student's transformers output over the same sequences (``logits`` (B, T, V); with
            ``hidden_states`` when the routing reads the student).
    """
    ids = model_inputs["input_ids"]  # (B, T)
    own = None
    if routed.needs_own(stage):
        with torch.no_grad():
            own = teacher_scores(routed.teacher(**model_inputs).logits, ids)
    ctx = routed.context(student_out, own)
    learns = routed.learns(stage, global_step)
    rest = {k: v for k, v in model_inputs.items() if k != "input_ids"}
    outs, records = routed.passes(ids, ctx, stage, learns=learns, hidden=False, attentions=False, model_inputs=rest)
    return TeacherPasses([teacher_scores(out.logits, ids) for out in outs], own, records, learns)


def real_text_mask(attention_mask: torch.Tensor, loss_mask: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
    """(B, T) float: the tokens of real text with a prediction, where the routed teacher's own LM loss is read: every
    prompt token after a row's first, and the completion tokens of reference rows; never a sampled completion (the
    student's or the teacher's greedy one).

    Args:
        attention_mask: (B, T) 1 on real tokens (left-padded prompt, right-padded completion).
        loss_mask: (B, T) 1 on completion tokens.
        reference_rows: (B,) bool, the rows whose completion is the data's reference.
    """
    real = attention_mask.bool()
    predicted = real & F.pad(real[:, :-1], (1, 0))  # (B, T) a real token after a real token
    sampled = loss_mask.bool() & ~reference_rows[:, None]  # (B, T)
    return (predicted & ~sampled).float()
