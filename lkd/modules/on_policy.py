"""On-policy distillation of causal language models on prompt data: the student samples completions, the teacher
scores every sampled token, the student minimises a divergence on its own samples (GKD, Agarwal et al., ICLR 2024,
arXiv 2306.13649; the sampled-token reverse KL of Thinking Machines' Tinker cookbook and Qwen3's report).

Per row of a training batch, with probability ``lmbda`` (drawn per row from the seed, the epoch and the row's index,
so a resumed run draws the same) the completion is the student's own sample; the other rows use the data's
reference completion (``off_policy: reference``: supervised KD) or the teacher's greedy completion
(``off_policy: teacher``: sequence-level KD, Kim & Rush 2016, arXiv 1606.07947). Validation and test score the
reference completions teacher-forced. The completion tokens alone enter the loss:

    L = reduce_{n in completion} D(p_t(· | x, y_<n), p_s(· | x, y_<n))  [+ w_ce · CE(y_n) on reference rows]

with D = the generalized JSD(β) over the full vocabulary (``loss: jsd``) or over the teacher's top-k plus a tail
bucket (``jsd_topk``), or, on sampled rows, the sampled-token estimator −sg[log p_t(y_n) − log p_s(y_n)] · log p_s(y_n)
(``sampled``; the other rows then use the JSD). :mod:`lkd.losses.on_policy` holds the formulas.

With a ``router`` a Mixture-of-Experts teacher scores the samples under a routing of its experts
(:mod:`lkd.modules.on_policy_routing`, :class:`lkd.modules.routed_teacher.RoutedTeacher`); a trained routing adds its
objective to the loss.

With a ``teacher_tokenizer`` of its own the teacher reads each completion as text, in its tokens, after its own
rendering of the prompt, and D is a chunk loss on the completion's aligned chunks (``loss: alm``, ``shared_kl`` or
``uld``; :mod:`lkd.modules.on_policy_tokenizers`).

With a ``teacher.cache`` (``lmbda: 0``, ``off_policy: teacher``: sequence-level KD) the teacher's greedy completions and
its top-k along them are read from the cache, written once by ``lkd cache-teacher``, and D is ``jsd_topk``
(:mod:`lkd.modules.on_policy_cache`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from typing_extensions import override

from lkd.data.prompts import join_prompt_completion
from lkd.losses.lm import token_logprobs
from lkd.losses.on_policy import generalized_jsd, generalized_jsd_topk, on_policy_problems, reduce_tokens, sampled_token_reverse_kl
from lkd.models import causal_lm
from lkd.models.routing import Routing
from lkd.models.sampling import Completions, sample_completions, sampling_problems
from lkd.modules.base import StepOutput
from lkd.modules.lm import PromptLMModule
from lkd.modules.on_policy_cache import CachedCompletions, cache_description, cache_problems, completion_targets
from lkd.modules.on_policy_routing import real_text_mask, routed_scores, routing_problems_on_policy
from lkd.modules.on_policy_tokenizers import CROSS_LOSSES, TeacherTokenizer, distinct_teacher_tokenizer, tokenizer_problems
from lkd.modules.routed_teacher import RoutedTeacher, TeacherPasses, routing_problems
from lkd.schedules import ScheduleName, learning_rate_problem
from lkd.teacher import Teacher

LOSSES = ("jsd", "jsd_topk", "sampled")
OFF_POLICY = ("reference", "teacher")


class OnPolicyDistillModule(PromptLMModule):
    """Teacher → student distillation on the student's own samples (see the module docstring).

    Args:
        student: the causal LM to train (YAML ``class_path``).
        teacher: the frozen teacher (:class:`lkd.teacher.Teacher`), run live: it scores new samples every step; with
            ``teacher.cache`` (sequence-level KD only) its completions and top-k come from the cache
            (:mod:`lkd.modules.on_policy_cache`).
        tokenizer: the student's tokenizer (and the teacher's without ``teacher_tokenizer``) and the prompt data's.
        teacher_tokenizer: the teacher's tokenizer when it differs from the student's: the teacher reads each completion
            as text in its own tokens after its own rendering of the prompt, and the models are compared on aligned
            chunks (:mod:`lkd.modules.on_policy_tokenizers`); None (or the student's own) = one tokenizer for both.
        lmbda: fraction of training rows whose completion the student samples (0: off-policy only, 1: all).
        beta: the JSD's β: 0 = forward KL(p_t ‖ p_s), 1 = reverse KL(p_s ‖ p_t).
        loss: one tokenizer: ``jsd`` (the default), ``jsd_topk`` (the teacher's ``top_k`` tokens plus a tail bucket; the
            default, and the only loss, with a teacher cache) or ``sampled``; two tokenizers: ``alm`` (the default: chunk
            likelihoods), ``shared_kl`` or ``uld`` (:mod:`lkd.losses.cross_tokenizer`).
        top_k: the teacher tokens per position of ``jsd_topk`` and of a teacher cache (per chunk start of ``shared_kl`` /
            ``uld``).
        off_policy: where the other rows' completions come from: ``reference`` (the data's) or ``teacher`` (its
            greedy completion).
        temperature: the divergence's temperature (both distributions; τ of ``alm``).
        reduction: ``token`` (mean over the batch's completion tokens) or ``sequence`` (per row, then over rows).
        ce_weight: weight of the student's cross-entropy on reference completions (0: none).
        max_new_tokens: the most tokens a completion samples.
        sample_temperature: the student's sampling temperature (0 = greedy).
        top_p: nucleus mass of the student's sampling.
        replay_steps: optimizer steps each rollout is trained on (DistiLLM's replay, arXiv 2402.03898, in its simplest
            form): 1 = a fresh rollout every step; k = a rollout (the batch's prompts with their sampled / reference
            completions) is generated every k-th step and reused for the k − 1 steps after it (those steps' batches
            are skipped), so sampling costs 1/k per step. Not kept in checkpoints: a resumed run rolls out afresh.
        seed: seeds the per-row choice and the samples (with the epoch, the step and the process rank).
        router: how a Mixture-of-Experts teacher's experts are mixed while it scores (:mod:`lkd.models.routing`, or
            :class:`lkd.models.router.StudentAwareRouter`; :mod:`lkd.modules.on_policy_routing`); None = its own gating.
            Checkpoint keys ``router.*``, parameter group ``router``. ``loss: sampled`` is refused with a trained one.
        router_top_k, router_temperature, router_lm_weight, router_balance_weight, router_every_n_steps, router_lr: as
            :class:`lkd.modules.LMDistillModule`'s (k and τ until a :class:`lkd.callbacks.RoutingSchedule` drives them).
    """

    def __init__(self, student: nn.Module, teacher: Teacher, tokenizer: str = "smollm2", *, teacher_tokenizer: str | None = None,
                 lmbda: float = 1.0, beta: float = 0.5, loss: str | None = None, top_k: int = 32, off_policy: str = "reference",
                 temperature: float = 1.0,
                 reduction: str = "token", ce_weight: float = 0.0, max_new_tokens: int = 32, sample_temperature: float = 1.0,
                 top_p: float = 1.0, replay_steps: int = 1, seed: int = 0, optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05,
                 min_lr_ratio: float = 0.1, lr_schedule: ScheduleName = "cosine", router: Routing | None = None,
                 router_top_k: int | None = None, router_temperature: float = 1.0, router_lm_weight: float = 1.0,
                 router_balance_weight: float = 0.0, router_every_n_steps: int = 1, router_lr: float = 1e-4):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule)
        sv, tv = causal_lm.vocab_size(student), causal_lm.vocab_size(teacher.model)
        pair = distinct_teacher_tokenizer(tokenizer, teacher_tokenizer, same_vocab_size=sv == tv)  # None: one tokenizer
        loss_name = loss or (CROSS_LOSSES[0] if pair is not None else "jsd_topk" if teacher.cache_path is not None else LOSSES[0])
        problems = on_policy_problems(beta=beta, lmbda=lmbda, temperature=temperature, reduction=reduction)
        problems += sampling_problems(max_new_tokens=max_new_tokens, temperature=sample_temperature, top_p=top_p)
        if off_policy not in OFF_POLICY:
            problems.append(f"off_policy must be one of {OFF_POLICY} (the completions of the rows the student does not sample), got {off_policy!r}")
        if top_k < 1:
            problems.append(f"top_k must be >= 1, got {top_k}")
        if replay_steps < 1:
            problems.append(f"replay_steps must be >= 1 (1 = a fresh rollout every step), got {replay_steps}")
        if ce_weight < 0:
            problems.append(f"ce_weight must be >= 0, got {ce_weight}")
        problems += cache_problems(teacher, lmbda=lmbda, off_policy=off_policy, loss=loss_name, router=router, teacher_tokenizer=pair,
                                   replay_steps=replay_steps, top_k=top_k, vocab=tv)
        problems += tokenizer_problems(loss_name, pair, one_tokenizer_losses=LOSSES, student_vocab=sv, teacher_vocab=tv,
                                       reduction=reduction, router=router)
        problems += routing_problems(temperature=router_temperature, lm_weight=router_lm_weight,
                                     balance_weight=router_balance_weight, every_n_steps=router_every_n_steps)
        problems += routing_problems_on_policy(router, loss=loss_name)
        if problem := learning_rate_problem("router_lr", router_lr, "model.init_args.router_lr=1.0e-4 (the default)"):
            problems.append(problem)
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.student, self.teacher = student, teacher
        self.lmbda, self.beta, self.loss_name, self.top_k, self.off_policy = lmbda, beta, loss_name, top_k, off_policy
        self.teacher_tokenizer, self.cross_tokenizer = pair, pair is not None
        self.teacher_tokens = None if pair is None else TeacherTokenizer(pair, loss_name, temperature=temperature, top_k=top_k,
                                                                         teacher_context=causal_lm.context_length(teacher.model))
        self.temperature, self.reduction, self.ce_weight, self.seed = temperature, reduction, ce_weight, seed
        self.max_new_tokens, self.sample_temperature, self.top_p = max_new_tokens, sample_temperature, top_p
        self.replay_steps, self._rollout = replay_steps, None
        self.router, self.router_lr = router, router_lr  # registered: the checkpoint's router.* and the "router" group
        self.routed_teacher = None if router is None else RoutedTeacher(
            teacher, router, causal_lm.hidden_size(student), top_k=router_top_k, temperature=router_temperature,
            lm_weight=router_lm_weight, balance_weight=router_balance_weight, every_n_steps=router_every_n_steps)
        self.save_hyperparameters(ignore=["student", "teacher", "router", "optimizer"])

    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.student

    @override
    def data_links(self) -> dict:
        """Two tokenizers: the data renders and tokenises each prompt for the teacher too (``teacher_prompt_ids``)."""
        return {} if self.teacher_tokens is None else self.teacher_tokens.data_links()

    @override
    def bind_tokenizers(self, datamodule) -> None:
        super().bind_tokenizers(datamodule)
        if self.teacher_tokens is not None:
            self.teacher_tokens.bind(datamodule, self.device)

    # ---- the teacher cache: sequence-level KD (lkd.modules.on_policy_cache) ------------------------------------------
    @override
    def cache_description(self) -> dict:
        return cache_description(top_k=self.top_k, temperature=self.temperature, vocab=causal_lm.vocab_size(self.teacher.model),
                                 max_new_tokens=self.max_new_tokens)

    @override
    def cache_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(row_index (B,), {...})``: the teacher's greedy completion of each prompt and its top-k along it
        (:func:`lkd.modules.on_policy_cache.completion_targets`)."""
        return batch["row_index"], completion_targets(self.teacher, batch, self.teacher_greedy(batch), max_new_tokens=self.max_new_tokens,
                                                      pad_token_id=self.pad_token_id, top_k=self.top_k, temperature=self.temperature)

    def cached_completions(self, batch: dict, stage: str) -> CachedCompletions | None:
        """The batch's teacher completions and top-k from the attached cache, None when no cache serves ``stage``."""
        return CachedCompletions.read(self.teacher, stage, batch["row_index"])

    # ---- which rows the student samples -----------------------------------------------------------------------
    def on_policy_rows(self, row_index: torch.Tensor) -> torch.Tensor:
        """(B,) bool: rows whose completion the student samples, each drawn with probability ``lmbda`` from
        (seed, epoch, row index): the same rows on a resumed run, independent of the batch's composition."""
        if self.lmbda in (0.0, 1.0):
            return torch.full(row_index.shape, self.lmbda == 1.0, device=row_index.device)
        epoch = self.current_epoch if self._trainer is not None else 0
        draws = [torch.rand((), generator=torch.Generator().manual_seed(hash((self.seed, epoch, int(i))) & 0x7FFFFFFF))
                 for i in row_index.tolist()]
        return (torch.stack(draws) < self.lmbda).to(row_index.device)

    def sampler_generator(self) -> torch.Generator:
        """The random source of this step's samples: seed, optimizer step and process rank."""
        rank = self.global_rank if self._trainer is not None else 0
        step = self.global_step if self._trainer is not None else 0
        device = self.device if self.device.type != "mps" else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(hash((self.seed, step, rank)) & 0x7FFFFFFFFFFF)

    def sample(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, temperature: float) -> Completions:
        return sample_completions(model, prompt_ids, prompt_mask, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_token_id,
                                  pad_token_id=self.pad_token_id, temperature=temperature, top_p=self.top_p,
                                  generator=self.sampler_generator() if temperature > 0 else None)

    def teacher_greedy(self, batch: dict, rows: torch.Tensor | None = None) -> Completions:
        """The teacher's greedy completions of the batch's prompts (``rows`` of them), in the student's tokens: across
        tokenizers, of its own prompts, read back (:meth:`lkd.modules.on_policy_tokenizers.TeacherTokenizer.greedy`)."""
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        if self.teacher_tokens is not None:
            return self.teacher_tokens.greedy(self.teacher, pick(batch["teacher_prompt_ids"]), pick(batch["teacher_prompt_mask"]),
                                              max_new_tokens=self.max_new_tokens)
        return self.sample(self.teacher, pick(batch["prompt_ids"]), pick(batch["prompt_mask"]), temperature=0.0)

    @torch.no_grad()
    def teacher_nll(self, batch: dict, completions: Completions) -> tuple[float, int]:
        """The teacher's summed NLL of completions of the batch's prompts (in the student's tokens) and the tokens it
        counted: those tokens, or across tokenizers its own tokens of their text after its own prompts (and its EOS)."""
        if self.teacher_tokens is not None:
            reading = self.teacher_tokens.read(batch["teacher_prompt_ids"], batch["teacher_prompt_mask"], completions.tokens,
                                               completions.mask.long(), student_prompt_width=batch["prompt_ids"].shape[1])
            ids, attention, counted = reading.input_ids, reading.attention_mask, reading.completion_mask
        else:
            ids, attention, counted = join_prompt_completion(batch["prompt_ids"], batch["prompt_mask"], completions.tokens,
                                                             completions.mask.long())  # (B, T) each
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logprobs = token_logprobs(self.teacher(input_ids=ids, attention_mask=attention, position_ids=positions).logits, ids)  # (B, T)
        return -float((logprobs * counted).sum()), int(counted.sum())

    def completions(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(completion_ids (B, C), completion_mask (B, C), on_policy (B,))``: the sampled rows' samples and the
        others' reference (or teacher) completions, right-padded to one width."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        refs, ref_mask = batch["completion_ids"], batch["completion_mask"]
        B = len(prompt_ids)
        on = self.on_policy_rows(batch["row_index"]) if stage == "train" else torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
        parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # rows -> (row ids, tokens, mask)
        if on.any():
            rows = on.nonzero().squeeze(-1)
            sampled = self.sample(self.student, prompt_ids[rows], prompt_mask[rows], temperature=self.sample_temperature)
            parts["student"] = (rows, sampled.tokens, sampled.mask)
        rest = (~on).nonzero().squeeze(-1)
        if rest.numel() and (cached := self.cached_completions(batch, stage)) is not None:  # lmbda 0: every row
            parts["teacher"] = (rest, cached.tokens[rest], cached.mask[rest])
        elif rest.numel() and stage == "train" and self.off_policy == "teacher":
            taught = self.teacher_greedy(batch, rest)
            parts["teacher"] = (rest, taught.tokens, taught.mask)
        elif rest.numel():
            parts["reference"] = (rest, refs[rest], ref_mask[rest])
        width = max(t.shape[1] for _, t, _ in parts.values())
        ids = prompt_ids.new_full((B, width), self.pad_token_id)
        mask = prompt_ids.new_zeros((B, width))
        for rows, tokens, m in parts.values():
            ids[rows, :tokens.shape[1]] = tokens
            mask[rows, :m.shape[1]] = m.long()
        return ids, mask, on

    def rollout(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompt_ids, prompt_mask, completion_ids, completion_mask, on_policy)`` of this step: the batch's, or with
        ``replay_steps`` > 1 between rollouts the last rollout's."""
        return self.rollout_and_batch(batch, stage)[0]

    def rollout_and_batch(self, batch: dict, stage: str) -> tuple[tuple, dict]:
        """This step's :meth:`rollout` and the batch it was rolled out from (its teacher prompts, across tokenizers)."""
        step = self.global_step if self._trainer is not None else 0
        if stage == "train" and self.replay_steps > 1 and step % self.replay_steps and self._rollout is not None:
            return self._rollout
        out = ((batch["prompt_ids"], batch["prompt_mask"], *self.completions(batch, stage)), batch)
        if stage == "train" and self.replay_steps > 1:
            self._rollout = out
        return out

    # ---- the step --------------------------------------------------------------------------------------------------
    @override
    def step(self, batch, stage: str) -> StepOutput:
        if self.teacher_tokens is not None:
            return self.cross_tokenizer_step(batch, stage)
        prompt_ids, prompt_mask, completion_ids, completion_mask, on = self.rollout(batch, stage)
        input_ids, attention_mask, loss_mask = join_prompt_completion(prompt_ids, prompt_mask, completion_ids,
                                                                      completion_mask)  # (B, P + C) each
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        s_out = self.student(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             output_hidden_states=self.reads_student)
        s_logits = s_out.logits[:, :-1]  # (B, T-1, V)
        cached = self.cached_completions(batch, stage)  # a teacher cache: its top-k along the completions, no teacher forward
        teacher = cached.passes(prompt_ids.shape[1], input_ids.shape[1]) if cached is not None else self.teacher_passes(
            {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}, stage, s_out)
        targets, mask = input_ids[:, 1:], loss_mask[:, 1:].bool()  # (B, T-1): position n predicts token n + 1
        s_token_lp = F.log_softmax(s_logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # (B, T-1)
        per_token = torch.stack([self.token_divergence(s_logits, t, s_token_lp, targets, on)
                                 for t in teacher.features]).mean(0)  # (B, T-1); Knowledge Augmentation: its passes averaged
        divergence = reduce_tokens(per_token, mask, reduction=self.reduction)
        tokens = int(mask.sum())
        nll = -(s_token_lp * mask).sum() / max(tokens, 1)
        terms = {"divergence": divergence, "on_policy_rows": on.float().mean(),
                 "completion_tokens": mask.sum(-1).float().mean()}
        loss = divergence
        taught = (stage == "train" and self.off_policy == "teacher") or cached is not None  # the teacher's completions
        references = torch.zeros_like(on) if taught else ~on  # (B,) the data's completions
        reference_rows = mask & references[:, None]
        if self.ce_weight > 0 and reference_rows.any():
            ce = -(s_token_lp * reference_rows).sum() / reference_rows.sum()
            terms["ce"] = ce
            loss = loss + self.ce_weight * ce
        terms["nll"] = nll.detach()
        student_loss = loss
        if teacher.records:  # routed: its drift and, when it learns, its objective (lkd.modules.on_policy_routing)
            router_loss, router_logs = self.routed_teacher.objective(stage, teacher, {"divergence": divergence}, {"divergence": 1.0},
                                                                     input_ids, real_text_mask(attention_mask, loss_mask, references))
            terms |= router_logs
            loss = loss if router_loss is None else loss + router_loss
        return StepOutput(loss, len(input_ids), terms, metric_args=(nll.detach(), tokens, self.predicted_bytes(input_ids, loss_mask)),
                          logged_loss=student_loss)

    def token_divergence(self, s_logits: torch.Tensor, teacher: dict, s_token_lp: torch.Tensor, targets: torch.Tensor,
                         on: torch.Tensor) -> torch.Tensor:
        """(B, T-1) the per-token loss against one teacher pass: the JSD (``jsd`` / ``jsd_topk``), or on sampled rows the
        sampled-token estimator (``sampled``). ``s_logits``: (B, T-1, V); ``teacher``: the pass's ``logits`` (B, T, V) or,
        from a cache, its ``topk`` ((B, T-1, k) log-probabilities at T, (B, T-1, k) ids); ``s_token_lp``, ``targets``:
        (B, T-1); ``on``: (B,) the sampled rows."""
        if "topk" in teacher:  # a teacher cache (jsd_topk only)
            return generalized_jsd_topk(s_logits, *teacher["topk"], beta=self.beta, temperature=self.temperature)
        t_logits = teacher["logits"][:, :-1]  # (B, T-1, V)
        if self.loss_name == "jsd_topk":
            t_lp = F.log_softmax(t_logits.float() / self.temperature, dim=-1)
            top = t_lp.topk(min(self.top_k, t_lp.shape[-1]), dim=-1)
            per_token = generalized_jsd_topk(s_logits, top.values, top.indices, beta=self.beta, temperature=self.temperature)
        else:
            per_token = generalized_jsd(s_logits, t_logits, beta=self.beta, temperature=self.temperature)  # (B, T-1)
        if self.loss_name == "sampled" and on.any():
            t_token_lp = F.log_softmax(t_logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
            per_token = torch.where(on[:, None], sampled_token_reverse_kl(s_token_lp, t_token_lp), per_token)
        return per_token

    def cross_tokenizer_step(self, batch: dict, stage: str) -> StepOutput:
        """The step across tokenizers (:mod:`lkd.modules.on_policy_tokenizers`): the student scores its joined sequences,
        the teacher its own prompts followed by the completions read as text in its tokens, and the chunk loss compares
        them; ``ce``, ``nll`` and bits per byte are the student's, over its completion tokens."""
        (prompt_ids, prompt_mask, completion_ids, completion_mask, on), source = self.rollout_and_batch(batch, stage)
        input_ids, attention_mask, loss_mask = join_prompt_completion(prompt_ids, prompt_mask, completion_ids,
                                                                      completion_mask)  # (B, S) each
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        s_logits = self.student(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits  # (B, S, V_s)
        s_token_lp = token_logprobs(s_logits, input_ids)  # (B, S): log p_s(x_n | x_<n), 0 at n = 0
        reading = self.teacher_tokens.read(source["teacher_prompt_ids"], source["teacher_prompt_mask"], completion_ids,
                                           completion_mask, student_prompt_width=prompt_ids.shape[1])
        with torch.no_grad():
            t_logits = self.teacher(input_ids=reading.input_ids, attention_mask=reading.attention_mask,
                                    position_ids=reading.position_ids).logits  # (B, T, V_t)
        mask = loss_mask.bool()  # (B, S) the student's completion tokens
        divergence, logs = self.teacher_tokens.divergence(s_logits, s_token_lp * mask, t_logits, reading)
        tokens = int(mask.sum())
        nll = -(s_token_lp * mask).sum() / max(tokens, 1)
        terms = {"divergence": divergence, "on_policy_rows": on.float().mean(), "completion_tokens": mask.sum(-1).float().mean(),
                 "teacher_completion_tokens": reading.completion_mask.sum(-1).float().mean(), **logs}
        loss = divergence
        references = ~on if self.off_policy == "reference" or stage != "train" else torch.zeros_like(on)  # (B,) the data's completions
        reference_rows = mask & references[:, None]
        if self.ce_weight > 0 and reference_rows.any():
            terms["ce"] = -(s_token_lp * reference_rows).sum() / reference_rows.sum()
            loss = loss + self.ce_weight * terms["ce"]
        terms["nll"] = nll.detach()
        return StepOutput(loss, len(input_ids), terms, metric_args=(nll.detach(), tokens, self.predicted_bytes(input_ids, loss_mask)))

    # ---- the teacher's scores, through a routing of its experts ------------------------------------------------------
    @property
    def reads_student(self) -> bool:
        """An active routing reads the student's hidden states (the student returns them)."""
        routed = self.routed_teacher
        return routed is not None and routed.active and routed.reads_student

    def teacher_passes(self, model_inputs: dict[str, torch.Tensor], stage: str, student_out) -> TeacherPasses:
        """The teacher's scores of the joined sequences (``model_inputs``: ``input_ids``, ``attention_mask``,
        ``position_ids`` (B, T) each): one pass of its own gating without gradient (``features[0]["logits"]`` (B, T, V)),
        or through an active routing the routed teacher's passes (:func:`lkd.modules.on_policy_routing.routed_scores`)."""
        routed = self.routed_teacher
        if routed is None or not routed.active:
            with torch.no_grad():
                return TeacherPasses([{"logits": self.teacher(**model_inputs).logits}])
        return routed_scores(routed, model_inputs, stage, self.global_step, student_out)

    @override
    def on_after_backward(self) -> None:
        self.teacher.placement.release()  # routed: off the device once the backward through it is done

    @override
    def parameter_groups(self) -> list[dict]:
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "student"}]
        if self.router is not None and (params := list(self.router.parameters())):
            groups.append({"params": params, "name": "router", "lr": self.router_lr})
        return groups
