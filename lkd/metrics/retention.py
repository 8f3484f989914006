"""Knowledge retention of a distilled language model: how much of the teacher's next-token distribution
the student keeps (KL, top-1 / top-5 agreement) and both perplexities, summed over tokens so DDP reduces
them correctly."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torchmetrics import Metric

from lkd.losses.kd import token_kl


class RetentionMetrics(Metric):
    """Token-level retention of a teacher's predictions by a student.

    Per predicted position (the last position of each block has no target and is skipped for the NLLs):

    - ``kl``: mean KL(p_teacher ‖ p_student) at T = 1, nats per token;
    - ``top1_agreement``: fraction of tokens where the student's argmax equals the teacher's;
    - ``top5_agreement``: fraction where the teacher's argmax is among the student's 5 most likely tokens;
    - ``teacher_ppl``, ``student_ppl``: exp of the mean next-token NLL; ``ppl_ratio`` = student / teacher.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("kl", "top1", "top5", "teacher_nll", "student_nll", "tokens", "targets"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        """student_logits, teacher_logits: (B, T, V); input_ids: (B, T)."""
        self.kl += token_kl(student_logits, teacher_logits).sum().double()
        teacher_top = rearrange(teacher_logits.argmax(-1), "b t -> (b t)")  # (N,)
        k = min(5, student_logits.shape[-1])
        student_top = rearrange(student_logits.topk(k, dim=-1).indices, "b t k -> (b t) k")  # (N, k)
        self.top1 += (student_top[:, 0] == teacher_top).sum().double()
        self.top5 += (student_top == teacher_top[:, None]).any(-1).sum().double()
        self.tokens += teacher_top.numel()
        targets = input_ids[:, 1:].flatten()
        self.student_nll += F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1), targets, reduction="sum").double()
        self.teacher_nll += F.cross_entropy(teacher_logits[:, :-1].float().flatten(0, 1), targets, reduction="sum").double()
        self.targets += targets.numel()

    def compute(self) -> dict[str, float]:
        n, m = self.tokens.clamp_min(1), self.targets.clamp_min(1)
        teacher_ppl, student_ppl = math.exp(self.teacher_nll / m), math.exp(self.student_nll / m)
        return {
            "kl": float(self.kl / n),
            "top1_agreement": float(self.top1 / n),
            "top5_agreement": float(self.top5 / n),
            "teacher_ppl": teacher_ppl,
            "student_ppl": student_ppl,
            "ppl_ratio": student_ppl / teacher_ppl,
        }


class Perplexity(Metric):
    """exp(mean next-token NLL) over an epoch, token-weighted, summed across processes.

    ``update(nll, tokens)``: a batch's mean NLL (0-d) and how many tokens it was averaged over.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, tokens: int, num_bytes: torch.Tensor | int | None = None) -> None:
        self.nll_sum += nll.detach().double() * tokens
        self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens.clamp_min(1)).float()


class BitsPerByte(Metric):
    """Bits per UTF-8 byte of text over an epoch: Σ NLL / (ln 2 · Σ bytes of the predicted tokens).

    Unlike perplexity it does not depend on the tokenizer, so models with different tokenizers compare on
    it. ``update(nll, tokens, num_bytes)``: a batch's mean NLL per token (nats, 0-d), its token count, and the
    bytes those tokens spell (:func:`lkd.tokenizers.token_byte_lengths`); a batch without ``num_bytes`` is skipped.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_bytes", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, tokens: int, num_bytes: torch.Tensor | int | None = None) -> None:
        if num_bytes is None:
            return
        self.nll_sum += nll.detach().double() * tokens
        self.num_bytes += torch.as_tensor(num_bytes, dtype=torch.float64, device=self.num_bytes.device)

    def compute(self) -> torch.Tensor:
        return (self.nll_sum / (math.log(2) * self.num_bytes.clamp_min(1))).float()
