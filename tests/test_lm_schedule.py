"""RoutingSchedule: values at given steps (linear, cosine), setup errors, and the schedule after resume."""

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lkd.callbacks import RoutingSchedule
from lkd.data.text import TextDataModule
from lkd.models.router import StudentAwareRouter
from lkd.modules.lm import LMDistillModule
from lkd.teacher import Teacher
from tests.helpers import tiny_trainer
from tests.lm_fixtures import WIKITEXT_CONFIG, tiny_student, tiny_teacher


def test_linear_values_at_given_steps():
    s = RoutingSchedule(1, 4, 2.0, 0.5, mode="linear", total_steps=100)
    assert [s.values(step)[0] for step in (0, 24, 25, 49, 50, 75, 99, 100, 500)] == [1, 1, 2, 2, 3, 4, 4, 4, 4]
    assert s.values(0)[1] == pytest.approx(2.0)
    assert s.values(50)[1] == pytest.approx(1.25)
    assert s.values(100)[1] == pytest.approx(0.5)


def test_cosine_is_slow_at_both_ends():
    s = RoutingSchedule(1, 4, 2.0, 0.5, mode="cosine", total_steps=100)
    assert s.values(50)[1] == pytest.approx(1.25)
    assert s.values(10)[1] == pytest.approx(2.0 - 1.5 * 0.5 * (1 - torch.cos(torch.tensor(0.1 * torch.pi)).item()))
    assert s.values(10)[0] == 1 and s.values(90)[0] == 4
    assert s.values(30)[0] == 1  # cosine progress at 30% is ~0.21 < 0.25


@pytest.mark.parametrize("kwargs, match", [
    (dict(start_top_k=0), "top-k values must be >= 1"),
    (dict(end_temperature=0.0), "temperatures must be > 0"),
    (dict(mode="step"), "mode must be"),
    (dict(total_steps=0), "total_steps must be >= 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutingSchedule(**kwargs)


def _module():
    return LMDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", router=StudentAwareRouter(),
                           loss_weights={"kl": 1.0})


# checkpoints on (the resume test turns them off itself), no epoch limit: the resumed run goes into a second epoch
_trainer = partial(tiny_trainer, max_epochs=None, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=True,
                   deterministic=None)


def test_top_k_above_the_teachers_experts_is_a_setup_error(tiny_wikitext, tmp_path):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16, batch_size=4)
    with pytest.raises(ValueError, match="goes up to 9 but the teacher has 8 experts.*end_top_k <= 8"):
        _trainer(tmp_path, callbacks=[RoutingSchedule(end_top_k=9)], max_steps=1).fit(_module(), dm)


def test_schedule_without_router_is_a_setup_error(tiny_wikitext, tmp_path):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16, batch_size=4)
    module = LMDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", loss_weights={"kl": 1.0})
    with pytest.raises(ValueError, match="needs a module with a router"):
        _trainer(tmp_path, callbacks=[RoutingSchedule()], max_steps=1).fit(module, dm)


class Record(Callback):
    """Records (top_k, temperature) per optimizer step; optionally stops the run after ``stop_at`` steps (a crash)."""

    def __init__(self, stop_at: int | None = None):
        self.seen, self.stop_at = {}, stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # runs after RoutingSchedule's (listed first)
        self.seen[trainer.global_step] = (pl_module.routed_teacher.top_k, round(pl_module.routed_teacher.temperature, 6))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def test_the_schedule_reaches_the_routing_through_set_schedule():
    """RoutingSchedule acts through RoutedTeacher.set_schedule (checked values), not by writing module attributes."""
    module = LMDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", router=StudentAwareRouter())
    routed = module.routed_teacher
    assert (routed.top_k, routed.temperature) == (2, 1.0)  # the teacher's own top-k, τ = 1 until a schedule drives them
    routed.set_schedule(4, 0.5)
    assert (routed.top_k, routed.temperature) == (4, 0.5)
    with pytest.raises(ValueError, match=r"router top-k must be in \[1, 8\].*got 9"):
        routed.set_schedule(9, 0.5)
    with pytest.raises(ValueError, match="router temperature must be > 0, got 0"):
        routed.set_schedule(2, 0.0)


def test_state_dict_round_trip():
    s = RoutingSchedule(total_steps=37)
    s.last_step = 5
    t = RoutingSchedule()
    t.load_state_dict(s.state_dict())
    assert (t.total_steps, t.last_step) == (37, 5)
    t.load_state_dict({})  # an older checkpoint without these keys
    assert t.total_steps == 37


def test_schedule_after_resume_matches_an_uninterrupted_run(tiny_wikitext, tmp_path):
    """Accumulation 2 (the schedule counts optimizer steps); 6 steps, stopped after 3 and resumed from the
    checkpoint: the resumed run sees the uninterrupted run's top-k and temperature at every step, and keeps
    the saved schedule length when resumed with a larger max_steps."""
    dm = lambda: TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=8, batch_size=1, max_blocks=12)  # noqa: E731
    common = dict(max_steps=6, accumulate_grad_batches=2, enable_checkpointing=False)
    ref = Record()
    _trainer(tmp_path / "ref", callbacks=[RoutingSchedule(end_top_k=4), ref], **common).fit(_module(), dm())
    expected = RoutingSchedule(end_top_k=4, total_steps=6)
    assert ref.seen == {s: (expected.values(s)[0], round(expected.values(s)[1], 6)) for s in range(6)}
    first = Record(stop_at=3)
    t1 = _trainer(tmp_path / "a", callbacks=[RoutingSchedule(end_top_k=4), first], **common)
    t1.fit(_module(), dm())
    assert max(first.seen) == 2  # steps 0, 1, 2 taken
    t1.save_checkpoint(tmp_path / "mid.ckpt")
    second = Record()
    schedule = RoutingSchedule(end_top_k=4, total_steps=None)
    # resumed with a longer max_steps: the saved total (6) keeps the schedule, steps 6-7 stay at the end values
    _trainer(tmp_path / "b", callbacks=[schedule, second], **{**common, "max_steps": 8}).fit(_module(), dm(), ckpt_path=tmp_path / "mid.ckpt")
    assert schedule.total_steps == 6
    assert {**first.seen, **second.seen} == {**ref.seen, 6: (4, 0.5), 7: (4, 0.5)}
