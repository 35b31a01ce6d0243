"""The batch stream: epoch order, host shards, resume, evaluation passes, on both kinds of examples."""

import numpy as np
import pytest

from data_fakes import ListSource, random_documents, word_piece_tokenizer
from jaxlm.data import classification, pipeline, pretraining


@pytest.fixture(scope="module")
def tokenizer():
    return word_piece_tokenizer()


@pytest.fixture(scope="module")
def pretrain(tokenizer):
    spec = pretraining.PretrainingSpec(max_seq_length=32, max_predictions_per_seq=5)
    documents = ListSource({"text": doc} for doc in random_documents(60))
    return pretraining.pretraining_examples(documents, text_field="text", tokenizer=tokenizer, spec=spec, seed=0)


@pytest.fixture(scope="module")
def classify(tokenizer):
    """Examples whose label is their index, of lengths 3 to 21, in buckets 8 / 16 / 24."""
    rng = np.random.default_rng(0)
    texts = [" ".join(["dog"] * n) for n in rng.integers(1, 20, 103)]
    source = ListSource({"text": t, "label": i} for i, t in enumerate(texts))
    return classification.classification_examples(
        source, tokenizer=tokenizer, text_fields=["text"], label_field="label", max_seq_length=24, buckets=(8, 16))


def equal(x, y):
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("pad_lengths", [None, np.array([8, 16, 24])])
def test_each_epoch_sees_every_example_once(pad_lengths):
    lengths = None if pad_lengths is None else pad_lengths[np.arange(50) % 3]
    orders = [pipeline.epoch_order(50, 8, seed=1, epoch=e, shuffle=True, pad_lengths=lengths) for e in range(3)]
    for order in orders:
        assert order.shape == (7, 8)
        np.testing.assert_array_equal(np.sort(order[order >= 0]), np.arange(50))
        assert (order < 0).sum() == 6
        if lengths is not None:  # grouped by length: at most the 2 border batches mix lengths
            assert sum(len(np.unique(lengths[b[b >= 0]])) > 1 for b in order) <= 2
    assert not np.array_equal(orders[0], orders[1])
    again = pipeline.epoch_order(50, 8, seed=1, epoch=1, shuffle=True, pad_lengths=lengths)
    np.testing.assert_array_equal(orders[1], again)


def test_epochs_roll_over_and_masks_change(pretrain):
    batches = pipeline.Batches(pretrain, 16, seed=3)
    per_epoch = batches.steps_per_epoch
    assert per_epoch == -(-len(pretrain) // 16)
    seen = [batches.global_indices(s)[1] for s in range(2 * per_epoch)]
    first, second = np.concatenate(seen[:per_epoch]), np.concatenate(seen[per_epoch:])
    np.testing.assert_array_equal(np.sort(first[first >= 0]), np.arange(len(pretrain)))
    np.testing.assert_array_equal(np.sort(second[second >= 0]), np.arange(len(pretrain)))
    assert batches.global_indices(per_epoch)[0] == 1
    # The same example in two epochs: same tokens, new masks.
    index = seen[0][0]
    step_2 = next(s for s in range(per_epoch, 2 * per_epoch) if index in seen[s])
    row_2 = list(seen[step_2]).index(index)
    x, y = batches.batch_at(0), batches.batch_at(step_2)
    assert x["attention_mask"][0].tolist() == y["attention_mask"][row_2].tolist()
    assert x["masked_positions"][0].tolist() != y["masked_positions"][row_2].tolist()


@pytest.mark.parametrize("kind", ["pretrain", "classify"])
def test_host_shards_are_disjoint_and_complete(kind, request):
    examples = request.getfixturevalue(kind)
    single = pipeline.Batches(examples, 16, seed=5)
    for hosts in (2, 4):
        shards = [pipeline.Batches(examples, 16, seed=5, process_index=h, process_count=hosts) for h in range(hosts)]
        for step in (0, 3, single.steps_per_epoch + 1):
            whole = single.batch_at(step)
            parts = [s.batch_at(step) for s in shards]
            assert all(len(p["input_ids"]) == 16 // hosts for p in parts)
            assert equal(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.Batches(examples, 16, seed=5, process_count=3)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_gives_exactly_the_next_batch(pretrain, prefetch):
    run = pipeline.Batches(pretrain, 8, seed=2, prefetch=prefetch)
    steps = run.steps_per_epoch + 3  # across an epoch boundary
    uninterrupted = [next(run) for _ in range(steps)]
    run.close()
    first = pipeline.Batches(pretrain, 8, seed=2, prefetch=prefetch)
    for _ in range(steps - 4):
        next(first)
    state = first.get_state()
    next(first)  # a batch produced after the save is lost with the process
    first.close()
    resumed = pipeline.Batches(pretrain, 8, seed=2, prefetch=prefetch)
    resumed.set_state(state)
    assert state == {"step": steps - 4}
    for expected in uninterrupted[-4:]:
        assert equal(next(resumed), expected)
    resumed.set_state({"step": 1})
    assert equal(next(resumed), uninterrupted[1])
    resumed.close()


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_eval_sees_every_example_once(classify, hosts):
    labels, weights = [], []
    for h in range(hosts):
        for x in pipeline.eval_batches(classify, 12, process_index=h, process_count=hosts):
            assert x["input_ids"].shape[0] == 12 // hosts and x["input_ids"].shape[1] in (8, 16, 24)
            assert x["attention_mask"].sum(axis=1).max() <= x["input_ids"].shape[1]
            labels.append(x["label"])
            weights.append(x["example_weight"])
    labels, weights = np.concatenate(labels), np.concatenate(weights)
    np.testing.assert_array_equal(np.sort(labels[weights > 0]), np.arange(len(classify)))
    assert (weights == 0).sum() == 12 * 9 - 103 and (labels[weights == 0] == 0).all()


def test_buckets_pad_each_batch_to_its_longest(classify):
    batches = pipeline.Batches(classify, 8, seed=0)
    for step in range(batches.steps_per_epoch):
        _, indices = batches.global_indices(step)
        x = batches.batch_at(step)
        longest = classify.lengths[indices[indices >= 0]].max()
        assert x["input_ids"].shape[1] == min(b for b in (8, 16, 24) if b >= longest)


def test_pretraining_eval_masks_are_fixed(pretrain):
    first = list(pipeline.eval_batches(pretrain, 16))
    second = list(pipeline.eval_batches(pretrain, 16, prefetch=2))
    assert len(first) == -(-len(pretrain) // 16)
    assert all(equal(x, y) for x, y in zip(first, second, strict=True))
    weights = np.concatenate([x["nsp_weight"] for x in first])
    masked_weights = np.concatenate([x["masked_weights"] for x in first])
    assert weights.sum() == len(pretrain) and (masked_weights[weights == 0] == 0).all()
