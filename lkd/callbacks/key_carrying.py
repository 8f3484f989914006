"""Teacher → student transfer of Discrete Key-Value Bottleneck keys: carrying, and initialisation."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.models.dkvb import DiscreteKeyValueBottleneck
from lkd.models.key_init import init_keys_from_embeddings


def _dkvb_of(pl_module: pl.LightningModule, attr: str) -> DiscreteKeyValueBottleneck:
    module = pl_module
    for part in attr.split("."):
        module = getattr(module, part, None)
    if not isinstance(module, DiscreteKeyValueBottleneck):
        found = sorted(n for n, m in pl_module.named_modules() if isinstance(m, DiscreteKeyValueBottleneck))
        raise ValueError(
            f"{attr!r} is not a DiscreteKeyValueBottleneck of {type(pl_module).__name__}; DKVBs there: {found or 'none'}. "
            "HINT: give teacher and student a `dkvb:` in the YAML, or fix teacher_attr/student_attr."
        )
    return module


class KeyCarrying(Callback):
    """Copy the teacher's DKVB keys (and optionally values) into the student's DKVB.

    When: at the start of distillation (the first training batch of a fresh run, after the teacher
    checkpoint was loaded in ``setup``) and then, with ``every_n_steps > 0``, after every ``every_n_steps``-th
    optimizer step (``trainer.global_step``, so right under gradient accumulation).

    What: the keys (C, K, Dk) and the fixed random projection into key space (a key only means something
    with the projection that produced its queries), plus the values (C, K, V) with ``carry_values``.
    Keys are written with :meth:`DiscreteKeyValueBottleneck.write_keys` (EMA statistics reset to them),
    so a student whose keys keep an EMA continues *from* the carried keys instead of snapping back to its
    old ones; ``freeze_student_keys`` stops the student's EMA so the carried keys stay exactly.

    Shapes must agree: same number of codebooks, keys and key width, and the same DKVB input width (the
    projection is shared). A student of another hidden size needs ``dkvb.input_dim`` set to the teacher's
    DKVB input width (a learned ``Linear`` in front of its DKVB); otherwise setup fails with that hint.

    State (``carries`` done, the last step carried) is in the checkpoint, so a resumed run does not carry
    again at its first batch.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        *,
        carry_values: bool = False,
        freeze_student_keys: bool = False,
        teacher_attr: str = "teacher.model.dkvb",
        student_attr: str = "student.dkvb",
    ):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0 = only at the start), got {every_n_steps}")
        self.every_n_steps, self.carry_values, self.freeze_student_keys = every_n_steps, carry_values, freeze_student_keys
        self.teacher_attr, self.student_attr = teacher_attr, student_attr
        self.carries = 0
        self.last_carried_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(teacher_attr=self.teacher_attr, student_attr=self.student_attr)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_compatible(_dkvb_of(pl_module, self.teacher_attr), _dkvb_of(pl_module, self.student_attr))

    def check_compatible(self, teacher: DiscreteKeyValueBottleneck, student: DiscreteKeyValueBottleneck) -> None:
        problems = []
        t_shape, s_shape = (teacher.num_codebooks, teacher.num_keys, teacher.key_dim), (student.num_codebooks, student.num_keys, student.key_dim)
        if t_shape != s_shape:
            problems.append(f"teacher keys (codebooks, keys, key_dim) = {t_shape} vs student {s_shape}")
        if teacher.in_features != student.in_features:
            problems.append(
                f"teacher DKVB input width {teacher.in_features} vs student {student.in_features} (HINT: set the "
                f"student's dkvb.input_dim: {teacher.in_features}, a learned projection in front of its DKVB)"
            )
        if (teacher.projection is None) != (student.projection is None):
            problems.append("one DKVB has a random projection and the other none")
        if self.carry_values and teacher.values.shape != student.values.shape:
            problems.append(f"values {tuple(teacher.values.shape)} vs {tuple(student.values.shape)} (or carry_values: false)")
        if problems:
            raise ValueError("KeyCarrying: teacher and student DKVBs do not fit: " + "; ".join(problems))

    @torch.no_grad()
    def carry(self, pl_module: pl.LightningModule) -> None:
        teacher, student = _dkvb_of(pl_module, self.teacher_attr), _dkvb_of(pl_module, self.student_attr)
        if teacher.projection is not None:
            student.projection.copy_(teacher.projection)
        student.write_keys(teacher.keys.detach().clone())
        if self.carry_values:
            student.values.copy_(teacher.values)
        if self.freeze_student_keys:
            student.freeze_keys(True)
        self.carries += 1
        self.last_carried_step = pl_module.global_step

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.freeze_student_keys and self.carries:
            _dkvb_of(pl_module, self.student_attr).freeze_keys(True)  # the flag is not in the checkpoint
        if self.carries == 0:
            self.carry(pl_module)
            rank_zero_info(f"KeyCarrying: teacher DKVB keys{' and values' if self.carry_values else ''} copied into the student")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_carried_step:
            self.carry(pl_module)
        pl_module.log("dkvb/carries", float(self.carries), on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict:
        return {"carries": self.carries, "last_carried_step": self.last_carried_step}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.carries = state_dict.get("carries", 0)
        self.last_carried_step = state_dict.get("last_carried_step", -1)


class DiscreteKeyInit(Callback):
    """Initialise a DKVB's keys from a network's embeddings, once, before the first optimizer step.

    Default: the student's DKVB from the frozen teacher (``source="teacher"``, ``dkvb="student.dkvb"``). The
    same callback initialises a teacher's own DKVB from its pretrained encoder before fine-tuning
    (``source="model"``, ``dkvb="model.dkvb"``).

    Embeddings: the ``source`` network's sequence vectors (its ``pool``: the last-layer [CLS] state or the masked
    mean; one per training example; every unmasked token's state when the DKVB is ``on: tokens``) on the first ``num_batches`` training batches, mapped
    into the DKVB's key space by its fixed random projection; they must have the DKVB's input width.
    Then :func:`lkd.models.key_init.init_keys_from_embeddings`: every key starts at a distinct embedding drawn
    at random and moves to the softmax(−squared Euclidean distance / ``temperature``)-weighted mean of its
    ``neighbours`` nearest embeddings (:func:`lkd.models.discrete_key_init`). An EMA on the keys (e.g.
    :class:`EMAKeyUpdate` with ``init_steps: 0, after_init: ema``) continues from them.

    Args:
        source: attribute of the LightningModule whose embeddings are used (a ``TransformerClassifier``).
        dkvb: dotted attribute of the DKVB to initialise.
        num_batches: training batches whose embeddings are used.
        neighbours: M nearest embeddings per key.
        temperature: softmax temperature over squared distances.
        seed: seed of the draw of starting embeddings.
    """

    def __init__(self, source: str = "teacher", dkvb: str = "student.dkvb", *, num_batches: int = 20,
                 neighbours: int = 8, temperature: float = 1.0, seed: int = 0):
        problems = [f"{n} must be > 0, got {v}" for n, v in (("num_batches", num_batches), ("neighbours", neighbours),
                    ("temperature", temperature)) if not v > 0]
        if problems:
            raise ValueError("DiscreteKeyInit: " + "; ".join(problems))
        self.source, self.dkvb_attr = source, dkvb
        self.num_batches, self.neighbours, self.temperature, self.seed = num_batches, neighbours, temperature, seed
        self.done = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(source=self.source, dkvb=self.dkvb_attr)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done:
            return
        dkvb = _dkvb_of(pl_module, self.dkvb_attr)
        embeddings = self.embeddings(trainer, pl_module, tokens=self._on_tokens(pl_module))  # (N, D)
        if embeddings.shape[1] != dkvb.in_features:
            raise ValueError(
                f"{self.source} embeddings have width {embeddings.shape[1]} but {self.dkvb_attr} takes {dkvb.in_features}; "
                "key init from them needs equal widths (no dkvb.input_dim on that network, or the same hidden size)"
            )
        queries = dkvb.project(embeddings.to(dkvb.values.device))  # (N, C, Dk)
        init_keys_from_embeddings(dkvb, queries, neighbours=min(self.neighbours, len(queries)),
                                  temperature=self.temperature, seed=self.seed)
        self.done = True
        rank_zero_info(f"DiscreteKeyInit: {self.dkvb_attr} keys set from {len(queries)} {self.source} embeddings")

    def _on_tokens(self, pl_module) -> bool:
        owner = pl_module
        for part in self.dkvb_attr.split(".")[:-1]:
            owner = getattr(owner, part)
        settings = getattr(owner, "dkvb_settings", None)
        return settings is not None and settings.on == "tokens"

    @torch.no_grad()
    def embeddings(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, tokens: bool) -> torch.Tensor:
        network = getattr(pl_module, self.source)
        was_training = network.training
        network.eval()
        out = []
        try:
            for i, batch in enumerate(trainer.datamodule.train_dataloader()):
                if i >= self.num_batches:
                    break
                batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                states = network(**inputs, output_hidden_states=True).hidden_states[-1]  # (B, T, H)
                pool = getattr(network, "pool", lambda s, m: s[:, 0])  # a TransformerClassifier's [CLS] or mean
                out.append(states[batch["attention_mask"].bool()] if tokens else pool(states, batch["attention_mask"]))
        finally:
            network.train(was_training)
        return torch.cat(out).float()

    @override
    def state_dict(self) -> dict:
        return {"done": self.done}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.done = state_dict.get("done", False)
