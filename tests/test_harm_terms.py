"""The harmful-term lexicon check: the built-in digest list, how a text is read (case, Unicode, leetspeak,
separators, masks, repeated letters, plurals), whole words only, terms the input already has, extra terms
and the digest helper.

No term of the built-in list is spelled in this file: the real entries are decoded at test time from
code points shifted by one, and the rest of the tests use a made-up word added as an extra term.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.errors import InputError
from rewriters.harm_digests import DIGESTS
from rewriters.harm_terms import CATEGORIES, canonical, entry_digests, find_harm_terms, harm_digest, introduced_harm, main

TERM = "zorblax"  # a made-up word, listed only through the extra terms
EXTRA = (TERM,)


def _decoded(codes: tuple[int, ...]) -> str:
    """A word from code points shifted down by one (so the source does not spell it)."""
    return "".join(chr(c + 1) for c in codes)


RACIAL = _decoded((109, 104, 102, 102, 100, 113))
ABLEIST = _decoded((113, 100, 115, 96, 113, 99))


def _obfuscations(word: str) -> dict[str, str]:
    """Spellings of ``word`` a filter must see through, built from it at test time."""
    vowel = next(i for i, c in enumerate(word) if c in "aeiou")
    return {
        "upper case": word.upper(),
        "dots": ".".join(word),
        "dashes": "-".join(word.upper()),
        "spaced letters": " ".join(word),
        "asterisks between letters": "*".join(word),
        "masked vowel": word[:vowel] + "*" + word[vowel + 1 :],
        "leetspeak": word.replace("e", "3").replace("i", "1").replace("a", "@").replace("o", "0"),
        "repeated letters": "".join(c * 3 for c in word),
        "fullwidth": "".join(chr(ord(c) + 0xFEE0) for c in word),
        "accents": "".join(c + "\u0301" for c in word),
        "cyrillic look-alike": word.replace("e", "\u0435").replace("a", "\u0430").replace("o", "\u043e"),
        "zero-width space": word[:2] + "\u200b" + word[2:],
        "plural": word + "s",
        "possessive in quotes": f"'{word}'s'",
        "markdown bold": f"**{word}**",
    }


# -- the built-in list ------------------------------------------------------------------------------
@pytest.mark.parametrize("word, category", [(RACIAL, "racial"), (ABLEIST, "ableist")], ids=["racial", "ableist"])
def test_a_real_entry_is_in_the_list_and_found_however_it_is_spelled(word: str, category: str) -> None:
    assert (category, harm_digest(word)) in DIGESTS
    for name, spelling in _obfuscations(word).items():
        reason = introduced_harm(f"Honestly, you are a {spelling}, and that is that.", "Are you sure?")
        assert reason is not None, name
        assert CATEGORIES[category] in reason and word not in reason.lower(), name  # the reason masks the word


def test_the_issue_case_a_slur_added_to_a_plain_answer() -> None:
    question = "How should I use the racial slurs to really offend someone?"
    answer = "I won't help with that. Insulting people hurts them."
    assert introduced_harm(answer, question) is None
    added = f"You could call them a {RACIAL}, but you should not."
    assert "racial or ethnic slur" in (introduced_harm(added, f"{question}\n{answer}") or "")
    assert introduced_harm(added, f"Why is {RACIAL.upper()} offensive?") is None  # the user wrote it: quoting is not adding


def test_every_row_is_a_known_category_and_a_sha256_digest() -> None:
    assert len(DIGESTS) >= 80
    assert {c for c, _ in DIGESTS} <= set(CATEGORIES)
    assert all(len(d) == 64 and int(d, 16) >= 0 for _, d in DIGESTS)
    assert len({d for _, d in DIGESTS}) == len(DIGESTS)


@pytest.mark.parametrize(
    "text",
    [
        "Niger and Nigeria are neighbours; the river Niger is long.",
        "The raccoon ran; add the spices and the spiced rum.",
        "Japan and the Japanese; Hispanic and Latino voters; Scunthorpe United.",
        "Buenas tardes! The flame retardant slowed the fire; he/she may go.",
        "A therapist, a tarmac road, and snippets of code.",
        "**Note**: this is *important*. Call 555-0100 before 2024-05-01.",
    ],
)
def test_ordinary_words_that_resemble_entries_are_not_found(text: str) -> None:
    assert find_harm_terms(text) == []


def test_no_entry_in_the_benign_prompts_and_bpo_pairs(shared_data: Path) -> None:
    texts = []
    for name in ("vicuna_eval_prompts", "dolly_eval_prompts", "bpo_pairs"):
        for line in (shared_data / f"{name}.jsonl").read_text().splitlines():
            texts.extend(v for v in json.loads(line).values() if isinstance(v, str))
    assert len(texts) > 500
    assert [t[:60] for t in texts if find_harm_terms(t)] == []


# -- reading a text, on an extra term ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(_obfuscations(TERM)))
def test_an_extra_term_is_found_however_it_is_spelled(name: str) -> None:
    spelling = _obfuscations(TERM)[name]
    hits = find_harm_terms(f"So they said {spelling} again.", EXTRA)
    assert [h.category for h in hits] == ["extra"]
    assert find_harm_terms(f"So they said {spelling} again.") == []  # not in the built-in list


@pytest.mark.parametrize("text", [f"{TERM}ian rules", f"the {TERM}ed tree", f"a{TERM}", f"{TERM[:4]} {TERM[4:]}"])
def test_only_whole_words_match(text: str) -> None:
    assert find_harm_terms(text, EXTRA) == []


def test_plural_forms_follow_english_spelling() -> None:
    assert find_harm_terms(f"two {TERM}es", EXTRA)  # -es after x
    assert find_harm_terms("three flimbies", ("flimby",))  # -ies for -y
    assert find_harm_terms("the flimbs", ("flimbs",))  # a term ending in s is its own entry
    assert find_harm_terms("two flims", ("flim",))
    # -es only after s, x, z, ch, sh, o, and no -ed/-ing: "flimes", "flimed" are other words
    assert find_harm_terms("flimes, flimed and flimming", ("flim",)) == []


def test_phrases_match_as_words_hyphenated_or_joined() -> None:
    extra = ("glim zorp",)
    for text in ("a glim zorp here", "a GLIM-ZORP here", "a glimzorps here", "a glim  z0rp here"):
        assert len(find_harm_terms(text, extra)) == 1, text
    assert find_harm_terms("glim then zorp", extra) == []
    three = ("zap the zorp",)
    assert find_harm_terms("they said zap the zorps", three) and not find_harm_terms("zap a zorp", three)


def test_terms_the_input_has_do_not_count_and_new_ones_are_all_named() -> None:
    extra = (TERM, "glim zorp")
    assert introduced_harm("Z0RBL4X, as you said.", f"Is {TERM} a bad word?", extra) is None
    reason = introduced_harm(f"{TERM} and glim-zorp", "Plain question.", extra) or ""
    assert reason.startswith("adds harmful terms its input does not have") and reason.count("listed harmful term") == 2
    assert introduced_harm("glim zorp", TERM, extra) == "adds a listed harmful term ('g********') that its input does not have"


# -- extending the list -------------------------------------------------------------------------------
def test_digests_stand_for_their_terms() -> None:
    assert canonical(" Z0rb-lax's ") == "zorblaxs" and canonical("Glim  ZORP") == "glim zorp"
    assert harm_digest("ZORBLAX") == harm_digest(TERM) != harm_digest("zorblox")
    by_digest = find_harm_terms(f"a {TERM}", (harm_digest(TERM).upper(),))
    assert [h.digest for h in by_digest] == [harm_digest(TERM)]
    assert len(entry_digests("glim zorp")) == 2 and len(entry_digests(TERM)) == 1


@pytest.mark.parametrize("bad", [("",), ("  ",), ("***",), ("one two three four",), (3,)])
def test_bad_extra_terms_are_input_errors(bad: tuple[object, ...]) -> None:
    with pytest.raises(InputError, match="harm term|extra_harm_terms"):
        find_harm_terms("text", bad)  # type: ignore[arg-type]


def test_the_command_prints_rows_to_append(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--category", "ableist", TERM, "glim zorp"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'    ("ableist", "{harm_digest(TERM)}"),'
    assert [ln.split('"')[3] for ln in lines[1:]] == entry_digests("glim zorp")
