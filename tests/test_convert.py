"""`jaxlm convert` both ways: a Hugging Face BERT -> a jaxlm workdir to fine-tune (or pretrain further) from, and a
fine-tuned jaxlm workdir -> a Hugging Face classifier that gives `jaxlm predict`'s probabilities."""

import csv
import json
import pathlib
import string

import numpy as np
import pytest

import jaxlm
from jaxlm import checkpoint, cli, experiment, train
from jaxlm import config as jaxlm_config
from jaxlm.data.builders import debian

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = pathlib.Path(__file__).parents[1]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits,
         *string.punctuation, *(f"##{c}" for c in string.ascii_lowercase + string.digits)]
LENGTH = 32
POS = {"n": "noun", "v": "verb", "a": "adj"}


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """A private tfds data dir (the tokenised examples are cached beside it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLM_DATA_DIR", str(tmp_path_factory.mktemp("data") / "tfds"))
        yield


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> pathlib.Path:
    """A randomly initialised transformers BertForPreTraining (2 layers, hidden 32) with a character vocab."""
    directory = tmp_path_factory.mktemp("tiny_hf")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     initializer_range=0.2)  # large weights: outputs that differ per text
    transformers.BertForPreTraining(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(p + "\n" for p in VOCAB))
    return directory


@pytest.fixture(scope="module")
def pairs_task(tmp_path_factory) -> pathlib.Path:
    """A 3-class text-pair task from WordNet: (a lemma, its gloss) -> noun, verb or adjective."""
    directory = tmp_path_factory.mktemp("pairs")
    rows = {p: [] for p in POS}
    for synset in debian.read_wordnet(debian.WORDNET_DIR):
        pos = synset.key[0]
        if pos in rows and len(rows[pos]) < 64:
            rows[pos].append((synset.lemmas[0].replace("_", " "), synset.definition, POS[pos]))
    mixed = [r for group in zip(*rows.values()) for r in group]  # 192 rows, classes interleaved
    for split, part in (("train", mixed[:144]), ("validation", mixed[144:])):
        with open(directory / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("text", "text_b", "label"), *part])
    return directory


@pytest.fixture(scope="module")
def converted(tiny_hf, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("converted") / "w"
    assert cli.main(["convert", "--from-hf", str(tiny_hf), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def finetuned(converted, pairs_task, tmp_path_factory) -> pathlib.Path:
    """The converted checkpoint fine-tuned for 8 steps with experiments/minilm_finetune.py (any local task)."""
    root = tmp_path_factory.mktemp("finetuned")
    c = jaxlm_config.load(str(REPO / "experiments" / "minilm_finetune.py:local_pairs"))
    jaxlm_config.override(c, [
        f"model.init_from=jaxlm:{converted}", f"data.path={pairs_task}",
        f"data.max_seq_length={LENGTH}", "data.buckets=()", "data.batch_size=16", "optim.learning_rate=1e-3",
        "optim.warmup_steps=1", "train.num_epochs=0", "train.num_steps=8", "train.log_every=4", "mesh.data=1",
    ])
    train.train_and_evaluate(c, root / "w")
    return root / "w"


def test_from_hf_gives_the_encoder_to_finetune_and_the_heads_to_pretrain(tiny_hf, converted):
    hf = transformers.BertForPreTraining.from_pretrained(tiny_hf).state_dict()
    c = jaxlm_config.base()
    jaxlm_config.override(c, [f"model.init_from=jaxlm:{converted}", f"data.max_seq_length={LENGTH}"])
    _, pretrained = experiment.model_config_from(c, len(VOCAB))  # task 'pretrain': phase 2 keeps the heads
    assert set(pretrained) == {"bert", "mlm_head", "nsp_head"}
    np.testing.assert_array_equal(pretrained["nsp_head"]["kernel"], hf["cls.seq_relationship.weight"].numpy().T)
    np.testing.assert_array_equal(pretrained["mlm_head"]["bias"], hf["cls.predictions.bias"].numpy())
    np.testing.assert_array_equal(pretrained["bert"]["embeddings"]["word"]["embedding"],
                                  hf["bert.embeddings.word_embeddings.weight"].numpy())
    c.task.name = "classify"
    assert set(experiment.model_config_from(c, len(VOCAB))[1]) == {"bert"}  # the classifier head starts fresh


def test_finetuning_starts_from_the_converted_encoder(converted, finetuned):
    _, before = checkpoint.restore_params(converted)
    _, after = checkpoint.restore_params(finetuned)
    assert "classifier" in after and "mlm_head" not in after
    rows = lambda p: np.asarray(p["bert"]["embeddings"]["position"]["embedding"])  # noqa: E731
    # Positions past the data's length get no gradient, only 8 steps of weight decay; the used ones moved.
    np.testing.assert_allclose(rows(after)[LENGTH:], rows(before)[LENGTH:], rtol=1e-3)
    assert np.abs(rows(after)[:8] - rows(before)[:8]).max() > 1e-3


def test_to_hf_classifier_gives_jaxlm_predict_probabilities(finetuned, tmp_path):
    out = tmp_path / "hf"
    assert cli.main(["convert", "--to-hf", str(finetuned), "--out", str(out)]) == 0
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(out)
    pairs = [("dog", "a domestic animal"), ("run", "move fast on foot"), ("red", "of the colour of blood"),
             ("think", "use the mind"), ("table", "a piece of furniture")]
    inputs = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] <= LENGTH  # no truncation: the two sides see the same tokens
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits, -1).numpy()
    predicted = [ranked[0] for ranked in jaxlm.load(finetuned).predict([f"{a}\t{b}" for a, b in pairs])]
    assert [label for label, _ in predicted] == [model.config.id2label[i] for i in probs.argmax(-1)]
    np.testing.assert_allclose([p for _, p in predicted], probs.max(-1), atol=1e-5)
    assert probs.max(-1).std() > 1e-3  # the fine-tuned classifier tells the texts apart
    # Its model card names the data, the steps and the results it was trained to.
    card, config = (out / "README.md").read_text(), json.loads((finetuned / "config.json").read_text())
    results = json.loads((finetuned / "results.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\n") and "`BertForSequenceClassification`" in card
    assert f'datasets: ["{config["data"]["dataset"]}"]' in card and f"- steps: {results['step']} of batch" in card
    for split in [s for s in ("eval", "test") if s in results]:
        assert f"| {config['data'][f'{split}_split']} | accuracy | {results[split]['accuracy']:.4g} |" in card


def test_hf_classifier_to_jaxlm_and_back_through_the_cli(finetuned, pairs_task, tmp_path, capsys):
    """A Hugging Face BertForSequenceClassification -> `convert --from-hf` -> a workdir every command takes
    (predict, evaluate with the data named by --config.data.*) -> `convert --to-hf`: the same logits."""
    first = tmp_path / "hf"
    assert cli.main(["convert", "--to-hf", str(finetuned), "--out", str(first)]) == 0
    workdir, back = tmp_path / "w", tmp_path / "back"
    assert cli.main(["convert", "--from-hf", str(first), "--out", str(workdir)]) == 0
    assert "task 'classify'" in capsys.readouterr().out
    assert cli.main(["convert", "--from-hf", str(first), "--out", str(workdir)]) == 2  # never over a workdir
    assert cli.main(["convert", "--to-hf", str(workdir), "--out", str(back)]) == 0
    a = transformers.BertForSequenceClassification.from_pretrained(first).eval()
    b = transformers.BertForSequenceClassification.from_pretrained(back).eval()
    assert a.config.id2label == b.config.id2label and len(a.config.id2label) == 3
    tokenizer = transformers.BertTokenizerFast.from_pretrained(back)
    inputs = tokenizer(["dog", "think twice"], ["a domestic animal", "use the mind"], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(b(**inputs).logits.numpy(), a(**inputs).logits.numpy(), atol=1e-5)

    texts = ["dog\ta domestic animal", "run\tmove fast on foot", "red\tof the colour of blood"]
    # What the texts are (here pairs) is data the converted model never had: data.text_fields says it.
    converted, trained = jaxlm.load(workdir, "data.text_fields=('text', 'text_b')"), jaxlm.load(finetuned)
    assert converted.label_names == trained.label_names
    for x, y in zip(converted.predict(texts, top=3), trained.predict(texts, top=3)):
        assert [label for label, _ in x] == [label for label, _ in y]
        np.testing.assert_allclose([p for _, p in x], [p for _, p in y], atol=1e-5)
    data = ["--config.data.dataset=local_classification", f"--config.data.path={pairs_task}",
            "--config.data.text_fields=('text', 'text_b')", f"--config.data.max_seq_length={LENGTH}"]
    with pytest.raises(ValueError, match="has no data: give it with --config.data.dataset"):
        converted.evaluate("validation")
    assert cli.main(["evaluate", "--workdir", str(workdir), "--split", "validation", *data]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{\n"):])
    assert evaluated == pytest.approx(trained.evaluate("validation"), rel=1e-5)
