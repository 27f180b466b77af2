"""Caption images with a trained captioner: batched greedy/beam search compiled into one TF graph.

Why it is built this way:

* The whole search (all images x all beams, every step, stopping early once every hypothesis has
  ended) is ONE ``tf.function`` around a ``tf.while_loop``; an eager per-step Python loop is about
  5x slower on a small CPU.
* Degenerate loops are impossible by construction (:func:`forbidden_tokens`): a token that would
  complete a trigram already in the caption, or repeat the previous word, is masked out; so is a
  third occurrence of a bigram or of any but the 5 most frequent words (these stop the endless
  "X and Y and Z and ..." enumerations that greedy search fell into for 2.6 % of the dev images
  with an early checkpoint); so are ``<pad>``/``<start>``/``<unk>``, ``<end>`` as the first token,
  and everything but ``<end>`` at the last position, so every caption ends within the maximum length.
* Scores are length-normalised log-probabilities (sum of log p / number of tokens incl. ``<end>``,
  raised to ``length_alpha``). Finished hypotheses stay in the beam and compete on that score.
* With a beam wider than 1, the greedy path is decoded as an extra lane next to the beam (plain
  beam search can prune it), so beam search never returns a lower-scoring caption than greedy.
* A per-image (vocabulary,) ``bias`` is added to the log-probabilities the search CHOOSES by
  (captioning.evidence.ObjectWordBias: words naming objects the photo shows no evidence of);
  the scores it returns are the model's own log-probabilities. It is an input of the compiled
  search (zeros when unused), so any bias runs in the same graph.

No Django imports: the Django glue is ``captioning.services``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import features as feature_store
from .consensus import ConsensusReranker
from .efficientnet import as_classifier_network
from .evidence import CaptionConfidence, EvidenceReranker, ObjectWordBias, VisualEvidence
from .files import ModelFileError, sha256_file
from .inception import extract_features, preprocess_image
from .objects import WORDS_PATH, ObjectWords, default_words
from .runtime import as_image_network
from .vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID

__all__ = [
    "CaptionResult",
    "Description",
    "ImageCaptioner",
    "ModelMismatchError",
    "decode_candidates",
    "decode_features",
    "describe_ahead",
    "forbidden_tokens",
    "has_repeated_trigram",
]

DEFAULT_BEAM_WIDTH = 3
# InceptionV3 runs on at most 8 images at once: on the 2-core CPU, 16 at once is no faster per
# image (measured 0.22 vs 0.28 CPU-s/image) and its activations take ~100 MB more memory.
FEATURE_BATCH = 8
# The most frequent words (ids 4..8 of a frequency-ordered vocabulary: "a", "in", "the", "on", "is")
# may occur any number of times in a caption; every other word at most twice (see forbidden_tokens).
FREE_WORDS = 5
# A masked log-probability: finite (no inf - inf = NaN), far below any real log-probability.
_NEG = -1e9


class ModelMismatchError(ValueError):
    """The captioner model and the installed feature extractor do not belong together."""


@dataclass
class CaptionResult:
    """One caption: ``attention[k]`` holds the 64 attention weights used to emit ``words[k]``."""

    text: str
    score: float
    words: list[str]
    attention: np.ndarray
    reached_max_length: bool = field(default=False)
    # The other distinct finished captions of the beam, best first: [(text, score), ...].
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    # Calibrated probability that the caption is good (captioning.evidence); None without a calibration.
    confidence: float | None = field(default=None)

    def attention_json(self) -> list:
        """``[[word, [64 weights rounded to 4 decimals]], ...]``, JSON-serialisable (for the DB)."""
        return [[w, [round(float(a), 4) for a in row]] for w, row in zip(self.words, self.attention)]


@dataclass
class Description:
    """Everything the captioner says about one photo, computed from one pass of its features.

    ``concepts``: the words people would likely use for the photo with calibrated probabilities,
    most probable first (at most CONCEPTS_KEPT, none below CONCEPT_FLOOR); empty for a model
    without a concept head. ``objects``: the ImageNet object labels with their probabilities, most
    probable first (captioning.objects); empty when the captioner runs without the classifier.
    ``fingerprint``: the photo's visual fingerprint (captioning.fingerprints, unit float16 vector of
    the projection ``ImageCaptioner.fingerprint.key``); None for a model without a fingerprint
    projection.
    """

    caption: CaptionResult
    concepts: list[tuple[str, float]] = field(default_factory=list)
    objects: list[tuple[str, float]] = field(default_factory=list)
    fingerprint: np.ndarray | None = None


# Concept words kept per photo: enough for any indexing setting tuned with evaluate_search. On dev,
# indexing the 200 most probable words (down to p ~ 0.003, flattened by SearchWeights.concept_power)
# beats the 100 most probable: sentence R@10 52.5 vs 49.9 (earlier head, 'any caption' targets:
# 100 beat 30, 47.4 vs 44.9).
CONCEPTS_KEPT = 200
CONCEPT_FLOOR = 0.001


def has_repeated_trigram(words: Sequence[str]) -> bool:
    """True if some three consecutive words occur twice (the mark of a looping caption)."""
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) != len(set(trigrams))


# ------------------------------------------------------------------------------------ the guard
def forbidden_tokens(seq, step, vocab_size: int, max_length: int, free_words: int = FREE_WORDS):
    """Boolean (N, V) mask of the tokens that may NOT follow ``seq[:, :step + 1]``.

    ``seq`` (N, max_length) int32 holds ``<start>`` at column 0 and the generated tokens at columns
    1..step (the rest is ignored); the next token goes to column ``step + 1``. Forbidden:

    * a token completing a trigram already present (no loops), or the previous token again;
    * a token making a bigram's third occurrence, and a third occurrence of any word except the
      ``free_words`` most frequent ones (ids 4.., "a", "in", "the", ...): these stop the long
      "X and Y and Z and ..." enumerations that otherwise run to the maximum length. Human
      Flickr8k captions break them in 0.06 % and 0.4 % of cases;
    * ``<pad>``/``<start>``/``<unk>``, ``<end>`` as the first word, and anything but ``<end>`` at the
      last position.
    """
    import tensorflow as tf

    seq = tf.convert_to_tensor(seq, tf.int32)
    step = tf.convert_to_tensor(step, tf.int32)
    n = tf.shape(seq)[0]
    prev1 = seq[:, step]
    prev2 = seq[:, tf.maximum(step - 1, 0)]
    col, vocab = tf.range(max_length), tf.range(vocab_size)
    filled = ((col >= 1) & (col <= step))[None, :]  # generated words, <start> excluded
    limited = (vocab >= len(SPECIAL_TOKENS) + free_words)[None, :]  # words that may occur twice at most

    def count(tokens, where):
        """Per row, how often each vocabulary id occurs in ``tokens`` at the ``where`` positions."""
        rows = tf.broadcast_to(tf.range(n)[:, None], tf.shape(tokens))
        return tf.scatter_nd(tf.stack([rows, tokens], axis=-1), tf.cast(where, tf.int32), [n, vocab_size])

    # Trigram (seq[j], seq[j+1], seq[j+2]) already present whose first two words are the last two.
    trigram = tf.equal(seq[:, :-2], prev2[:, None]) & tf.equal(seq[:, 1:-1], prev1[:, None]) & filled[:, 2:]
    banned = count(seq[:, 2:], trigram & (step >= 1)) > 0
    # Bigram (prev1, w) seen twice already; word w seen twice already.
    banned |= count(seq[:, 1:], tf.equal(seq[:, :-1], prev1[:, None]) & filled[:, :-1] & filled[:, 1:]) >= 2
    banned |= (count(seq, tf.broadcast_to(filled, tf.shape(seq))) >= 2) & limited
    # The same word twice in a row ("a a", "dog dog"); <start> at step 0 is banned anyway.
    banned |= tf.one_hot(prev1, vocab_size, on_value=True, off_value=False, dtype=tf.bool)
    always = tf.equal(vocab, PAD_ID) | tf.equal(vocab, START_ID) | tf.equal(vocab, UNK_ID)
    banned |= (always | (tf.equal(vocab, END_ID) & tf.equal(step, 0)))[None, :]
    last = tf.equal(step, max_length - 2)
    return tf.where(last, tf.broadcast_to(~tf.equal(vocab, END_ID)[None, :], tf.shape(banned)), banned)


# ------------------------------------------------------------------------------------ the search
_SEARCH_FUNCTIONS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _search_function(captioner, beam_width: int, length_alpha: float):
    """The compiled search for one model and beam width (traced once, any batch size)."""
    cache = _SEARCH_FUNCTIONS.setdefault(captioner, {})
    key = (beam_width, float(length_alpha))
    if key not in cache:
        cache[key] = _build_search(captioner, beam_width, float(length_alpha))
    return cache[key]


def _build_search(captioner, beam_width: int, length_alpha: float):
    import tensorflow as tf

    cfg = captioner.config
    vocab, max_len, locations = cfg.vocab_size, cfg.max_length, cfg.feature_locations
    if beam_width < 1:
        raise ValueError(f"beam width must be at least 1, got {beam_width}")
    # Lanes per image: the beam, plus one greedy lane when the beam is wider than 1.
    groups = [(0, beam_width)] + ([(beam_width, 1)] if beam_width > 1 else [])
    lanes = sum(width for _, width in groups)
    lane_starts = np.zeros(lanes, bool)
    lane_starts[[start for start, _ in groups]] = True

    def normalise(total, length):
        return total / tf.pow(tf.maximum(tf.cast(length, tf.float32), 1.0), length_alpha)

    @tf.function(input_signature=[
        tf.TensorSpec((None, locations, cfg.feature_depth), tf.float32),
        tf.TensorSpec((None, vocab), tf.float32),  # per image, added to the log-probabilities the search chooses by
    ])
    def search(features, bias):
        batch = tf.shape(features)[0]
        rows = batch * lanes
        enc, keys = captioner.encode(features)
        lane_image = tf.range(rows) // lanes
        enc, keys = tf.gather(enc, lane_image), tf.gather(keys, lane_image)
        lane_bias = tf.gather(bias, lane_image)
        # Only the first lane of each group is alive at first (the others would duplicate it).
        # ``total`` (biased) chooses the beam; ``raw`` is the model's own log-probability, the score returned.
        total = tf.tile(tf.where(lane_starts, 0.0, _NEG), [batch])
        raw = tf.zeros([rows])
        length = tf.zeros([rows], tf.int32)
        finished = tf.zeros([rows], tf.bool)
        tokens = tf.fill([rows], START_ID)
        state = captioner.initial_state(enc)
        seq = tf.tile(tf.one_hot([0], max_len, on_value=START_ID, off_value=PAD_ID, dtype=tf.int32), [rows, 1])
        alphas = tf.zeros([rows, max_len - 1, locations])
        image_offsets = tf.range(batch)[:, None] * lanes
        is_pad = tf.equal(tf.range(vocab), PAD_ID)[None, :]

        def cond(step, tokens, state, finished, *_):
            return (step < max_len - 1) & ~tf.reduce_all(finished)

        def body(step, tokens, state, finished, total, raw, length, seq, alphas):
            logits, new_state, alpha = captioner.decode_step(tokens, state, enc, keys)
            logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
            logp = tf.where(forbidden_tokens(seq, step, vocab, max_len), _NEG, logp)
            live = normalise(total[:, None] + logp + lane_bias, length[:, None] + 1)
            done = tf.where(is_pad, normalise(total, length)[:, None], _NEG)  # finished: pad, same score
            candidates = tf.reshape(tf.where(finished[:, None], done, live), [batch, lanes, vocab])
            parents, picks = [], []
            for start, width in groups:
                flat = tf.reshape(candidates[:, start : start + width], [batch, width * vocab])
                index = tf.math.top_k(flat, k=width, sorted=True).indices
                parents.append(index // vocab + start)
                picks.append(index % vocab)
            parent = tf.reshape(tf.concat(parents, axis=1) + image_offsets, [-1])
            token = tf.reshape(tf.concat(picks, axis=1), [-1])
            was_finished = tf.gather(finished, parent)
            picked = tf.stack([parent, token], axis=1)
            token_logp = tf.where(was_finished, 0.0, tf.gather_nd(logp, picked))
            total = tf.gather(total, parent) + token_logp + tf.where(was_finished, 0.0, tf.gather_nd(lane_bias, picked))
            raw = tf.gather(raw, parent) + token_logp
            length = tf.gather(length, parent) + tf.cast(~was_finished, tf.int32)
            token = tf.where(was_finished, PAD_ID, token)
            finished = was_finished | tf.equal(token, END_ID)
            seq = tf.gather(seq, parent) + tf.one_hot(step + 1, max_len, dtype=tf.int32)[None, :] * token[:, None]
            alphas = tf.gather(alphas, parent) + (
                tf.one_hot(step, max_len - 1)[None, :, None] * tf.gather(alpha, parent)[:, None, :]
            )
            return step + 1, token, tf.gather(new_state, parent), finished, total, raw, length, seq, alphas

        loop_vars = (tf.constant(0), tokens, state, finished, total, raw, length, seq, alphas)
        _, _, _, finished, total, raw, length, seq, alphas = tf.while_loop(cond, body, loop_vars)
        score = tf.reshape(tf.where(finished, normalise(raw, length), _NEG), [batch, lanes])
        return (
            tf.reshape(seq, [batch, lanes, max_len]),  # every lane: the n best distinct captions
            tf.reshape(alphas, [batch, lanes, max_len - 1, locations]),
            score,
            tf.reshape(length, [batch, lanes]),
        )

    return search


def decode_candidates(
    captioner, tokenizer, features, *, beam_width: int = DEFAULT_BEAM_WIDTH, length_alpha: float = 1.0, bias=None
) -> list[list[CaptionResult]]:
    """Per image, the distinct finished captions of one compiled search, best score first.

    The n-best list is what a reranker (captioning.evidence) chooses from; each candidate carries
    its own attention, so whichever is chosen can be plotted. ``bias``: (n, vocabulary) added to
    the log-probabilities the search chooses by (None: none); scores stay the model's own.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3:
        raise ValueError(f"expected features of shape (n, 64, 2048), got {features.shape}")
    if len(features) == 0:
        return []
    if bias is None:
        bias = np.zeros((len(features), captioner.config.vocab_size), np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if bias.shape != (len(features), captioner.config.vocab_size):
        raise ValueError(f"expected a bias of shape ({len(features)}, {captioner.config.vocab_size}), got {bias.shape}")
    lane_seq, lane_alphas, lane_scores, lane_lengths = (
        t.numpy() for t in _search_function(captioner, int(beam_width), length_alpha)(features, bias)
    )
    max_words = captioner.config.max_length - 2
    out = []
    for i in range(len(features)):
        candidates, seen = [], set()
        for lane in np.argsort(-lane_scores[i], kind="stable"):
            if lane_scores[i, lane] <= _NEG / 2:
                continue  # unfinished or dead lane
            length = int(lane_lengths[i, lane])  # counts <end>
            words = [tokenizer.index_word[int(t)] for t in lane_seq[i, lane, 1:length]]
            text = " ".join(words)
            if text in seen:
                continue
            seen.add(text)
            candidates.append(
                CaptionResult(
                    text=text,
                    score=float(lane_scores[i, lane]),
                    words=words,
                    attention=np.array(lane_alphas[i, lane, : len(words)], dtype=np.float32),
                    reached_max_length=len(words) >= max_words,
                )
            )
        out.append(candidates)
    return out


def with_alternatives(ranked: Sequence[CaptionResult]) -> CaptionResult:
    """The first of a ranked n-best list, with the others as its ``alternatives`` (text, score)."""
    best, *others = ranked
    best.alternatives = [(other.text, round(other.score, 4)) for other in others]
    return best


def decode_features(
    captioner, tokenizer, features, *, beam_width: int = DEFAULT_BEAM_WIDTH, length_alpha: float = 1.0
) -> list[CaptionResult]:
    """Caption precomputed features (n, 64, 2048) in one compiled search (greedy if beam_width=1)."""
    return [
        with_alternatives(ranked)
        for ranked in decode_candidates(captioner, tokenizer, features, beam_width=beam_width, length_alpha=length_alpha)
    ]


# ------------------------------------------------------------------------------------ serving
def _check_object_labels(model_path, recorded: dict, feature_dir) -> None:
    """The classifier and words table a model's search weights were tuned with must be the installed ones.

    The classifier is named by its pinned source file: converting it again gives the same weights
    but not the same bytes (HDF5 keeps creation details), so the converted file's hash would refuse
    every fresh machine.
    """
    installed = {
        "source_sha256": (feature_store.read_classifier_meta(feature_dir) or {}).get("source_sha256"),
        "words_sha256": sha256_file(WORDS_PATH),
    }
    for key, actual in installed.items():
        if recorded.get(key) and recorded[key] != actual:
            raise ModelMismatchError(
                f"the model in {model_path} was tuned with object labels of {key} {recorded[key]}, but the "
                f"installed ones have {actual}; re-run `python manage.py prepare_models` or install the matching model"
            )


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def describe_ahead(describe, batches: Iterable[tuple[Any, Sequence[np.ndarray]]]) -> Iterator[tuple[Any, list["Description"]]]:
    """For each ``(key, arrays)`` of ``batches``: ``(key, describe(arrays))``, in order
    (``describe``: an ImageCaptioner's ``describe_arrays``, say).

    The model describes each batch on a thread of its own, one batch at a time, while the caller
    works: the next batch is taken from ``batches`` (decoded, say) while the model describes the
    current one, and the caller handles a batch's descriptions (stores them, say) while the model
    describes the next. The beam search leaves part of a core idle, which that work fills. At most
    two batches of arrays are held at once. Exceptions of the model come out of this iterator; a
    batch queued behind a failure (of the model or of the caller) is dropped.
    """
    model = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="describe")
    try:
        running = None
        for key, arrays in batches:
            following = key, model.submit(describe, arrays)
            if running is not None:
                yield running[0], running[1].result()
            running = following
        if running is not None:
            yield running[0], running[1].result()
    finally:
        model.shutdown(cancel_futures=True)


class ImageCaptioner:
    """The serving object: InceptionV3 features + captioner + tokenizer, captioning in batches.

    ``feature_model``: InceptionV3 as a :class:`~captioning.runtime.ImageNetwork` (ONNX Runtime or
    TensorFlow), or a Keras model (run on TensorFlow).
    """

    def __init__(
        self,
        captioner,
        tokenizer,
        feature_model,
        *,
        version: str = "unversioned",
        beam_width: int = DEFAULT_BEAM_WIDTH,
        batch_size: int = 16,
        length_alpha: float = 1.0,
        concepts=None,
        fingerprint=None,
        meta: dict | None = None,
        object_classifier=None,
        object_words: ObjectWords | None = None,
        reranker: EvidenceReranker | ConsensusReranker | None = None,
        confidence: CaptionConfidence | None = None,
        word_bias: ObjectWordBias | None = None,
    ):
        if tokenizer.size != captioner.config.vocab_size:
            raise ModelMismatchError(
                f"vocabulary has {tokenizer.size} tokens but the model outputs {captioner.config.vocab_size}"
            )
        self.captioner = captioner
        self.tokenizer = tokenizer
        self.image_network = as_image_network(feature_model)
        self.version = version
        self.beam_width = int(beam_width)
        self.batch_size = max(1, int(batch_size))
        self.length_alpha = float(length_alpha)
        self.concepts = concepts  # captioning.concepts.ConceptHead or None
        self.fingerprint = fingerprint  # captioning.fingerprints.FingerprintProjection or None
        self.meta = meta or {}
        # The EfficientNet-Lite0 ImageNet classifier or None (no object labels): an ImageNetwork from
        # InceptionV3 inputs to probabilities, or the Keras network (run on TensorFlow).
        self.object_classifier = None if object_classifier is None else as_classifier_network(object_classifier)
        self.object_words = object_words or (default_words() if object_classifier is not None else None)
        if (reranker or confidence or word_bias) and concepts is None:
            raise ValueError("reranking, confidence and the evidence bias need the concept head's evidence")
        self.reranker = reranker
        self.confidence = confidence
        self.word_bias = word_bias

    @classmethod
    def from_dirs(
        cls,
        model_dir,
        feature_dir,
        *,
        beam_width: int | None = None,
        length_alpha: float | None = None,
        batch_size: int = 16,
        object_labels: bool = False,
        image_runtime: str = "auto",
        image_precision: str = "fp32",
        image_threads: int = 0,
        image_memory_arena: bool = False,
    ):
        """Load a model directory and the converted InceptionV3 weights that it was trained with.

        ``beam_width`` / ``length_alpha`` default to the decoding settings tuned for this model
        (meta.json ``decoding``, written by ``evaluate_captioner --save-decoding``), else 3 / 1.0.
        ``image_runtime`` / ``image_precision`` / ``image_threads`` / ``image_memory_arena``: where
        and how the image networks run (see :func:`captioning.features.load_extractor`).

        ``object_labels``: also load the EfficientNet-Lite0 classifier converted into ``feature_dir``
        by ``prepare_models``, so that each description carries object labels.

        Raises :class:`ModelMismatchError` when the checksums recorded in the model's meta.json differ
        from the installed feature weights (features of another network are meaningless to the
        model), and ``ModelFileError`` for missing or damaged files.
        """
        from .storage import load_model_dir

        loaded = load_model_dir(model_dir, expected_feature_extractor=feature_store.FEATURE_EXTRACTOR_ID)
        recorded = loaded.meta["feature_extractor"]
        installed = feature_store.read_feature_meta(feature_dir)
        if installed is None or not feature_store.feature_weights_path(feature_dir).is_file():
            raise ModelFileError(
                f"no converted InceptionV3 weights in {feature_dir}; run `python manage.py prepare_models`"
            )
        # meta.json key -> key of the installed conversion record (features.FEATURE_META_NAME)
        checks = {"source_sha256": "source_sha256", "weights_sha256": "sha256"}
        checked = [key for key in checks if recorded.get(key)]
        if not checked:
            raise ModelMismatchError(f"{loaded.path}: meta.json records no feature-extractor checksum")
        for key in checked:
            if recorded[key] != installed.get(checks[key]):
                raise ModelMismatchError(
                    f"the captioner in {loaded.path} was trained on InceptionV3 features with {key} "
                    f"{recorded[key]}, but the weights installed in {feature_dir} have "
                    f"{installed.get(checks[key])}; install the matching model or re-run "
                    f"`python manage.py prepare_models`"
                )
        tuned = loaded.meta.get("decoding") or {}
        object_classifier = None
        if object_labels:
            object_classifier = feature_store.load_classifier_network(  # verified against its record
                feature_dir, image_runtime=image_runtime, precision=image_precision, threads=image_threads, memory_arena=image_memory_arena
            )
            _check_object_labels(loaded.path, loaded.meta.get("objects") or {}, feature_dir)
        reranking, calibration = loaded.meta.get("reranking"), loaded.meta.get("confidence")
        biased = tuned.get("evidence_bias")
        needs_evidence = reranking or calibration or biased
        evidence = VisualEvidence(loaded.concepts) if loaded.concepts is not None and needs_evidence else None
        if needs_evidence and evidence is None:
            raise ModelFileError(f"{loaded.path}: meta.json has reranking/confidence/evidence-bias settings but no concept head")
        reranker = EvidenceReranker.from_meta(reranking, evidence) if reranking else None
        if reranker is not None and reranking.get("consensus"):  # captioning.consensus, with the neighbours file
            reranker = ConsensusReranker.from_meta(reranking["consensus"], reranker, loaded.neighbours)
        return cls(
            loaded.model,
            loaded.tokenizer,
            # Also verifies the files against their records.
            feature_store.load_extractor(
                feature_dir, image_runtime=image_runtime, precision=image_precision, threads=image_threads, memory_arena=image_memory_arena
            ),
            version=loaded.version,
            beam_width=beam_width or tuned.get("beam_width", DEFAULT_BEAM_WIDTH),
            length_alpha=tuned.get("length_alpha", 1.0) if length_alpha is None else length_alpha,
            batch_size=batch_size,
            concepts=loaded.concepts,
            fingerprint=loaded.fingerprint,
            meta=loaded.meta,
            object_classifier=object_classifier,
            reranker=reranker,
            confidence=CaptionConfidence.from_meta(calibration, evidence) if calibration else None,
            word_bias=ObjectWordBias.from_meta(biased, evidence, loaded.tokenizer.index_word) if biased else None,
        )

    def n_best_features(self, features, *, beam_width: int | None = None) -> list[tuple[list[CaptionResult], np.ndarray | None]]:
        """Per image of (n, 64, 2048) features: the search's n-best captions (best score first) and
        the concept head's probabilities (None without a head), in batches of ``batch_size``."""
        width = self.beam_width if beam_width is None else int(beam_width)
        out: list[tuple[list[CaptionResult], np.ndarray | None]] = []
        for chunk in _batches(features, self.batch_size):
            probabilities = self.concepts.probabilities(chunk) if self.concepts is not None else [None] * len(chunk)
            bias = self.word_bias.of(probabilities) if self.word_bias is not None else None
            ranked = decode_candidates(
                self.captioner, self.tokenizer, chunk, beam_width=width, length_alpha=self.length_alpha, bias=bias
            )
            out += list(zip(ranked, probabilities))
        return out

    def choose(self, candidates: Sequence[CaptionResult], probabilities: np.ndarray | None) -> CaptionResult:
        """The caption shown: the n-best list reranked by visual evidence (when the model is tuned
        for it), the others as its alternatives, with its calibrated confidence."""
        if self.reranker is not None:
            candidates = self.reranker.rank(candidates, probabilities)
        caption = with_alternatives(candidates)
        if self.confidence is not None:
            caption.confidence = self.confidence.of(caption, probabilities)
        return caption

    def describe_features(
        self, features, *, beam_width: int | None = None, class_probabilities=None
    ) -> list[Description]:
        """Describe precomputed InceptionV3 features (n, 64, 2048), in batches of ``batch_size``.

        ``class_probabilities``: the ImageNet classifier's (n, 1000) output for the same photos
        (:meth:`classify_arrays`, or a cache of it), which become the object labels.
        """
        n_best = self.n_best_features(features, beam_width=beam_width)
        objects = [[] for _ in n_best]
        if class_probabilities is not None:
            objects = (self.object_words or default_words()).ranked(np.asarray(class_probabilities))
        results: list[Description] = []
        prints = [None] * len(n_best)
        if self.fingerprint is not None:
            prints = [p for chunk in _batches(features, self.batch_size) for p in self.fingerprint.fingerprints(chunk)]
        for (candidates, probabilities), labels, fingerprint in zip(n_best, objects, prints):
            concepts = (
                [] if probabilities is None
                else self.concepts.ranked(probabilities, min_probability=CONCEPT_FLOOR, top_k=CONCEPTS_KEPT)[0]
            )
            results.append(Description(self.choose(candidates, probabilities), concepts, labels, fingerprint))
        return results

    def classify_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray | None:
        """The ImageNet class probabilities (n, 1000) of preprocessed images; None without the classifier."""
        if self.object_classifier is None:
            return None
        return np.concatenate(
            [self.object_classifier.run(np.stack(part)) for part in _batches(list(arrays), FEATURE_BATCH)]
        )

    def caption_features(self, features, *, beam_width: int | None = None) -> list[CaptionResult]:
        """Caption precomputed InceptionV3 features (n, 64, 2048), in batches of ``batch_size``."""
        return [d.caption for d in self.describe_features(features, beam_width=beam_width)]

    def features_of_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """InceptionV3 features (n, 64, 2048) of preprocessed images, FEATURE_BATCH at a time."""
        return np.concatenate([extract_features(self.image_network, np.stack(part)) for part in _batches(arrays, FEATURE_BATCH)])

    def describe_arrays(self, arrays: Sequence[np.ndarray], *, beam_width: int | None = None) -> list[Description]:
        """Describe preprocessed images ((299, 299, 3) arrays from ``preprocess_image``).

        With the object classifier, the same batch of arrays also goes through it (the photo is
        decoded once for both networks).
        """
        results: list[Description] = []
        for chunk in _batches(list(arrays), self.batch_size):
            probabilities = self.classify_arrays(chunk)
            results += self.describe_features(self.features_of_arrays(chunk), beam_width=beam_width, class_probabilities=probabilities)
        return results

    def caption_arrays(self, arrays: Sequence[np.ndarray], *, beam_width: int | None = None) -> list[CaptionResult]:
        """Caption preprocessed images ((299, 299, 3) arrays from ``preprocess_image``)."""
        return [d.caption for d in self.describe_arrays(arrays, beam_width=beam_width)]

    def describe_sources(self, sources: Sequence, *, beam_width: int | None = None) -> list[Description]:
        """Describe image files or encoded bytes; raises InvalidImageError / FileNotFoundError.

        The next batch is decoded while the model describes this one (describe_ahead: the beam
        search leaves a core idle), so at most two batches of pixels are held in memory.
        """
        batches = ((None, [preprocess_image(s) for s in chunk]) for chunk in _batches(list(sources), self.batch_size))
        describe = functools.partial(self.describe_arrays, beam_width=beam_width)
        return [d for _, descriptions in describe_ahead(describe, batches) for d in descriptions]

    def caption_sources(self, sources: Sequence, *, beam_width: int | None = None) -> list[CaptionResult]:
        """Caption image files or encoded bytes (see describe_sources)."""
        return [d.caption for d in self.describe_sources(sources, beam_width=beam_width)]
