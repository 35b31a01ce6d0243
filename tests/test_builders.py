"""Datasets by name: jaxlm's tfds builders (local files, the embedded Debian data) and any tfds name (mocked)."""

import functools
import logging
import os
import time

import pytest
import tensorflow_datasets as tfds

from jaxlm.data import sources
from jaxlm.data.builders import debian, embedded
from jaxlm.data.sentences import split_sentences

SYNSETS_PER_FILE = 1500  # the WordNet subset the fast tests build from (the full build is a slow test)


def texts(source, field="text") -> list[str]:
    return [r[field].decode() for r in source.__getitems__(list(range(len(source))))]


# ------------------------------------------------------------------------------------------------ local_text


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.txt", "First doc, line one.\nLine two.\n\n\n   \nSecond doc.  \n")
    write(root / "sub" / "b.txt", b"Third doc \xff\xfe bad bytes.\nok\n\nFourth \xc3\xa9t\xc3\xa9 doc.\n")
    write(root / "ignored.md", "not a text file\n")
    return root


def test_local_text_documents_sources_and_bad_bytes(corpus, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        source = sources.open_source("local_text", "train", path=corpus, data_dir=tmp_path / "tfds")
    assert texts(source) == ["First doc, line one.\nLine two.", "Second doc.", "Third doc \ufffd\ufffd bad bytes.\nok",
                             "Fourth été doc."]
    assert texts(source, "source") == ["a.txt", "a.txt", "sub/b.txt", "sub/b.txt"]
    assert "b.txt: 1 line(s) hold bytes that are not UTF-8" in caplog.text
    assert source.dataset_info.metadata["non_utf8_lines"] == {"sub/b.txt": 1}


def test_local_text_glob_reuse_and_fresh_data_after_an_edit(corpus, tmp_path):
    data_dir = tmp_path / "tfds"
    first = sources.prepare("local_text", path=corpus / "*.txt", data_dir=data_dir)
    assert first.info.splits["train"].num_examples == 2
    start = time.perf_counter()
    again = sources.prepare("local_text", path=corpus / "*.txt", data_dir=data_dir)
    assert type(again).__name__ == "ReadOnlyBuilder" and time.perf_counter() - start < 1.0
    write(corpus / "a.txt", "Only one doc now.\n")
    edited = sources.open_source("local_text", "train", path=corpus / "*.txt", data_dir=data_dir)
    assert texts(edited) == ["Only one doc now."]


def test_local_text_validation_split_is_a_stable_partition(tmp_path):
    root = tmp_path / "many"
    docs = [f"Document number {i}.\nIts second line." for i in range(200)]
    write(root / "docs.txt", "\n\n".join(docs))
    split = {}
    for run in ("one", "two"):
        for name in ("train", "validation"):
            split[run, name] = texts(sources.open_source(
                "local_text", name, path=root, data_dir=tmp_path / run, validation_fraction=0.25))
    assert split["one", "train"] == split["two", "train"] and split["one", "validation"] == split["two", "validation"]
    assert sorted(split["one", "train"] + split["one", "validation"]) == sorted(docs)
    assert 25 < len(split["one", "validation"]) < 75


def test_local_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="local_text: no .txt files at .*nowhere"):
        sources.prepare("local_text", path=tmp_path / "nowhere", data_dir=tmp_path)
    write(tmp_path / "blank" / "x.txt", "\n  \n\n")
    with pytest.raises(ValueError, match="local_text: no documents in the 1 file"):
        sources.prepare("local_text", path=tmp_path / "blank", data_dir=tmp_path / "tfds")
    with pytest.raises(ValueError, match="needs `path`"):
        sources.prepare("local_text", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ local_classification


def test_local_classification_csv_pairs_labels_and_unlabelled_test(tmp_path):
    root = tmp_path / "task"
    write(root / "train.csv", 'text,text_b,label\n"A, quoted ""one""",b1,pos\nsecond,b2,neg\nthird,b3,neutral\n')
    write(root / "validation.csv", "text,text_b,label\nv1,vb1,neutral\n")
    write(root / "test.csv", "text,text_b\nt1,tb1\nt2,tb2\n")
    data_dir = tmp_path / "tfds"
    train = sources.open_source("local_classification", "train", path=root, data_dir=data_dir)
    assert sources.class_names(train) == ["neg", "neutral", "pos"]
    records = train.__getitems__([0, 1, 2])
    assert [r["text"] for r in records] == [b'A, quoted "one"', b"second", b"third"]
    assert [r["text_b"] for r in records] == [b"b1", b"b2", b"b3"]
    assert [r["label"] for r in records] == [2, 0, 1] and [r["idx"] for r in records] == [0, 1, 2]
    test = sources.open_source("local_classification", "test", path=root, data_dir=data_dir)
    assert [r["label"] for r in test.__getitems__([0, 1])] == [-1, -1]
    assert sources.open_source("local_classification", "validation", path=root, data_dir=data_dir)[0]["label"] == 1


def test_local_classification_tsv_jsonl_numeric_labels_fields_and_regression(tmp_path):
    write(tmp_path / "glue" / "train.tsv", 'sentence\tlabel\nit\'s "great\t1\nbad\t0\n')
    write(tmp_path / "glue" / "dev.tsv", "sentence\tlabel\nfine\t1\n")
    dev = sources.open_source("local_classification", "validation", path=tmp_path / "glue",
                              data_dir=tmp_path / "tfds", text_field="sentence")
    assert dev[0]["text"] == b"fine" and sources.class_names(dev) == ["0", "1"]
    train = sources.open_source("local_classification", "train", path=tmp_path / "glue",
                                data_dir=tmp_path / "tfds", text_field="sentence")
    assert train[0]["text"] == b'it\'s "great'
    jsonl = write(tmp_path / "j" / "train.jsonl", '{"text": "a", "label": 10}\n\n{"text": "b", "label": 2}\n')
    source = sources.open_source("local_classification", "train", path=jsonl, data_dir=tmp_path / "tfds")
    assert sources.class_names(source) == ["2", "10"]
    scores = write(tmp_path / "r" / "train.csv", "text,label\na,0.5\nb,4.25\n")
    source = sources.open_source("local_classification", "train", path=scores, data_dir=tmp_path / "tfds",
                                 regression=True)
    assert [float(r["label"]) for r in source.__getitems__([0, 1])] == [0.5, 4.25]
    with pytest.raises(ValueError, match="field 'label' is Scalar, not a ClassLabel"):
        sources.class_names(source)


def test_local_classification_bad_input_names_file_line_and_columns(tmp_path, caplog):
    data_dir = tmp_path / "tfds"
    write(tmp_path / "a" / "train.csv", "text,label\nx,cat\ny,dog\n")
    write(tmp_path / "a" / "validation.csv", "text,label\nz,cat\n\nw,bird\n")
    with pytest.raises(ValueError, match=r"a/validation.csv:4: label 'bird' never appears in the train split"):
        sources.prepare("local_classification", path=tmp_path / "a", data_dir=data_dir)
    write(tmp_path / "b" / "train.csv", "sentence,label\nx,cat\n")
    with pytest.raises(ValueError, match=r"b/train.csv: no column 'text'; columns found: sentence, label"):
        sources.prepare("local_classification", path=tmp_path / "b", data_dir=data_dir)
    write(tmp_path / "c" / "train.csv", "")
    with pytest.raises(ValueError, match=r"c/train.csv is empty"):
        sources.prepare("local_classification", path=tmp_path / "c", data_dir=data_dir)
    write(tmp_path / "d" / "train.jsonl", '{"text": "x", "label": 1}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"d/train.jsonl:2: no field 'label'; fields found: text"):
        sources.prepare("local_classification", path=tmp_path / "d", data_dir=data_dir)
    write(tmp_path / "e" / "train.csv", "text,label\nx,1,extra\n")
    with pytest.raises(ValueError, match=r"e/train.csv:2: 3 fields, the header has 2"):
        sources.prepare("local_classification", path=tmp_path / "e", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="no train.csv, train.tsv or train.jsonl in"):
        sources.prepare("local_classification", path=tmp_path, data_dir=data_dir)
    write(tmp_path / "f" / "train.csv", b"text,label\ncaf\xe9,1\nok,0\n")
    with caplog.at_level(logging.WARNING):
        source = sources.open_source("local_classification", "train", path=tmp_path / "f", data_dir=data_dir)
    assert source[0]["text"].decode() == "caf\ufffd"
    assert "1 line(s) hold bytes that are not UTF-8 (first: line 2)" in caplog.text
    assert list(source.dataset_info.metadata["non_utf8_lines"].values()) == [1]


# ------------------------------------------------------------------------------------------------ any tfds name


class _DataSourceMock(tfds.testing.PickableDataSourceMock):
    """tfds 4.9.10's mock sets `__getitems__` as a plain attribute that misses `self`: bind it."""

    def __setattr__(self, name, value):
        if name == "__getitems__":
            value = functools.partial(value, self)
        super().__setattr__(name, value)


@pytest.mark.parametrize("name, split, field", [("glue/sst2", "train", "sentence"), ("imdb_reviews", "test", "text")])
def test_any_tfds_dataset_by_name(tmp_path, name, split, field):
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE,
                                mock_array_record_data_source=_DataSourceMock()):
        source = sources.open_source(name, split, data_dir=tmp_path)
        assert len(source) == 7
        records = source.__getitems__([0, 3, 6])
        assert all(isinstance(r[field], str | bytes) and r["label"] in (0, 1) for r in records)
        assert sources.class_names(source) == (["negative", "positive"] if name == "glue/sst2" else ["neg", "pos"])
        with pytest.raises(KeyError, match="no label field 'category' in the dataset; fields: "):
            sources.class_names(source, "category")


def test_unknown_names_and_misplaced_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'no_such_corpus'.*local_text, local_classification, "
                                         "embedded_corpus, wordnet_lexname, fortunes_topic"):
        sources.open_source("no_such_corpus", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`path` is for jaxlm's builders \(local_text, .*\), not 'glue/sst2'"):
        sources.open_source("glue/sst2", "train", data_dir=tmp_path, path=tmp_path)
    with pytest.raises(ValueError, match="embedded_corpus reads the Debian packages' files and takes no `path`"):
        sources.open_source("embedded_corpus", "train", data_dir=tmp_path, path=tmp_path)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXLM_DATA_DIR", str(tmp_path))
    assert sources.default_data_dir() == tmp_path
    monkeypatch.delenv("JAXLM_DATA_DIR")
    assert sources.default_data_dir() == sources.pathlib.Path(os.path.expanduser("~/.cache/jaxlm/tfds"))


# ------------------------------------------------------------------------------------------------ embedded data


@pytest.fixture(scope="module")
def wordnet_subset(tmp_path_factory):
    """The first SYNSETS_PER_FILE synsets of each real WordNet data file (license header kept)."""
    root = tmp_path_factory.mktemp("wordnet")
    for path in debian.wordnet_files():
        lines = path.read_text().splitlines(keepends=True)
        header = [line for line in lines if line.startswith("  ")]
        (root / path.name).write_text("".join(header + lines[len(header) : len(header) + SYNSETS_PER_FILE]))
    return root


@pytest.fixture(scope="module")
def embedded_sources(wordnet_subset, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return {
        (name, split): sources.open_source(name, split, data_dir=data_dir, wordnet_dir=wordnet_subset)
        for name, splits in [("wordnet_lexname", embedded.SPLITS), ("fortunes_topic", embedded.SPLITS),
                             ("embedded_corpus", ("train", "validation"))]
        for split in splits
    }


def test_wordnet_lexname_task(embedded_sources, wordnet_subset):
    synsets = {s.key: s for s in debian.read_wordnet(wordnet_subset)}
    splits = {split: embedded_sources["wordnet_lexname", split] for split in embedded.SPLITS}
    assert sources.class_names(splits["train"]) == list(debian.LEXNAMES) and len(debian.LEXNAMES) == 45
    ids = {split: [r["id"].decode() for r in s.__getitems__(list(range(len(s))))] for split, s in splits.items()}
    assert sorted(sum(ids.values(), [])) == sorted(synsets)  # a partition of the synsets
    assert 0.75 < len(ids["train"]) / len(synsets) < 0.85
    first = splits["validation"][0]
    synset = synsets[first["id"].decode()]
    assert first["text"].decode() == synset.gloss and debian.LEXNAMES[first["label"]] == debian.LEXNAMES[synset.lexname]
    dog = debian.parse_synset('02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus '
                              'Canis; "the dog barked all night"; "a dog\'s life"  ', "n")
    assert (dog.key, debian.LEXNAMES[dog.lexname], dog.lemmas) == ("n02084071", "noun.animal",
                                                                    ("dog", "domestic dog", "Canis familiaris"))
    assert dog.definition == "a member of the genus Canis" and dog.examples == ("the dog barked all night", "a dog's life")


def test_fortunes_topic_task(embedded_sources):
    names = sources.class_names(embedded_sources["fortunes_topic", "train"])
    assert len(names) == 17 and {"science", "politics", "computers"} <= set(names) and "pratchett" not in names
    sizes = [len(embedded_sources["fortunes_topic", split]) for split in embedded.SPLITS]
    fortunes = debian.read_fortunes()
    assert sum(sizes) == sum(f.topic in names for f in fortunes) and 0.75 < sizes[0] / sum(sizes) < 0.85
    assert all("\x08" not in f.text and "%" != f.text for f in fortunes) and len(fortunes) == 15217


def test_embedded_corpus_leaves_out_task_evaluation_texts(embedded_sources, wordnet_subset):
    synsets = {s.key: s for s in debian.read_wordnet(wordnet_subset)}
    corpus = {split: texts(embedded_sources["embedded_corpus", split]) for split in ("train", "validation")}
    lines = {split: {line for doc in docs for line in doc.split("\n")} for split, docs in corpus.items()}
    fortune_docs = {split: set(docs) for split, docs in corpus.items()}
    for split in embedded.SPLITS:
        wordnet = embedded_sources["wordnet_lexname", split]
        keys = [r["id"].decode() for r in wordnet.__getitems__(list(range(len(wordnet))))]
        definitions = {embedded.synset_lines(synsets[k])[0] for k in keys}
        examples = {line for k in keys for line in embedded.synset_lines(synsets[k])[1:]}
        fortunes = {"\n".join(split_sentences(" ".join(t.split())))
                    for t in texts(embedded_sources["fortunes_topic", split])}
        for corpus_split in ("train", "validation"):
            if corpus_split == split:
                assert definitions <= lines[split] and fortunes <= fortune_docs[split]
            elif embedded.SPLITS.index(corpus_split) < embedded.SPLITS.index(split):
                assert not (definitions | examples) & lines[corpus_split]
                assert not fortunes & fortune_docs[corpus_split]
    train = embedded_sources["embedded_corpus", "train"]
    wordnet_docs = [r for r in train.__getitems__(list(range(len(train)))) if r["source"].startswith(b"wordnet/")]
    assert max(len(r["text"].decode().split("\n")) for r in wordnet_docs) >= embedded.SYNSETS_PER_DOCUMENT


def test_a_prefix_of_a_split_samples_all_of_it(embedded_sources):
    """Examples are stored in a hash order: the first fifth of a split holds (nearly) every class, where in the
    Debian files' order it held WordNet's first few lexicographer files."""
    for name in ("wordnet_lexname", "fortunes_topic"):
        records = embedded_sources[name, "train"]
        labels = [int(r["label"]) for r in records.__getitems__(list(range(len(records))))]
        head = labels[: len(labels) // 5]
        assert len(set(head)) >= 0.9 * len(set(labels)), name
    corpus = embedded_sources["embedded_corpus", "train"]
    sources_ = [r["source"].decode().split("/")[0] for r in corpus.__getitems__(list(range(len(corpus) // 5)))]
    assert {"wordnet", "fortunes"} <= set(sources_)


def test_missing_debian_packages_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wordnet-base .*apt-get install wordnet-base fortunes.*setup.sh"):
        sources.prepare("wordnet_lexname", data_dir=tmp_path, wordnet_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"package fortunes .*apt-get install wordnet-base fortunes"):
        sources.prepare("embedded_corpus", data_dir=tmp_path, fortunes_dir=tmp_path / "none")


@pytest.mark.slow
def test_full_embedded_build(tmp_path):
    counts = {}
    for name in ("embedded_corpus", "wordnet_lexname", "fortunes_topic"):
        start = time.perf_counter()
        builder = sources.prepare(name, data_dir=tmp_path)
        counts[name] = {k: v.num_examples for k, v in builder.info.splits.items()}
        print(name, f"{time.perf_counter() - start:.1f}s", counts[name])
    assert sum(counts["wordnet_lexname"].values()) == 117_659
    assert counts["embedded_corpus"]["train"] > 20_000
