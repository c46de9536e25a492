"""Caption variations on a tiny Gemma 3 causal LM loaded through from_pretrained (random weights:
the text is noise, but seeded noise, so everything that decides it runs for real)."""

from __future__ import annotations

import dataclasses

import pytest

try:
    from tiny_stage_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_stage_models import *  # noqa: F403

from diffspec.errors import GenerationError, StageError
from diffspec.stages.captions import (
    CaptionGenerator,
    CaptionParams,
    caption_fingerprint,
    caption_requests,
    caption_seed,
    render_instruction,
    text_fingerprint,
)
from diffspec.stages.hfload import HFModelRef

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Almond Horchata", "Fruit Salad with Fennel, Watercress, and Smoked Salt"]
PARAMS = CaptionParams(temperature=1.0, max_new_tokens=16, base_seed=3)


@pytest.fixture(scope="module")
def generator(tiny_lm) -> CaptionGenerator:
    return CaptionGenerator(HFModelRef(str(tiny_lm)))


def test_the_chat_template_wraps_the_instruction(generator: CaptionGenerator) -> None:
    assert generator.has_chat_template
    prompt = generator.prompt("Almond  Horchata", PARAMS)
    message = render_instruction(PARAMS.instruction, "Almond Horchata")
    assert prompt == f"<bos><start_of_turn>user\n{message}<end_of_turn>\n<start_of_turn>model\n"
    caption = generator.generate(caption_requests(["Almond Horchata"], 1, PARAMS), PARAMS)[0]
    assert caption.chat_template is True


def test_records_carry_identity_seed_model_and_parameters(generator: CaptionGenerator, tiny_lm) -> None:
    requests = caption_requests(TEXTS, 3, PARAMS)
    captions = generator.generate(requests, PARAMS, batch_size=4)
    assert [(c.source_text, c.variation) for c in captions] == [(t, v) for t in TEXTS for v in range(3)]
    for c in captions:
        assert c.seed == caption_seed(3, c.source_text, c.variation)
        assert c.model == HFModelRef(str(tiny_lm)) and c.params == PARAMS
        assert c.fingerprint == caption_fingerprint(c.model, PARAMS, c.seed, text_fingerprint(c.source_text))
        assert 0 < c.new_tokens <= PARAMS.max_new_tokens
        assert c.raw_text and "<end_of_turn>" not in c.raw_text
        assert "\n" not in c.text
    upstream = dataclasses.replace(requests[0], input_fingerprint="csv-row-fp")
    (from_row,) = generator.generate([upstream], PARAMS)
    assert from_row.fingerprint == caption_fingerprint(from_row.model, PARAMS, upstream.seed, "csv-row-fp")
    assert from_row.raw_text == captions[0].raw_text  # the fingerprint changes, the text does not
    with pytest.raises(dataclasses.FrozenInstanceError):
        captions[0].text = "x"  # type: ignore[misc]


def test_same_seed_same_text_and_different_seeds_different_text(generator: CaptionGenerator, tiny_lm) -> None:
    requests = caption_requests(TEXTS, 4, PARAMS)
    first = generator.generate(requests, PARAMS, batch_size=8)
    again = generator.generate(requests, PARAMS, batch_size=8)
    reloaded = CaptionGenerator(HFModelRef(str(tiny_lm))).generate(requests, PARAMS, batch_size=8)
    assert [c.raw_text for c in first] == [c.raw_text for c in again] == [c.raw_text for c in reloaded]
    assert len({c.raw_text for c in first}) >= len(first) - 1  # 8 seeds: (almost) all different
    other = generator.generate(caption_requests(TEXTS, 4, dataclasses.replace(PARAMS, base_seed=4)), PARAMS)
    assert sum(a.raw_text != b.raw_text for a, b in zip(first, other)) >= len(first) - 1


def test_a_caption_does_not_depend_on_its_batch(generator: CaptionGenerator) -> None:
    requests = caption_requests(TEXTS, 3, PARAMS)
    batched = [c.raw_text for c in generator.generate(requests, PARAMS, batch_size=6)]
    alone = [generator.generate([r], PARAMS, batch_size=1)[0].raw_text for r in requests]
    shuffled = generator.generate(requests[::-1], PARAMS, batch_size=4)[::-1]
    assert batched == alone == [c.raw_text for c in shuffled]


def test_temperature_zero_and_tiny_top_p_are_greedy(generator: CaptionGenerator) -> None:
    requests = caption_requests(TEXTS[:1], 3, PARAMS)
    greedy = generator.generate(requests, dataclasses.replace(PARAMS, temperature=0.0))
    assert len({c.raw_text for c in greedy}) == 1  # the seed no longer matters
    nucleus = generator.generate(requests, dataclasses.replace(PARAMS, top_p=1e-6))
    top1 = generator.generate(requests, dataclasses.replace(PARAMS, top_k=1))
    assert [c.raw_text for c in nucleus] == [c.raw_text for c in top1] == [c.raw_text for c in greedy]
    sampled = generator.generate(requests, PARAMS)
    assert {c.raw_text for c in sampled} != {greedy[0].raw_text}


def test_max_new_tokens_bounds_the_reply(generator: CaptionGenerator) -> None:
    short = generator.generate(caption_requests(TEXTS, 2, PARAMS), dataclasses.replace(PARAMS, max_new_tokens=3))
    assert all(c.new_tokens <= 3 for c in short)


def test_without_a_chat_template_the_instruction_is_fed_plain(tiny_lm_plain, generator: CaptionGenerator) -> None:
    plain = CaptionGenerator(HFModelRef(str(tiny_lm_plain)))
    assert not plain.has_chat_template
    assert plain.prompt("Almond Horchata", PARAMS) == render_instruction(PARAMS.instruction, "Almond Horchata")
    requests = caption_requests(TEXTS, 2, PARAMS)
    got = plain.generate(requests, PARAMS)
    assert all(c.chat_template is False for c in got)
    # same weights (same build seed), different input: the template really reaches the model
    templated = generator.generate(requests, PARAMS)
    assert [c.raw_text for c in got] != [c.raw_text for c in templated]


def test_loading_errors_name_the_model(tmp_path) -> None:
    with pytest.raises(GenerationError, match="not a folder"):
        CaptionGenerator(HFModelRef(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenerationError, match="cannot load caption model"):
        CaptionGenerator(HFModelRef(str(tmp_path / "empty")))


def test_bad_batch_size_is_a_stage_error(generator: CaptionGenerator) -> None:
    with pytest.raises(StageError, match="batch size"):
        generator.generate(caption_requests(TEXTS, 1, PARAMS), PARAMS, batch_size=0)
