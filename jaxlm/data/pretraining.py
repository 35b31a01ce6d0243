"""BERT pretraining examples, as google-research/bert's `create_pretraining_data.py` defines them.

Two stages. The first is deterministic and cached on disk (`pretraining_examples`): documents -> sentences ->
token ids (a ragged `Corpus`), then either NSP instances (`create_pairs`: `[CLS] A [SEP] B [SEP]`, B the actual
next segment or, half the time, a random segment of another document) or, in the MLM-only packed mode
(RoBERTa, MosaicBERT), rows of several documents (`pack_documents`). Instances are spans into the corpus's
token array, a few integers each. The second runs per batch (`PretrainingExamples.batch`): lay the spans out
and mask them with randomness drawn from (seed, epoch, example index), so every epoch masks afresh while an
evaluation set, read at one fixed epoch, is the same every time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import multiprocessing
import os
import random
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from jaxlm.data import array_cache, records
from jaxlm.data.inputs import SpecialIds, layout_pairs, layout_pieces, ragged_arange, truncated_lengths
from jaxlm.data.masking import MaskingSpec, example_bits, mask_tokens
from jaxlm.data.sentences import split_sentences

FORMAT_VERSION = 1  # bump when the cached arrays change meaning


@dataclasses.dataclass(frozen=True)
class PretrainingSpec:
    """The pretraining data parameters (defaults: google-research/bert's flags)."""

    max_seq_length: int = 128
    mlm_probability: float = 0.15
    max_predictions_per_seq: int = 20
    short_seq_prob: float = 0.1
    whole_word: bool = False
    packed: bool = False  # MLM only: documents packed into full rows with segment_ids, no NSP
    split_sentences: bool = True  # split lines into sentences (for corpora of paragraphs)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Tokenised documents, ragged: documents -> segments (sentences) -> tokens. No empty segment or document."""

    token_ids: np.ndarray  # (tokens,) int32
    word_starts: np.ndarray  # (tokens,) bool: the token begins a word
    segment_offsets: np.ndarray  # (segments + 1,) int64: segment s is token_ids[o[s]:o[s + 1]]
    document_offsets: np.ndarray  # (documents + 1,) int64: document d is segments o[d]:o[d + 1]

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def document_segments(text: str, split: bool) -> list[str]:
    """A document's segments: its non-empty lines, each split into sentences when `split`."""
    if split:
        return split_sentences(text)
    return [line for line in (raw.strip() for raw in text.splitlines()) if line]


# Starting a tokenising process (spawn, imports, the tokenizer sent over) costs what tokenising ~16k documents of
# the embedded corpus does on one core (benchmarks/input_stream.py): fewer per process than this is slower.
MIN_DOCUMENTS_PER_WORKER = 16 * records.CHUNK


def tokenize_documents(
    texts: Iterable[str], tokenizer, split: bool, *, workers: int = 1, chunk_size: int = records.CHUNK,
    total: int | None = None, progress: bool = False,
) -> Corpus:
    """Documents -> segments -> token ids with word starts, `chunk_size` documents at a time.

    With workers > 1 the chunks are tokenised in that many processes; the corpus is the same. `progress`: a bar
    of documents (of `total`) with their rate and the time left.
    """
    from tqdm import tqdm

    texts = iter(texts)
    chunks = iter(lambda: list(itertools.islice(texts, chunk_size)), [])
    if workers > 1:
        parts = _map_in_processes(chunks, workers, tokenizer, split)
    else:
        parts = (_tokenize_chunk(chunk, tokenizer, split) for chunk in chunks)
    with tqdm(total=total, unit="doc", unit_scale=True, dynamic_ncols=True, disable=not progress,
              desc=f"tokenising ({workers} process{'es' if workers > 1 else ''})") as bar:
        done = []
        for part in parts:
            done.append(part)
            bar.update(len(part[3]))  # (its documents)
    parts = done

    def column(i: int, dtype) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype), *(part[i] for part in parts)])

    document_sizes = column(3, np.int64)
    return Corpus(
        token_ids=column(0, np.int32),
        word_starts=column(1, bool),
        segment_offsets=np.concatenate([[0], np.cumsum(column(2, np.int64))]).astype(np.int64),
        document_offsets=np.concatenate([[0], np.cumsum(document_sizes[document_sizes > 0])]).astype(np.int64),
    )


def _tokenize_chunk(chunk: list[str], tokenizer, split: bool) -> tuple[np.ndarray, ...]:
    """One chunk of documents: token ids, word starts (tokens,), segment lengths (segments,) and document
    sizes in segments (documents,); empty segments left out."""
    segments = [document_segments(text, split) for text in chunk]
    encoded = tokenizer.encode_words([s for doc in segments for s in doc])
    lengths = np.array([len(seg_ids) for seg_ids, _ in encoded], np.int64)  # (segments,)
    ids = np.concatenate([np.zeros(0, np.int32), *(seg_ids for seg_ids, _ in encoded)]).astype(np.int32)
    starts = np.concatenate([np.zeros(0, bool), *(seg_starts for _, seg_starts in encoded)]).astype(bool)
    document = np.repeat(np.arange(len(chunk)), [len(doc) for doc in segments])  # (segments,)
    sizes = np.bincount(document[lengths > 0], minlength=len(chunk))
    return ids, starts, lengths[lengths > 0], sizes


_worker_state: tuple = ()  # (tokenizer, split) in a tokenising worker process


def _init_worker(tokenizer, split: bool) -> None:
    global _worker_state
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism: no thread pool in each
    _worker_state = (tokenizer, split)


def _worker_chunk(chunk: list[str]) -> tuple[np.ndarray, ...]:
    return _tokenize_chunk(chunk, *_worker_state)


def _map_in_processes(chunks: Iterator[list[str]], workers: int, tokenizer, split: bool) -> Iterator[tuple]:
    """_tokenize_chunk of each chunk in worker processes, in order, with a bounded number in flight."""
    # A started process imports the script that started jaxlm: one that trains at its top level would train again
    # in each worker. Such a worker stops here with the line below (its parent may wait on it: spawn's limit).
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # (a process still starting up)
        raise RuntimeError(f"config.data.workers={workers}: tokenising in worker processes imports {sys.argv[0]} "
                           "in each; put its top level under `if __name__ == '__main__':` (or data.workers=1)")
    context = multiprocessing.get_context("spawn")  # fork is unsafe once jax's threads run
    with concurrent.futures.ProcessPoolExecutor(workers, context, _init_worker, (tokenizer, split)) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(_worker_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def create_pairs(corpus: Corpus, max_seq_length: int, short_seq_prob: float, seed: int) -> dict[str, np.ndarray]:
    """NSP instances, `create_instances_from_document` of the reference, document after document.

    Segments are gathered until a target length (max_seq_length - 3, or with probability short_seq_prob a
    random length in [2, max] drawn once per document, as the reference does); A is a random number of the
    gathered segments; B the rest (nsp_label 0) or, half the time and whenever one segment was gathered,
    segments of a random other document (nsp_label 1), the unused segments put back. The pair is then
    truncated to max_seq_length - 3, one token at a time from the longer side, front or back at random.
    Returns a_start, a_length, b_start, b_length (spans into corpus.token_ids) and nsp_label, (instances,).
    """
    max_tokens = max_seq_length - 3
    seg = corpus.segment_offsets.tolist()
    doc = corpus.document_offsets.tolist()
    num_docs = corpus.num_documents
    rng = random.Random(seed)
    out = {"a_start": [], "a_length": [], "b_start": [], "b_length": [], "nsp_label": []}
    for d in range(num_docs):
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_tokens)
        chunk_start, i = doc[d], doc[d]
        while i < doc[d + 1]:
            if i == doc[d + 1] - 1 or seg[i + 1] - seg[chunk_start] >= target:
                num_segments = i + 1 - chunk_start
                a_end = chunk_start + (rng.randint(1, num_segments - 1) if num_segments >= 2 else 1)
                if num_segments == 1 or rng.random() < 0.5:
                    for _ in range(10):
                        other = rng.randint(0, num_docs - 1)
                        if other != d:
                            break
                    j = rng.randint(doc[other], doc[other + 1] - 1)
                    b_start, target_b = seg[j], target - (seg[a_end] - seg[chunk_start])
                    while j < doc[other + 1] - 1 and seg[j + 1] - b_start < target_b:
                        j += 1
                    b_end, label = seg[j + 1], 1
                    i = a_end - 1  # the segments after A go back for the next instance
                else:
                    b_start, b_end, label = seg[a_end], seg[i + 1], 0
                out["a_start"].append(seg[chunk_start])
                out["a_length"].append(seg[a_end] - seg[chunk_start])
                out["b_start"].append(b_start)
                out["b_length"].append(b_end - b_start)
                out["nsp_label"].append(label)
                chunk_start = i + 1
            i += 1
    pairs = {k: np.array(v, np.int32 if k == "nsp_label" else np.int64) for k, v in out.items()}
    # Truncation: each removed token is from the front or the back with probability 1/2, so the number
    # removed from the front is binomial.
    a_length, b_length = truncated_lengths(pairs["a_length"], pairs["b_length"], max_tokens)
    trunc_rng = np.random.default_rng([seed, 1])
    for side, new in (("a", a_length), ("b", b_length)):
        pairs[f"{side}_start"] += trunc_rng.binomial(pairs[f"{side}_length"] - new, 0.5)
        pairs[f"{side}_length"] = new
    return pairs


def pack_documents(corpus: Corpus, max_seq_length: int) -> dict[str, np.ndarray]:
    """Documents laid end to end into rows of max_seq_length, each piece `[CLS] tokens [SEP]`.

    A document that does not fit in what is left of a row continues in the next row as a new piece; a row
    is closed when fewer than 3 places are left. Returns piece_start, piece_length (spans into
    corpus.token_ids), piece_col (where its CLS goes), piece_segment (1, 2, ... within the row), (pieces,),
    and row_offsets (rows + 1,): row r holds pieces row_offsets[r]:row_offsets[r + 1].
    """
    doc_tokens = corpus.segment_offsets[corpus.document_offsets].tolist()  # token offsets of documents
    starts, lengths, cols, rows = [], [], [], []
    row = col = 0
    for d in range(corpus.num_documents):
        t, end = doc_tokens[d], doc_tokens[d + 1]
        while t < end:
            if max_seq_length - col < 3:
                row, col = row + 1, 0
            n = min(end - t, max_seq_length - col - 2)
            starts.append(t)
            lengths.append(n)
            cols.append(col)
            rows.append(row)
            col, t = col + n + 2, t + n
    rows = np.array(rows, np.int64)
    row_offsets = np.concatenate([[0], np.cumsum(np.bincount(rows))]).astype(np.int64)
    return {
        "piece_start": np.array(starts, np.int64),
        "piece_length": np.array(lengths, np.int64),
        "piece_col": np.array(cols, np.int64),
        "piece_segment": np.arange(len(rows)) - row_offsets[rows] + 1,
        "row_offsets": row_offsets,
    }


class PretrainingExamples:
    """Random access to masked pretraining examples: example i of epoch e depends only on (seed, e, i)."""

    def __init__(
        self, corpus: Corpus, instances: dict[str, np.ndarray], spec: PretrainingSpec, ids: SpecialIds, seed: int
    ):
        self.corpus, self.instances, self.spec, self.ids, self.seed = corpus, instances, spec, ids, seed
        self.max_seq_length = spec.max_seq_length
        self.pad_lengths = None  # every row is max_seq_length long
        self.masking = MaskingSpec(
            probability=spec.mlm_probability,
            max_predictions=spec.max_predictions_per_seq,
            whole_word=spec.whole_word,
            mask_id=ids.mask,
            vocab_size=ids.vocab_size,
        )

    def __len__(self) -> int:
        if self.spec.packed:
            return len(self.instances["row_offsets"]) - 1
        return len(self.instances["a_start"])

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """The examples `indices` (batch,) of `epoch`; index -1 gives a blank padding row of weight 0."""
        assert length == self.max_seq_length, (length, self.max_seq_length)
        indices = np.asarray(indices, np.int64)
        valid = indices >= 0
        index = np.where(valid, indices, 0)
        x = self._layout(index)
        for key, value in x.items():
            value[~valid] = self.ids.pad if key == "input_ids" else 0
        masked = mask_tokens(
            x["input_ids"],
            x.pop("candidate"),
            x.pop("word_start"),
            x["attention_mask"].sum(axis=1),
            example_bits(self.seed, epoch, index, length),
            self.masking,
        )
        x.update(masked)
        if self.spec.packed:
            x["nsp_label"] = np.zeros(len(index), np.int32)
            x["nsp_weight"] = np.zeros(len(index), np.float32)
        else:
            x["nsp_label"] = np.where(valid, self.instances["nsp_label"][index], 0).astype(np.int32)
            x["nsp_weight"] = valid.astype(np.float32)
        return x

    def _layout(self, index: np.ndarray) -> dict[str, np.ndarray]:
        c, inst, length = self.corpus, self.instances, self.max_seq_length
        if not self.spec.packed:
            return layout_pairs(
                c.token_ids, c.word_starts, inst["a_start"][index], inst["a_length"][index],
                inst["b_start"][index], inst["b_length"][index], length, self.ids,
            )
        first = inst["row_offsets"][index]
        count = inst["row_offsets"][index + 1] - first
        piece = ragged_arange(first, count)  # (pieces,) of the batch's rows
        return layout_pieces(
            c.token_ids, c.word_starts, np.repeat(np.arange(len(index)), count), inst["piece_col"][piece],
            inst["piece_start"][piece], inst["piece_length"][piece], inst["piece_segment"][piece],
            len(index), length, self.ids,
        )


def pretraining_examples(
    source,
    *,
    text_field: str,
    tokenizer,
    spec: PretrainingSpec,
    seed: int,
    cache_dir: str | None = None,
    name: str | None = None,
    workers: int = 1,
    progress: bool = False,
) -> PretrainingExamples:
    """Pretraining examples of a random-access source of documents (records with a `text_field`).

    The corpus and the instances are built once per (source, tokenizer, spec, seed) and cached under
    cache_dir (memory-mapped afterwards); `name` (e.g. 'wikipedia/20230601.en:train') is part of the key,
    beside what `array_cache.source_fingerprint` reads off the source.
    `workers` processes tokenise (the result does not depend on their number), at most one per
    MIN_DOCUMENTS_PER_WORKER documents (a small corpus is tokenised in this process), with a progress bar when
    `progress`.
    """
    def build() -> dict[str, np.ndarray]:
        texts = (records.as_text(records.field(r, text_field)) for r in records.iter_records(source))
        corpus = tokenize_documents(texts, tokenizer, spec.split_sentences,
                                    workers=max(1, min(workers, len(source) // MIN_DOCUMENTS_PER_WORKER)),
                                    total=len(source),
                                    progress=progress)
        if spec.packed:
            instances = pack_documents(corpus, spec.max_seq_length)
        else:
            instances = create_pairs(corpus, spec.max_seq_length, spec.short_seq_prob, seed)
        return corpus.arrays() | instances

    def parts() -> dict:
        return {
            "kind": "pretraining",
            "version": FORMAT_VERSION,
            "source": name,
            "fingerprint": array_cache.source_fingerprint(source, [text_field]),
            "text_field": text_field,
            "tokenizer": array_cache.tokenizer_fingerprint(tokenizer),
            "seed": seed,
            "max_seq_length": spec.max_seq_length,
            "short_seq_prob": spec.short_seq_prob,
            "packed": spec.packed,
            "split_sentences": spec.split_sentences,
        }

    arrays = array_cache.cached_arrays(cache_dir, parts, build)
    corpus = Corpus(**{f.name: arrays.pop(f.name) for f in dataclasses.fields(Corpus)})
    return PretrainingExamples(corpus, arrays, spec, SpecialIds.of(tokenizer), seed)
