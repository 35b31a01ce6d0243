"""Shared by the data tests: a random-access source over a list, random documents, a tiny WordPiece tokenizer."""

import numpy as np

from jaxlm.data.tokenizer import WordPieceTokenizer

WORDS = (
    "the a cat dog sat on mat ran far away quickly under bright sky river stone tree house window garden "
    "music played softly evening morning light reflection mountain valley extraordinary unbelievable "
    "information transformation"
).split()


class ListSource:
    """A random-access source over a list of records, like `tfds.data_source`."""

    def __init__(self, records):
        self.records = list(records)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __getitems__(self, indices):
        return [self.records[i] for i in indices]


def random_documents(num_documents: int, seed: int = 0) -> list[str]:
    """Documents of 1 to 12 lines, each line one or two sentences of 3 to 14 words."""
    rng = np.random.default_rng(seed)

    def sentence():
        words = rng.choice(WORDS, rng.integers(3, 15))
        return " ".join(words).capitalize() + "."

    docs = []
    for _ in range(num_documents):
        lines = [" ".join(sentence() for _ in range(rng.integers(1, 3))) for _ in range(rng.integers(1, 13))]
        docs.append("\n".join(lines))
    return docs


def word_piece_tokenizer():
    """A real WordPiece tokenizer over a tiny vocabulary laid out like BERT's ([PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103): words outside it become several '##' pieces, which whole-word masking needs."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
    vocab += [*letters, *(f"##{c}" for c in letters), *sorted({w for w in WORDS if len(w) <= 5})]
    return WordPieceTokenizer(vocab)
