"""Classification examples: `[CLS] a [SEP] b [SEP]`, longest-first truncation, labels, length buckets."""

import numpy as np
import pytest

from data_fakes import ListSource, word_piece_tokenizer
from jaxlm.data import classification


@pytest.fixture(scope="module")
def tokenizer():
    return word_piece_tokenizer()


def test_single_text_and_pair_layout(tokenizer):
    records = [{"a": b"the cat sat", "b": "on the mat .", "label": np.int64(2)}, {"a": "dog", "b": "ran", "label": 0}]
    single = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a"], label_field="label", max_seq_length=16)
    pair = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a", "b"], label_field="label", max_seq_length=16)
    ids = lambda text: tokenizer.encode([text])[0].tolist()
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

    x = single.batch(np.array([0, 1]), epoch=0, length=16)
    row = [cls, *ids("the cat sat"), sep]
    assert x["input_ids"][0].tolist() == row + [pad] * (16 - len(row))
    assert x["attention_mask"][0].tolist() == [1] * len(row) + [0] * (16 - len(row))
    assert (x["token_type_ids"] == 0).all()
    assert x["label"].tolist() == [2, 0] and x["label"].dtype == np.int32
    assert x["example_weight"].tolist() == [1, 1]

    y = pair.batch(np.array([0]), epoch=0, length=16)
    row = [cls, *ids("the cat sat"), sep, *ids("on the mat ."), sep]
    assert y["input_ids"][0].tolist() == row + [pad] * (16 - len(row))
    types = [0] * (len(ids("the cat sat")) + 2) + [1] * (len(ids("on the mat .")) + 1)
    assert y["token_type_ids"][0].tolist() == types + [0] * (16 - len(row))
    np.testing.assert_array_equal(y["position_ids"][0], np.arange(16))
    assert single.num_truncated == 0 and pair.num_truncated == 0


def test_longest_first_truncation_is_counted(tokenizer):
    long_a = "the cat sat on the mat " * 4  # 24 tokens
    records = [{"a": long_a, "b": "dog ran far", "label": 1}, {"a": "dog", "b": "cat", "label": 0}]
    pair = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a", "b"], label_field="label", max_seq_length=16)
    x = pair.batch(np.array([0]), epoch=0, length=16)
    a_ids = tokenizer.encode([long_a])[0].tolist()
    b_ids = tokenizer.encode(["dog ran far"])[0].tolist()
    expected = [tokenizer.cls_id, *a_ids[:10], tokenizer.sep_id, *b_ids, tokenizer.sep_id]
    assert x["input_ids"][0].tolist() == expected  # 13 = 16 - 3: a cut from its end down to 10, b kept
    assert pair.num_truncated == 1
    single = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a"], label_field="label", max_seq_length=8)
    assert single.batch(np.array([0]), epoch=0, length=8)["input_ids"][0].tolist() == [
        tokenizer.cls_id, *a_ids[:6], tokenizer.sep_id]


def test_regression_labels_and_missing_fields(tokenizer):
    records = [{"a": "dog", "score": 0.25}]
    reg = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a"], label_field="score", max_seq_length=8,
        regression=True)
    x = reg.batch(np.array([0, -1]), epoch=0, length=8)
    assert x["label"].dtype == np.float32 and x["label"].tolist() == [0.25, 0.0]
    assert x["example_weight"].tolist() == [1.0, 0.0] and x["attention_mask"][1].sum() == 0
    with pytest.raises(KeyError, match="no field 'text'.*fields: \\['a', 'score'\\]"):
        classification.classification_examples(
            ListSource(records), tokenizer=tokenizer, text_fields=["text"], label_field="score", max_seq_length=8)


def test_buckets_pad_to_the_smallest_that_fits(tokenizer):
    texts = ["dog", "the cat sat on the mat", "the cat sat on the mat and the dog ran far away under the sky"]
    records = [{"a": t, "label": 0} for t in texts]
    examples = classification.classification_examples(
        ListSource(records), tokenizer=tokenizer, text_fields=["a"], label_field="label", max_seq_length=16,
        buckets=(4, 8))
    assert examples.lengths.tolist()[:2] == [3, 8]
    assert examples.pad_lengths.tolist() == [4, 8, 16]  # the last one is truncated to max_seq_length
    assert examples.num_truncated == 1


def test_tokenised_once_then_cached(tokenizer, tmp_path):
    records = ListSource({"a": "the dog ran", "label": i % 2} for i in range(50))
    build = lambda source, max_seq_length=8: classification.classification_examples(
        source, tokenizer=tokenizer, text_fields=["a"], label_field="label", max_seq_length=max_seq_length,
        cache_dir=tmp_path, name="tiny")
    first, again = build(records), build(records)
    assert isinstance(again.arrays["token_ids"], np.memmap) and len(list(tmp_path.iterdir())) == 1
    x, y = first.batch(np.arange(50), 0, 8), again.batch(np.arange(50), 0, 8)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key])
    # Other parameters, or other texts under the same name, are other cache entries.
    build(records, max_seq_length=16)
    changed = ListSource([*records.records[:-1], {"a": "the cat sat", "label": 1}])
    assert build(changed).batch(np.array([49]), 0, 8)["input_ids"][0, 1:4].tolist() == (
        tokenizer.encode(["the cat sat"])[0].tolist())
    assert len(list(tmp_path.iterdir())) == 3
