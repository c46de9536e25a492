"""Caption units without a model: seeds from identity, fingerprints, instruction templates, cleaning."""

from __future__ import annotations

import dataclasses

import pytest

from diffspec.errors import GenerationError, StageError
from diffspec.stages.captions import (
    DEFAULT_INSTRUCTION,
    CaptionParams,
    caption_fingerprint,
    caption_requests,
    caption_seed,
    clean_caption,
    render_instruction,
    text_fingerprint,
)
from diffspec.stages.hfload import HFModelRef

MODEL = HFModelRef("google/gemma-3-1b-it", revision="abc123")


def test_seeds_derive_from_source_text_and_variation_not_from_position() -> None:
    params = CaptionParams(base_seed=7)
    one = caption_requests(["Almond Horchata", "Fruit Salad"], 3, params)
    other = caption_requests(["Fruit Salad", "Beef Stew", "Almond  Horchata "], 4, params)
    seeds_one = {(r.source_text, r.variation): r.seed for r in one}
    seeds_other = {(" ".join(r.source_text.split()), r.variation): r.seed for r in other}
    for key, seed in seeds_one.items():
        assert seeds_other[key] == seed  # reordering, more texts, more variations: same seeds
    assert len({r.seed for r in other}) == len(other)
    assert caption_seed(7, "Fruit Salad", 0) != caption_seed(8, "Fruit Salad", 0)
    assert 0 <= caption_seed(7, "x", 31) < 2**63


def test_requests_dedupe_texts_equal_after_whitespace_normalisation() -> None:
    requests = caption_requests(["a  cat", "a cat\n", "a dog"], 2, CaptionParams())
    assert [(r.source_text, r.variation) for r in requests] == [("a cat", 0), ("a cat", 1), ("a dog", 0), ("a dog", 1)]
    with pytest.raises(StageError, match="variations"):
        caption_requests(["a"], 0, CaptionParams())
    with pytest.raises(StageError, match="empty"):
        caption_requests(["  "], 1, CaptionParams())


def test_fingerprint_covers_model_parameters_seed_and_input() -> None:
    params = CaptionParams()
    base = caption_fingerprint(MODEL, params, 11, text_fingerprint("Almond Horchata"))
    assert len(base) == 64
    changed = [
        caption_fingerprint(
            dataclasses.replace(MODEL, source="google/gemma-3-4b-it"), params, 11, text_fingerprint("Almond Horchata")
        ),
        caption_fingerprint(
            dataclasses.replace(MODEL, revision="def456"), params, 11, text_fingerprint("Almond Horchata")
        ),
        caption_fingerprint(
            dataclasses.replace(MODEL, dtype="bfloat16"), params, 11, text_fingerprint("Almond Horchata")
        ),
        caption_fingerprint(MODEL, params, 12, text_fingerprint("Almond Horchata")),
        caption_fingerprint(MODEL, params, 11, text_fingerprint("Almond Horchata latte")),
    ]
    for field, value in [
        ("temperature", 0.9),
        ("top_p", 0.9),
        ("top_k", 40),
        ("max_new_tokens", 65),
        ("instruction", "Rewrite: {text}"),
    ]:
        changed.append(
            caption_fingerprint(
                MODEL, dataclasses.replace(params, **{field: value}), 11, text_fingerprint("Almond Horchata")
            )
        )
    assert len(set(changed) | {base}) == len(changed) + 1
    # the base seed reaches the fingerprint only through the unit's own seed
    assert (
        caption_fingerprint(MODEL, dataclasses.replace(params, base_seed=99), 11, text_fingerprint("Almond Horchata"))
        == base
    )
    # whitespace in the source text is not meaning
    assert caption_fingerprint(MODEL, params, 11, text_fingerprint("  Almond\tHorchata ")) == base
    # an int temperature and the same float are one unit
    assert caption_fingerprint(MODEL, dataclasses.replace(params, temperature=1), 11, "x") == caption_fingerprint(
        MODEL, dataclasses.replace(params, temperature=1.0), 11, "x"
    )


def test_instruction_template_needs_text_and_rejects_unknown_placeholders() -> None:
    assert "Almond Horchata" in render_instruction(DEFAULT_INSTRUCTION, "Almond Horchata")
    assert render_instruction("Vary {text} {{literally}}", "x") == "Vary x {literally}"
    with pytest.raises(StageError, match=r"\{n\}"):
        CaptionParams(instruction="Write {n} captions of {text}")
    with pytest.raises(StageError, match="must contain"):
        CaptionParams(instruction="Write a caption")
    with pytest.raises(StageError, match="not a valid template"):
        render_instruction("Write {text", "x")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("temperature", -0.1, "temperature"),
        ("temperature", float("nan"), "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_k", -1, "top_k"),
        ("max_new_tokens", 0, "max_new_tokens"),
    ],
)
def test_bad_sampling_parameters_are_stage_errors(field: str, value: object, match: str) -> None:
    with pytest.raises(StageError, match=match):
        CaptionParams(**{field: value})


def test_clean_caption_takes_the_first_real_line() -> None:
    assert clean_caption('\n\n  "Spiced almond horchata over ice."\nMore text') == "Spiced almond horchata over ice."
    assert clean_caption("1. Horchata with cinnamon\n2. Another") == "Horchata with cinnamon"
    assert clean_caption("- **Iced horchata**") == "Iced horchata"
    assert clean_caption("Caption 1: A tall   glass of horchata") == "A tall glass of horchata"
    assert clean_caption("\n \n") == ""


def test_model_ref_needs_a_source() -> None:
    with pytest.raises(GenerationError, match="source"):
        HFModelRef(" ")
    assert HFModelRef("./local/folder", revision="abc").kwargs() == {"trust_remote_code": False}
    assert HFModelRef("org/name", revision="abc").kwargs() == {"trust_remote_code": False, "revision": "abc"}


def test_a_request_hashes_its_text_unless_given_an_upstream_fingerprint() -> None:
    from diffspec.stages.captions import CaptionRequest

    (request,) = caption_requests(["Almond  Horchata"], 1, CaptionParams())
    assert request.input_fp() == text_fingerprint("Almond Horchata")
    assert CaptionRequest("Almond Horchata", 0, 1).input_fp() == text_fingerprint("Almond Horchata")
    assert CaptionRequest("Almond Horchata", 0, 1, input_fingerprint="csv-row-fp").input_fp() == "csv-row-fp"
