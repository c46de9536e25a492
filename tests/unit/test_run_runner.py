"""BatchRunner logic with a fake backend (pure executor logic; real generation is tested in
tests/integration): out-of-memory halving and strategy escalation, isolating a failing unit,
a model that cannot load."""

from __future__ import annotations

import pytest

from diffspec.errors import GenerationError
from diffspec.plan.batches import make_batches
from diffspec.plan.unit import ModelRef, PipelineKey, WorkUnit, fingerprint_of
from diffspec.run.runner import BatchRunner

pytest.importorskip("torch")

KEY = PipelineKey(ModelRef("m", "/m", "sd"), "txt2img", "ddim", (), 8, 8, 1, 1.0)


class Generated:
    def __init__(self, fp: str) -> None:
        self.fingerprint, self.image, self.seconds = fp, object(), 0.01


class FakeBackend:
    """Raises MemoryError (an out-of-memory error) for batches above `limit` while the
    strategy is weaker than `needs`; fails units whose prompt is 'bad'."""

    loads = 0
    calls: list[int] = []

    def __init__(self, key, device="cpu", strategy="none", dtype=None, limit=2, needs="none"):
        FakeBackend.loads += 1
        self.strategy, self.limit, self.needs = strategy, limit, needs

    def generate(self, units):
        FakeBackend.calls.append(len(units))
        from diffspec.generate.memory import STRATEGIES

        if any(u.prompt == "bad" for u in units):
            raise GenerationError("bad prompt")
        if len(units) > self.limit or STRATEGIES.index(self.strategy) < STRATEGIES.index(self.needs):
            raise MemoryError("out of memory")
        return [Generated(u.fingerprint) for u in units]

    def set_strategy(self, strategy):
        self.strategy = strategy

    def scheduler_config(self, key):
        return {"_class_name": "Fake"}

    def close(self):
        pass


def units(n: int, bad: int | None = None) -> list[WorkUnit]:
    out = []
    for i in range(n):
        prompt = "bad" if i == bad else "ok"
        out.append(WorkUnit(fingerprint_of(KEY, prompt, "", i), KEY, "a", i, i, prompt, ""))
    return out


def test_oom_halves_the_batch_and_the_smaller_size_sticks() -> None:
    FakeBackend.calls = []
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=2, **kw))
    b1, b2 = make_batches(units(16), lambda k: 8)
    out = runner.run(b1)
    assert len(out.items) == 8 and not out.failures
    assert [e.kind for e in out.events if e.kind == "oom_retry"] == ["oom_retry", "oom_retry", "oom_retry"]
    assert set(out.batch_sizes.values()) == {2}
    FakeBackend.calls = []
    out2 = runner.run(b2)
    assert FakeBackend.calls == [2, 2, 2, 2] and not [e for e in out2.events if e.kind == "oom_retry"]


def test_oom_at_batch_one_escalates_the_strategy_until_it_fits() -> None:
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=8, needs="vae_tiling", **kw))
    (batch,) = make_batches(units(2), lambda k: 2)
    out = runner.run(batch)
    assert len(out.items) == 2
    steps = [(e.get("old"), e.get("new")) for e in out.events if e.kind == "strategy_escalation"]
    assert steps == [("none", "attention_slicing"), ("attention_slicing", "vae_tiling")]
    assert runner.strategy == "vae_tiling"


def test_oom_with_no_strategy_left_fails_the_unit() -> None:
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=0, **kw))
    (batch,) = make_batches(units(1), lambda k: 1)
    out = runner.run(batch)
    assert not out.items and len(out.failures) == 1 and "out of memory" in out.failures[0][1]


def test_a_failing_unit_is_isolated_and_the_others_are_made() -> None:
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=8, **kw))
    (batch,) = make_batches(units(4, bad=2), lambda k: 4)
    out = runner.run(batch)
    assert len(out.items) == 3 and [fp for fp, _ in out.failures] == [batch.units[2].fingerprint]
    assert "bad prompt" in out.failures[0][1]


def test_a_model_that_cannot_load_fails_its_batches_once_and_fast() -> None:
    FakeBackend.loads = 0

    def factory(key, **kw):
        FakeBackend.loads += 1
        raise GenerationError("no such model")

    runner = BatchRunner("cpu", factory)
    b1, b2 = make_batches(units(4), lambda k: 2)
    assert len(runner.run(b1).failures) == 2 and len(runner.run(b2).failures) == 2
    assert FakeBackend.loads == 1


def test_the_pipeline_is_loaded_once_for_all_batches_of_a_model() -> None:
    FakeBackend.loads = 0
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=8, **kw))
    for b in make_batches(units(10), lambda k: 3):
        runner.run(b)
    assert FakeBackend.loads == 1


class TimedBackend(FakeBackend):
    """A backend whose calls cost `0.004 + 0.001 n` seconds, plus `0.002 n` above 4 images
    (the device saturates): 4 is the fastest size per image. Time is a fake clock, no sleeping."""

    clock = [0.0]

    def generate(self, units):
        n = len(units)
        TimedBackend.clock[0] += 0.004 + 0.001 * n + (0.002 * n if n > 4 else 0.0)
        return super().generate(units)


def test_tuning_measures_smaller_calls_and_keeps_the_fastest_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffspec.run.runner as runner_module

    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: TimedBackend.clock[0])
    FakeBackend.calls = []
    runner = BatchRunner("cpu", lambda k, **kw: TimedBackend(k, limit=64, **kw))
    events = []
    for b in make_batches(units(40), lambda k: 8, tune=True):
        out = runner.run(b)
        assert len(out.items) == len(b) and not out.failures
        events += [e for e in out.events if e.kind == "batch_tuned"]
    # warm-up at the planned 8, then 8, 4 and 2 measured once each; 4 wins and sticks
    assert FakeBackend.calls == [8, 8, 4, 2, 2, 4, 4, 4, 4]
    (tuned,) = events
    assert tuned.get("batch") == 4 and set(tuned.get("trials")) == {"8", "4", "2"}


def test_without_tuning_every_call_has_the_planned_size() -> None:
    FakeBackend.calls = []
    runner = BatchRunner("cpu", lambda k, **kw: FakeBackend(k, limit=64, **kw))
    for b in make_batches(units(20), lambda k: 8):
        runner.run(b)
    assert FakeBackend.calls == [8, 8, 4]


def test_an_out_of_memory_error_removes_the_larger_candidates() -> None:
    from diffspec.run.batch_tuning import BatchTuner

    tuner = BatchTuner(8)
    assert tuner.candidates == (8, 4, 2) and tuner.next_size() == 8
    tuner.observe(8, 1.0)  # warm-up
    tuner.observe(8, 0.8)
    tuner.cap(4)
    assert tuner.candidates == (4, 2) and 8 not in tuner.seconds_per_image and tuner.next_size() == 4
    tuner.observe(4, 0.2)
    assert tuner.observe(2, 0.2) and tuner.chosen == 4  # 0.05 s/image against 0.1
    assert BatchTuner(1).chosen == 1  # nothing to choose between
