"""Rule-based sentence splitting: abbreviations, decimals, quotes, ellipses, initials, line breaks."""

import pytest

from jaxlm.data.sentences import split_sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Dr. Smith went to Washington. He arrived at 3 p.m. on Monday.",
         ["Dr. Smith went to Washington.", "He arrived at 3 p.m. on Monday."]),
        ("Pi is about 3.14. That is irrational.", ["Pi is about 3.14.", "That is irrational."]),
        ("It cost $5.50 in 1999. Cheap!", ["It cost $5.50 in 1999.", "Cheap!"]),
        ("Use a tool, e.g. A hammer. Or i.e. Not that.", ["Use a tool, e.g. A hammer.", "Or i.e. Not that."]),
        ("The U.S. Army is big. It has many soldiers.", ["The U.S. Army is big.", "It has many soldiers."]),
        ("Ph.D. students work hard. Really.", ["Ph.D. students work hard.", "Really."]),
        ("Acme Inc. Sells anvils. Mr. Coyote buys them.", ["Acme Inc. Sells anvils.", "Mr. Coyote buys them."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ('"Is it?" she asked. "Yes!" he said.', ['"Is it?" she asked.', '"Yes!" he said.']),
        ("He shouted “Run!” Nobody moved.", ["He shouted “Run!”", "Nobody moved."]),
        ("(See the note.) The next one.", ["(See the note.)", "The next one."]),
        ("Wait... What happened? Nothing…  Really.", ["Wait...", "What happened?", "Nothing…", "Really."]),
        ("Well... maybe not.", ["Well... maybe not."]),
        ("J. R. R. Tolkien wrote it. See No. 5 and Fig. 3 now.", ["J. R. R. Tolkien wrote it.", "See No. 5 and Fig. 3 now."]),
        ("I said no. Then I left.", ["I said no.", "Then I left."]),
        ("Version 2.0 is out. 3 bugs remain.", ["Version 2.0 is out.", "3 bugs remain."]),
        ("Il est parti. À bientôt.", ["Il est parti.", "À bientôt."]),
        ("这是第一句。这是第二句！", ["这是第一句。", "这是第二句！"]),
        ("Line one\nLine two. Line three.\n\n  ", ["Line one", "Line two.", "Line three."]),
        ("", []),
        ("no capital after. so no split", ["no capital after. so no split"]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_keeps_every_character():
    text = 'Mr. Brown met Dr. Green at 10.30 a.m. today. "Hello!" he said... Then? Nothing. The end.'
    assert "".join(split_sentences(text)).replace(" ", "") == text.replace(" ", "")
