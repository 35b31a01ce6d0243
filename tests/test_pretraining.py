"""Pretraining examples: each op alone (pairing, truncation, masking, packing), then the examples whole."""

import numpy as np
import pytest

from data_fakes import ListSource, random_documents, word_piece_tokenizer
from jaxlm.data import inputs, pretraining
from jaxlm.data.inputs import SpecialIds
from jaxlm.data.masking import MaskingSpec, example_bits, mask_tokens

IDS = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=30000)


def make_corpus(doc_segment_lengths: list[list[int]]) -> pretraining.Corpus:
    """A corpus whose token ids are their positions in the token array (so spans are recognisable)."""
    lengths = [n for doc in doc_segment_lengths for n in doc]
    return pretraining.Corpus(
        token_ids=np.arange(sum(lengths), dtype=np.int32),
        word_starts=np.ones(sum(lengths), bool),
        segment_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        document_offsets=np.concatenate([[0], np.cumsum([len(d) for d in doc_segment_lengths])]).astype(np.int64),
    )


def document_of(corpus, token):
    """The document holding token position(s) `token`."""
    doc_tokens = corpus.segment_offsets[corpus.document_offsets]
    return np.searchsorted(doc_tokens, token, side="right") - 1


def test_truncated_lengths_is_the_reference_loop():
    for la in range(12):
        for lb in range(12):
            for max_tokens in range(20):
                a, b = la, lb
                while a + b > max_tokens:  # google-research/bert truncate_seq_pair
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert tuple(inputs.truncated_lengths(la, lb, max_tokens)) == (a, b), (la, lb, max_tokens)


def test_pairs_tile_each_document_and_nsp_is_half():
    # One-token segments: A + B never exceeds the target, so nothing is truncated and the A spans and the
    # actual-next B spans must tile each document exactly (the unused segments were put back).
    rng = np.random.default_rng(0)
    corpus = make_corpus([[1] * int(n) for n in rng.integers(20, 300, 400)])
    pairs = pretraining.create_pairs(corpus, max_seq_length=64, short_seq_prob=0.0, seed=1)
    label = pairs["nsp_label"]
    assert 0.45 < label.mean() < 0.6, label.mean()
    doc_tokens = corpus.segment_offsets[corpus.document_offsets]
    spans = [(s, n) for s, n in zip(pairs["a_start"], pairs["a_length"])]
    spans += [(s, n) for s, n, l in zip(pairs["b_start"], pairs["b_length"], label) if l == 0]
    covered = np.zeros(len(corpus.token_ids), int)
    for start, n in spans:
        covered[start : start + n] += 1
    assert (covered == 1).all()
    is_next = label == 0
    np.testing.assert_array_equal(pairs["b_start"][is_next], (pairs["a_start"] + pairs["a_length"])[is_next])
    # A random B comes from another document and lies within it.
    a_doc = document_of(corpus, pairs["a_start"])
    b_doc = document_of(corpus, pairs["b_start"])
    assert (a_doc[~is_next] != b_doc[~is_next]).all()
    assert (pairs["b_start"] + pairs["b_length"] <= doc_tokens[b_doc + 1]).all()
    assert (pairs["a_length"] >= 1).all() and (pairs["b_length"] >= 1).all()
    assert (pairs["a_length"] + pairs["b_length"] <= 64 - 3).all()


def test_pairs_truncate_longer_side_from_front_or_back():
    rng = np.random.default_rng(0)
    corpus = make_corpus([list(rng.integers(5, 60, rng.integers(1, 10))) for _ in range(500)])
    pairs = pretraining.create_pairs(corpus, max_seq_length=64, short_seq_prob=0.1, seed=3)
    a_end = pairs["a_start"] + pairs["a_length"]
    b_end = pairs["b_start"] + pairs["b_length"]
    total = pairs["a_length"] + pairs["b_length"]
    assert (total <= 61).all() and (pairs["a_length"] >= 1).all() and (pairs["b_length"] >= 1).all()
    # Spans stay inside one document.
    assert (document_of(corpus, pairs["a_start"]) == document_of(corpus, a_end - 1)).all()
    assert (document_of(corpus, pairs["b_start"]) == document_of(corpus, b_end - 1)).all()
    # Truncation happens, from the front and from the back of both sides, about equally.
    boundaries = corpus.segment_offsets
    cut_front = ~np.isin(pairs["a_start"], boundaries) | ~np.isin(pairs["b_start"], boundaries)
    cut_back = ~np.isin(a_end, boundaries) | ~np.isin(b_end, boundaries)
    assert cut_front.sum() > 100 and 0.7 < cut_front.sum() / cut_back.sum() < 1.4
    # The same seed gives the same pairs; another seed other pairs.
    again = pretraining.create_pairs(corpus, max_seq_length=64, short_seq_prob=0.1, seed=3)
    other = pretraining.create_pairs(corpus, max_seq_length=64, short_seq_prob=0.1, seed=4)
    for key in pairs:
        np.testing.assert_array_equal(pairs[key], again[key])
    assert len(other["a_start"]) != len(pairs["a_start"]) or (other["a_start"] != pairs["a_start"]).any()


def test_short_seq_prob_gives_short_targets():
    # One-token segments: a document's first instance, when B is the actual next, is its target length.
    corpus = make_corpus([[1] * 1000 for _ in range(300)])

    def first_lengths(short_seq_prob):
        pairs = pretraining.create_pairs(corpus, 128, short_seq_prob, seed=0)
        _, first = np.unique(document_of(corpus, pairs["a_start"]), return_index=True)
        first = first[pairs["nsp_label"][first] == 0]
        return (pairs["a_length"] + pairs["b_length"])[first]  # (documents,)

    assert (first_lengths(0.0) == 125).all()
    lengths = first_lengths(0.5)  # the target is drawn once per document, as the reference does
    assert 0.38 < (lengths < 125).mean() < 0.62 and lengths.min() >= 2


def random_rows(batch, length, rng, min_tokens=20):
    """Rows `[CLS] tokens [SEP] pad...` with random word structure: ids, candidate, word_start, num_tokens."""
    n = rng.integers(min_tokens, length - 1, batch)  # (batch,) tokens between CLS and SEP
    cols = np.arange(length)[None, :]
    candidate = (cols >= 1) & (cols <= n[:, None])
    ids = np.where(candidate, rng.integers(1000, IDS.vocab_size, (batch, length)), IDS.pad)
    ids[:, 0] = IDS.cls
    ids[cols == n[:, None] + 1] = IDS.sep
    word_start = candidate & (rng.random((batch, length)) < 0.6)
    return ids, candidate, word_start, n + 2


def reference_choice(candidate, word_start, key, budget, whole_word):
    """google-research/bert's greedy choice, with the shuffle replaced by sorting words by `key`."""
    words = []
    for i in np.flatnonzero(candidate):
        if whole_word and words and not word_start[i] and candidate[i - 1]:
            words[-1].append(i)
        else:
            words.append([i])
    words.sort(key=lambda w: (key[w[0]], w[0]))
    chosen = []
    for word in words:
        if len(chosen) >= budget:
            break
        if len(chosen) + len(word) > budget:
            continue
        chosen += word
    return sorted(chosen)


@pytest.mark.parametrize("whole_word", [False, True])
def test_masking_matches_the_reference_greedy_choice(whole_word):
    rng = np.random.default_rng(0)
    ids, candidate, word_start, num_tokens = random_rows(300, 64, rng)
    bits = example_bits(0, 0, np.arange(300), 64)
    spec = MaskingSpec(0.15, 8, whole_word, IDS.mask, IDS.vocab_size)
    out = mask_tokens(ids, candidate, word_start, num_tokens, bits, spec)
    key = (bits >> np.uint64(40)).astype(np.int64)
    for r in range(300):
        budget = min(8, max(1, round(num_tokens[r] * 0.15)))
        expected = reference_choice(candidate[r], word_start[r], key[r], budget, whole_word)
        got = out["masked_positions"][r][out["masked_weights"][r] > 0]
        assert got.tolist() == expected
        np.testing.assert_array_equal(out["masked_ids"][r][: len(got)], ids[r][got])


def test_masking_proportions():
    rng = np.random.default_rng(1)
    ids, candidate, word_start, num_tokens = random_rows(4000, 128, rng)
    spec = MaskingSpec(0.15, 128, False, IDS.mask, IDS.vocab_size)
    out = mask_tokens(ids, candidate, word_start, num_tokens, example_bits(5, 0, np.arange(4000), 128), spec)
    count = out["masked_weights"].sum(axis=1)
    np.testing.assert_array_equal(count, np.maximum(1, np.rint(num_tokens * 0.15)))  # 15%, rounded as the reference
    chosen = np.zeros_like(candidate)
    np.put_along_axis(chosen, out["masked_positions"], out["masked_weights"] > 0, axis=1)
    before, after = ids[chosen], out["input_ids"][chosen]
    assert abs((after == IDS.mask).mean() - 0.8) < 0.01
    assert abs((after == before).mean() - 0.1) < 0.01
    assert abs(((after != before) & (after != IDS.mask)).mean() - 0.1) < 0.01
    np.testing.assert_array_equal(out["input_ids"][~chosen], ids[~chosen])  # nothing else changes
    # Every candidate is equally likely: the chosen positions' mean matches the candidates'.
    positions = np.broadcast_to(np.arange(128), ids.shape)
    assert abs(positions[chosen].mean() / positions[candidate].mean() - 1) < 0.02


def test_max_predictions_and_specials():
    rng = np.random.default_rng(2)
    ids, candidate, word_start, num_tokens = random_rows(500, 128, rng, min_tokens=60)
    for whole_word in (False, True):
        spec = MaskingSpec(0.15, 5, whole_word, IDS.mask, IDS.vocab_size)
        out = mask_tokens(ids, candidate, word_start, num_tokens, example_bits(0, 0, np.arange(500), 128), spec)
        assert out["masked_positions"].shape == (500, 5)
        assert (out["masked_weights"].sum(axis=1) <= 5).all()
        if not whole_word:
            assert (out["masked_weights"].sum(axis=1) == 5).all()
        assert candidate[np.arange(500)[:, None], out["masked_positions"]][out["masked_weights"] > 0].all()
        assert (out["masked_positions"][out["masked_weights"] == 0] == 0).all()


def test_whole_word_masking_never_splits_a_word():
    rng = np.random.default_rng(3)
    ids, candidate, word_start, num_tokens = random_rows(1000, 64, rng)
    word = np.cumsum(word_start | ~candidate, axis=1)  # (batch, length) word number of each token
    split = {}
    for whole_word in (False, True):
        spec = MaskingSpec(0.15, 20, whole_word, IDS.mask, IDS.vocab_size)
        out = mask_tokens(ids, candidate, word_start, num_tokens, example_bits(0, 0, np.arange(1000), 64), spec)
        chosen = np.zeros_like(candidate)
        np.put_along_axis(chosen, out["masked_positions"], out["masked_weights"] > 0, axis=1)
        split[whole_word] = 0
        for r in range(1000):
            for w in np.unique(word[r][chosen[r]]):
                members = chosen[r][candidate[r] & (word[r] == w)]
                split[whole_word] += not members.all()
    assert split[True] == 0 and split[False] > 100


def test_masks_depend_only_on_seed_epoch_and_index():
    bits = example_bits(7, 3, np.array([11, 12, 13]), 32)
    np.testing.assert_array_equal(bits[1:2], example_bits(7, 3, np.array([12]), 32))  # not on the batch
    assert (bits != example_bits(7, 4, np.array([11, 12, 13]), 32)).mean() > 0.99  # epoch
    assert (bits != example_bits(8, 3, np.array([11, 12, 13]), 32)).mean() > 0.99  # seed


def test_packing_never_lets_documents_cross():
    rng = np.random.default_rng(4)
    corpus = make_corpus([list(rng.integers(1, 40, rng.integers(1, 6))) for _ in range(300)])
    packing = pretraining.pack_documents(corpus, 64)
    rows = len(packing["row_offsets"]) - 1
    first = packing["row_offsets"][:-1]
    count = np.diff(packing["row_offsets"])
    piece = inputs.ragged_arange(first, count)
    x = inputs.layout_pieces(
        corpus.token_ids + 1000, corpus.word_starts, np.repeat(np.arange(rows), count), packing["piece_col"][piece],
        packing["piece_start"][piece], packing["piece_length"][piece], packing["piece_segment"][piece],
        rows, 64, IDS,
    )
    seen = []
    for r in range(rows):
        seg, pos, tok = x["segment_ids"][r], x["position_ids"][r], x["input_ids"][r]
        used = seg > 0
        assert used[: used.sum()].all() and (x["attention_mask"][r] == used).all()  # padding only at the end
        assert (np.diff(seg[used]) >= 0).all() and seg[0] == 1
        for s in np.unique(seg[used]):
            cols = np.flatnonzero(seg == s)
            assert (np.diff(cols) == 1).all()
            np.testing.assert_array_equal(pos[cols], np.arange(len(cols)))  # positions restart per piece
            body = tok[cols]
            assert body[0] == IDS.cls and body[-1] == IDS.sep
            assert not x["candidate"][r][cols[[0, -1]]].any() and x["candidate"][r][cols[1:-1]].all()
            tokens = body[1:-1] - 1000
            assert (np.diff(tokens) == 1).all()  # consecutive tokens of the corpus...
            assert document_of(corpus, tokens[0]) == document_of(corpus, tokens[-1])  # ...of one document
            seen.append(tokens)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), corpus.token_ids)  # every token exactly once
    assert x["attention_mask"][:-1].mean() > 0.95  # rows are full but the last


@pytest.fixture(scope="module")
def tokenizer():
    return word_piece_tokenizer()


@pytest.fixture(scope="module")
def documents():
    return ListSource({"text": doc.encode()} for doc in random_documents(300))


@pytest.mark.parametrize("whole_word", [False, True])
def test_pair_examples(tokenizer, documents, whole_word):
    spec = pretraining.PretrainingSpec(max_seq_length=64, max_predictions_per_seq=10, whole_word=whole_word)
    examples = pretraining.pretraining_examples(documents, text_field="text", tokenizer=tokenizer, spec=spec, seed=0)
    x = examples.batch(np.arange(len(examples)), epoch=0, length=64)
    inst = examples.instances
    a, b = inst["a_length"][:, None], inst["b_length"][:, None]
    cols = np.arange(64)[None, :]
    np.testing.assert_array_equal(x["attention_mask"], cols < a + b + 3)
    np.testing.assert_array_equal(x["token_type_ids"], (cols >= a + 2) & (cols < a + b + 3))
    np.testing.assert_array_equal(x["nsp_label"], inst["nsp_label"])
    assert (x["nsp_weight"] == 1).all()
    special_cols = (cols == 0) | (cols == a + 1) | (cols == a + b + 2) | (cols >= a + b + 3)
    weight = x["masked_weights"] > 0
    assert not special_cols[np.arange(len(a))[:, None], x["masked_positions"]][weight].any()
    assert not np.isin(x["masked_ids"][weight], [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()
    assert 0.14 < weight.sum() / x["attention_mask"].sum() < 0.16
    # Undoing the masks gives back the corpus's A and B tokens around CLS and SEPs.
    unmasked = x["input_ids"].copy()
    rows = np.arange(len(a))[:, None]
    unmasked[rows, x["masked_positions"]] = np.where(weight, x["masked_ids"], unmasked[rows, x["masked_positions"]])
    tokens = examples.corpus.token_ids
    for r in range(0, len(a), 7):
        na, nb, sa, sb = inst["a_length"][r], inst["b_length"][r], inst["a_start"][r], inst["b_start"][r]
        np.testing.assert_array_equal(unmasked[r, 1 : 1 + na], tokens[sa : sa + na])
        np.testing.assert_array_equal(unmasked[r, na + 2 : na + 2 + nb], tokens[sb : sb + nb])
    # A padding example (-1) is a blank row of weight 0.
    pad = examples.batch(np.array([-1, 0]), epoch=0, length=64)
    assert (pad["input_ids"][0] == tokenizer.pad_id).all() and pad["attention_mask"][0].sum() == 0
    assert pad["masked_weights"][0].sum() == 0 and pad["nsp_weight"][0] == 0
    np.testing.assert_array_equal(pad["input_ids"][1], x["input_ids"][0])


def test_packed_examples(tokenizer, documents):
    spec = pretraining.PretrainingSpec(max_seq_length=64, max_predictions_per_seq=10, packed=True, whole_word=True)
    examples = pretraining.pretraining_examples(documents, text_field="text", tokenizer=tokenizer, spec=spec, seed=0)
    x = examples.batch(np.arange(len(examples)), epoch=0, length=64)
    assert (x["nsp_weight"] == 0).all() and (x["token_type_ids"] == 0).all()
    assert x["attention_mask"].mean() > 0.95
    np.testing.assert_array_equal(x["attention_mask"], x["segment_ids"] > 0)
    weight = x["masked_weights"] > 0
    assert not np.isin(x["masked_ids"][weight], [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()


def test_tokenising_in_worker_processes_gives_the_same_corpus(tokenizer, documents):
    texts = [r["text"].decode() for r in documents.records]
    one = pretraining.tokenize_documents(texts, tokenizer, split=True)
    two = pretraining.tokenize_documents(texts, tokenizer, split=True, workers=2, chunk_size=16)
    for key, value in one.arrays().items():
        np.testing.assert_array_equal(value, two.arrays()[key])
    assert one.num_documents == 300 and len(one.segment_offsets) > 1000


def test_the_corpus_is_tokenised_on_all_cores_unless_the_config_says_how_many():
    import os

    from jaxlm import config as jaxlm_config
    from jaxlm import tasks

    c = jaxlm_config.load("experiments/demo_cpu.py:pretrain")
    assert tasks.create(c).workers() == len(os.sched_getaffinity(0))
    assert tasks.create(jaxlm_config.override(c, ["data.workers=3"])).workers() == 3
    with pytest.raises(ValueError, match=r"config.data.workers=-2: expected a number of processes, or 0 for all"):
        tasks.create(jaxlm_config.override(c, ["data.workers=-2"])).workers()


def test_examples_are_cached_and_deterministic(tokenizer, documents, tmp_path):
    spec = pretraining.PretrainingSpec(max_seq_length=64, max_predictions_per_seq=10)
    build = lambda seed: pretraining.pretraining_examples(
        documents, text_field="text", tokenizer=tokenizer, spec=spec, seed=seed, cache_dir=tmp_path, name="docs")
    first = build(0)
    assert len(list(tmp_path.iterdir())) == 1
    again = build(0)
    assert isinstance(again.corpus.token_ids, np.memmap)
    index = np.array([5, 17, 3])
    x, y = first.batch(index, epoch=2, length=64), again.batch(index, epoch=2, length=64)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key])
    z = again.batch(index, epoch=3, length=64)
    assert (z["masked_positions"] != x["masked_positions"]).any()  # masks are drawn afresh each epoch
    build(1)
    assert len(list(tmp_path.iterdir())) == 2  # another seed pairs differently: another cache entry
