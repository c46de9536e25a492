"""The prompt vocabulary of the built-in digits model (pure parsing, no model)."""

from __future__ import annotations

import pytest

digits = pytest.importorskip("diffspec.generate.builtin.digits")
parse_prompt = digits.parse_prompt
encode_prompt = digits.encode_prompt
TOKENS = digits.TOKENS


@pytest.mark.parametrize(
    "prompt, digit",
    [
        ("a handwritten seven", 7),
        ("the number 7", 7),
        ("7", 7),
        ("digit seven", 7),
        ("Seven!", 7),
        ("a photo of the digit 0", 0),
        ("zero", 0),
        ("a nought", 0),
        ("a handwritten one", 1),
        ("one thick seven", 7),  # "one" as an article yields to another number word
        ("one 3", 3),  # numerals win over words
        ("a 4, not a nine", 4),  # first numeral
        ("sevens", 7),
        ("7s on paper", 7),
    ],
)
def test_prompt_names_its_digit_in_any_usual_form(prompt, digit):
    assert parse_prompt(prompt).digit == digit


@pytest.mark.parametrize("prompt", ["", None, "a handwritten digit", "10 apples", "28x28 image", "a pizza"])
def test_prompt_without_a_digit_has_none(prompt):
    assert parse_prompt(prompt).digit is None


@pytest.mark.parametrize(
    "prompt, styles",
    [
        ("a thick 3", ("thick",)),
        ("a bold, slanted 3", ("thick", "slanted")),
        ("thin narrow upright 5", ("thin", "narrow", "upright")),
        ("an italic wide 2", ("wide", "slanted")),
        ("a left-leaning 6", ("backslanted",)),
        ("a 6 leaning left", ("backslanted",)),
        ("a right leaning 6", ("slanted",)),
        ("thin bold 3", ("thin",)),  # first word of a group wins
        ("a 3", ()),
    ],
)
def test_style_words_map_to_canonical_tokens(prompt, styles):
    assert set(parse_prompt(prompt).styles) == set(styles)


def test_unknown_words_are_ignored():
    assert parse_prompt("a beautiful handwritten seven on a scanned form, 4k") == parse_prompt("seven")


def test_encoding_is_multi_hot_and_empty_is_null():
    vec = encode_prompt("a thick slanted 7")
    assert len(vec) == len(TOKENS) == 17
    on = {TOKENS[i] for i, v in enumerate(vec) if v}
    assert on == {"7", "thick", "slanted"}
    assert encode_prompt("") == [0.0] * len(TOKENS)
    assert encode_prompt("lorem ipsum") == [0.0] * len(TOKENS)
    assert parse_prompt("").is_null
