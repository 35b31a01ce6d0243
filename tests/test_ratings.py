"""Human ratings as data: the sentiment_ratings builder on the real files of the vaderSentiment 3.3.2 sdist
(counts, the binary rule, disjoint splits, preference pairs and their strength) and local_preferences' checks."""

import collections
import json
import re

import numpy as np
import pytest

from jaxlm import cli
from jaxlm.data import records, sources
from jaxlm.data.builders import human_ratings

SNIPPETS = {"movies": 10605, "tweets": 4200, "products": 3708, "nyt": 5190}  # the paper's Table (and the issue's)


def _rows(name: str, split: str) -> list[dict]:
    return list(records.iter_records(sources.open_source(name, split)))


def _text(record, field="text") -> str:
    return " ".join(records.as_text(record[field]).lower().split())


@pytest.fixture(scope="module")
def regression(data_env):
    return {split: _rows("sentiment_ratings/all_regression", split) for split in human_ratings.SPLITS}


def test_every_snippet_once_in_one_split_by_its_text(regression):
    counts = collections.Counter(records.as_text(r["domain"]) for rows in regression.values() for r in rows)
    assert counts == SNIPPETS
    texts = {split: {_text(r) for r in rows} for split, rows in regression.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    sizes = {split: len(rows) / sum(SNIPPETS.values()) for split, rows in regression.items()}
    assert 0.78 < sizes["train"] < 0.82 and 0.08 < sizes["test"] < 0.12
    movie = next(r for r in regression["train"] + regression["test"] + regression["validation"]
                 if records.as_text(r["id"]) == "movies/3")
    assert records.as_text(movie["text"]) == "Effective but too tepid biopic"  # the file's third line, joined by id
    assert movie["label"] == pytest.approx(-0.6) and len(movie["ratings"]) == 15
    assert np.mean(movie["ratings"]) == pytest.approx(-0.6, abs=1e-6)
    product = next(r for rows in regression.values() for r in rows if records.as_text(r["id"]) == "products/1_1")
    assert len(product["ratings"]) == 20  # its ratings file starts with a byte-order mark: the id still joins


def test_binary_is_the_sign_of_the_mean_without_near_neutral_snippets(regression, data_env):
    for split in human_ratings.SPLITS:
        binary = _rows("sentiment_ratings/movies_binary", split)
        movies = [r for r in regression[split] if records.as_text(r["domain"]) == "movies"]
        kept = [r for r in movies if abs(r["label"]) >= human_ratings.NEUTRAL]
        assert len(binary) == len(kept) < len(movies)
        assert sorted((_text(r), int(r["rating"] > 0)) for r in kept) == sorted((_text(r), r["label"]) for r in binary)
    names = sources.class_names(sources.open_source("sentiment_ratings/movies_binary", "train"))
    assert names == ["negative", "positive"]


def test_preference_pairs_chosen_rated_above_rejected_with_their_strength(regression, data_env):
    ratings = {records.as_text(r["text"]): tuple(r["ratings"].tolist()) for r in regression["test"]}
    pairs = _rows("sentiment_ratings/movies_preferences", "test")
    movies = [r for r in regression["test"] if records.as_text(r["domain"]) == "movies"]
    assert len(movies) * 3.5 < len(pairs) <= len(movies) * human_ratings.PAIRS_PER_SNIPPET  # ties are no pair
    seen = set()
    for p in pairs:
        chosen, rejected = records.as_text(p["chosen"]), records.as_text(p["rejected"])
        assert p["chosen_rating"] > p["rejected_rating"]
        assert _text(p, "chosen") != _text(p, "rejected")
        assert chosen in ratings and rejected in ratings  # both sides from the test split
        key = frozenset((records.as_text(p["chosen_id"]), records.as_text(p["rejected_id"])))
        assert key not in seen
        seen.add(key)
    for p in pairs[:50]:  # strength: P(a rating of chosen > a rating of rejected), ties one half, by counting
        a, b = ratings[records.as_text(p["chosen"])], ratings[records.as_text(p["rejected"])]
        wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
        assert p["strength"] == pytest.approx(wins / (len(a) * len(b)), abs=1e-6)
        q = np.clip(p["strength"], 0.01, 0.99)
        assert p["margin"] == pytest.approx(np.log(q / (1 - q)), abs=1e-5)
    strengths = np.array([p["strength"] for p in pairs])
    gaps = np.array([p["rating_gap"] for p in pairs])
    assert np.corrcoef(strengths, gaps)[0, 1] > 0.8  # a larger gap in means, a clearer human preference


def test_unknown_config_and_absent_ratings_are_one_clear_line(data_env, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="sentiment_ratings/<domain>_<kind>"):
        sources.open_source("sentiment_ratings/movies_stars", "train")
    with pytest.raises(ValueError, match="has no named configs"):
        sources.open_source("wordnet_lexname/x", "train")
    monkeypatch.setenv("JAXLM_RATINGS_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="run `jaxlm fetch-ratings`"):
        sources.open_source("sentiment_ratings/movies_binary", "train")
    monkeypatch.undo()
    assert cli.main(["fetch-ratings"]) == 0  # already fetched by the setup: nothing downloaded
    assert capsys.readouterr().out.startswith(str(human_ratings.default_dir()))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not the ratings")
    assert cli.main(["fetch-ratings", "--out", str(tmp_path / "other")]) == 2
    assert "holds no hutto_ICWSM_2014" in capsys.readouterr().err


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_local_preferences_reads_trl_format(data_env, tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"prompt": "Q1", "chosen": "good", "rejected": "bad", "margin": 1.5},
                                    {"prompt": "Q2", "chosen": "yes", "rejected": "no", "margin": 0}])
    _jsonl(folder / "validation.jsonl", [{"prompt": "Q3", "chosen": "fine", "rejected": "awful", "margin": 2}])
    train = list(records.iter_records(sources.open_source("local_preferences", "train", path=folder)))
    assert [(records.as_text(r["prompt"]), records.as_text(r["chosen"]), r["margin"]) for r in train] == [
        ("Q1", "good", 1.5), ("Q2", "yes", 0.0)]
    implicit = _jsonl(tmp_path / "implicit.jsonl", [{"chosen": "a", "rejected": "b"}])
    source = sources.open_source("local_preferences", "train", path=implicit)
    assert set(source.dataset_info.features) == {"idx", "chosen", "rejected"}


@pytest.mark.parametrize("rows, message", [
    ([{"chosen": "a", "rejected": "b"}, {"prompt": "p", "rejected": "b"}], "bad.jsonl:2: no field 'chosen'"),
    ([{"chosen": "same  text", "rejected": "same text"}], "bad.jsonl:1: chosen and rejected are the same text"),
    ([{"chosen": [{"role": "user", "content": "hi"}], "rejected": "b"}], "bad.jsonl:1: field 'chosen' is list"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "d"}], "bad.jsonl:2: no field 'prompt'"),
    (["not json"], "bad.jsonl:1: not a JSON object"),
    ([], "bad.jsonl: no preference pairs"),
    ([{"chosen": "a", "rejected": "b", "margin": 1}, {"chosen": "c", "rejected": "d"}], "bad.jsonl:2: no field 'margin'"),
    (['{"chosen": "a", "rejected": "b", "margin": NaN}'], "bad.jsonl:1: field 'margin' is nan, expected a finite"),
])
def test_bad_preference_files_name_the_line(rows, message, data_env, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        sources.open_source("local_preferences", "train", path=_jsonl(tmp_path / "bad.jsonl", rows))


@pytest.mark.parametrize("rows, message", [
    ([{"chosen": "a", "rejected": "a"}], "bad.jsonl:1: chosen and rejected are the same text"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], "the dataset has prompts: set config.data.text_fields"),
])
def test_bad_preferences_stop_training_with_one_line_and_exit_2(rows, message, data_env, tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    code = cli.main(["train", "--config", "experiments/sentiment.py:reward", "--workdir", str(tmp_path / "w"),
                     "--config.data.dataset=local_preferences", f"--config.data.path={bad}",
                     "--config.model.init_from=none", "--config.data.tokenizer=" + str(data_env / "tok"),
                     "--config.data.eval_split=", "--config.data.test_split="])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxlm")]  # not tfds' bars
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxlm train: error: ") and message in err[0], err
    assert not list((tmp_path / "w").glob("checkpoints/*"))  # nothing trained, nothing saved
