"""The "Show, Attend and Tell" captioner (soft attention) in Keras 3 / TensorFlow.

One ``Captioner`` (a ``keras.Model``) owns every trainable weight: the dense image encoder, the
Bahdanau attention (W1, W2, V) and the GRU decoder with its two output layers, so
``captioner.save_weights(...)`` / ``load_weights(...)`` cover the whole network in one file.

Shapes (B = batch, L = 64 feature locations, D = 2048 feature depth):

* ``captioner.encode(features)``: features (B, L, D) -> ``(enc, keys)``, ``enc`` (B, L, E) the
  encoded image (Dense(E) + ReLU), ``keys`` (B, L, A) = W1 . enc, the attention projection that is
  computed ONCE per image and reused at every decoding step.
* ``captioner.decode_step(tokens, state, enc, keys, training=False)``: tokens (B,) int ids of the
  previous word, state (B, U) GRU state -> ``(logits (B, V), new_state (B, U), alpha (B, L))``.
  Used by teacher forcing in training and by greedy/beam search at inference.
* ``captioner.initial_state(enc)``: the GRU state before the first word, (B, U): zeros, or with
  ``state_from_image`` the paper's ``tanh(W . mean_l enc_l)``, so the first word already
  depends on the whole image rather than only on one attention glimpse.

Plain Python + Keras, no Django.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import tensorflow as tf

FEATURE_LOCATIONS = 64
FEATURE_DEPTH = 2048


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network; stored in ``meta.json`` so a model directory rebuilds exactly."""

    vocab_size: int
    embedding_dim: int = 256
    units: int = 512
    attention_units: int = 512
    feature_locations: int = FEATURE_LOCATIONS
    feature_depth: int = FEATURE_DEPTH
    dropout: float = 0.3
    max_length: int = 32  # tokens including <start> and <end>
    state_from_image: bool = False  # initial GRU state from the mean encoded image (else zeros)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        if "vocab_size" not in data:
            raise ValueError("model config lacks 'vocab_size'")
        return cls(**data)


class ImageEncoder(keras.layers.Layer):
    """Dense(E) + ReLU applied to each of the 64 InceptionV3 feature vectors."""

    def __init__(self, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.fc = keras.layers.Dense(embedding_dim, activation="relu", name="fc")

    def build(self, input_shape):
        self.fc.build(input_shape)
        self.built = True

    def call(self, features):
        return self.fc(features)


class BahdanauAttention(keras.layers.Layer):
    """Additive attention: score = V . tanh(W1 . enc + W2 . h)."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.W1 = keras.layers.Dense(units, name="W1")
        self.W2 = keras.layers.Dense(units, name="W2")
        self.V = keras.layers.Dense(1, name="V")

    def build(self, enc_shape, hidden_shape):
        self.W1.build(enc_shape)
        self.W2.build(hidden_shape)
        self.V.build(tuple(enc_shape[:-1]) + (self.units,))
        self.built = True

    def project_keys(self, enc):
        """W1 . enc, (B, L, E) -> (B, L, A); once per image."""
        return self.W1(enc)

    def attend(self, enc, keys, hidden):
        """-> context (B, E), alpha (B, L)."""
        query = self.W2(hidden)[:, None, :]  # (B, 1, A)
        score = self.V(tf.tanh(keys + query))  # (B, L, 1)
        alpha = tf.nn.softmax(score[..., 0], axis=-1)  # (B, L)
        context = tf.reduce_sum(alpha[..., None] * enc, axis=1)  # (B, E)
        return context, alpha

    def call(self, enc, hidden):
        return self.attend(enc, self.project_keys(enc), hidden)


class GRUDecoder(keras.layers.Layer):
    """Embedding(E) + GRUCell(U, reset_after=True) + Dense(U, ReLU) + Dense(V), with dropout.

    The first output layer sees [GRU output, attention context, word embedding] (the paper's
    "deep output" layer), the second maps to vocabulary logits.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, units: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.dropout_rate = dropout
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.gru = keras.layers.GRUCell(
            units, reset_after=True, recurrent_initializer="glorot_uniform", name="gru"
        )
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(vocab_size, name="fc2")
        self.dropout = keras.layers.Dropout(dropout, name="dropout")

    def build(self, context_dim):
        self.embedding.build((None,))
        self.gru.build((None, context_dim + self.embedding_dim))
        self.fc1.build((None, self.units + context_dim + self.embedding_dim))
        self.fc2.build((None, self.units))
        self.built = True

    def recur(self, tokens, state, context, training=False):
        """The recurrent part of a step -> (gru_output, new_state, emb); no output layers."""
        emb = self.embedding(tokens)  # (B, E)
        emb = self.dropout(emb, training=training)
        x = tf.concat([context, emb], axis=-1)
        output, new_state = self.gru(x, state, training=training)
        if isinstance(new_state, (list, tuple)):
            new_state = new_state[0]
        return output, new_state, emb

    def project(self, output, context, emb, training=False):
        """Output layers: [gru_output, context, emb] -> vocabulary logits (any leading dims)."""
        h = tf.concat([self.dropout(output, training=training), context, emb], axis=-1)
        h = self.fc1(h)
        h = self.dropout(h, training=training)
        return self.fc2(h)

    def step(self, tokens, state, context, training=False):
        """One GRU step given the attention context -> (logits, new_state)."""
        output, new_state, emb = self.recur(tokens, state, context, training=training)
        return self.project(output, context, emb, training=training), new_state


class Captioner(keras.Model):
    """Encoder + attention + decoder in one Keras object (all weights tracked here)."""

    def __init__(self, config: ModelConfig, **kwargs):
        kwargs.setdefault("name", "captioner")
        super().__init__(**kwargs)
        self.config = config
        self.encoder = ImageEncoder(config.embedding_dim, name="encoder")
        self.attention = BahdanauAttention(config.attention_units, name="attention")
        self.decoder = GRUDecoder(
            config.vocab_size, config.embedding_dim, config.units, config.dropout, name="decoder"
        )
        self.init_state = (
            keras.layers.Dense(config.units, activation="tanh", name="init_state") if config.state_from_image else None
        )
        self.build_all()

    def build_all(self) -> None:
        """Create every variable now (so weights can be loaded into a fresh model)."""
        c = self.config
        self.encoder.build((None, c.feature_locations, c.feature_depth))
        self.attention.build((None, c.feature_locations, c.embedding_dim), (None, c.units))
        self.decoder.build(c.embedding_dim)
        if self.init_state is not None:
            self.init_state.build((None, c.embedding_dim))
        self.built = True

    # ---------------------------------------------------------------- the public API
    def encode(self, features, training=False):
        """features (B, 64, 2048) -> (enc (B, 64, E), keys (B, 64, A)); once per image."""
        features = tf.cast(features, self.compute_dtype)
        enc = self.encoder(features)
        if training:
            enc = self.decoder.dropout(enc, training=True)
        keys = self.attention.project_keys(enc)
        return enc, keys

    def initial_state(self, enc):
        """enc (B, 64, E) -> the GRU state before the first word (B, U)."""
        if self.init_state is None:
            return tf.zeros((tf.shape(enc)[0], self.config.units), dtype=self.compute_dtype)
        return self.init_state(tf.reduce_mean(enc, axis=1))

    def decode_step(self, tokens, state, enc, keys, training=False):
        """tokens (B,), state (B, U) -> logits (B, V), new_state (B, U), alpha (B, 64)."""
        context, alpha = self.attention.attend(enc, keys, state)
        logits, new_state = self.decoder.step(tokens, state, context, training=training)
        return logits, new_state, alpha

    def call(self, inputs, training=False):
        """Teacher-forced pass: (features (B,64,2048), tokens (B,T)) -> logits (B,T,V), alphas (B,T,64).

        ``tokens`` are the decoder INPUTS (``<start> w1 ... wn``); the logits at position t
        predict token t+1.  Uses a Python loop, so T must be static inside a ``tf.function``.
        """
        features, tokens = inputs
        enc, keys = self.encode(features, training=training)
        state = self.initial_state(enc)
        logits_list, alpha_list = [], []
        for t in range(tokens.shape[1]):
            logits, state, alpha = self.decode_step(tokens[:, t], state, enc, keys, training=training)
            logits_list.append(logits)
            alpha_list.append(alpha)
        return tf.stack(logits_list, axis=1), tf.stack(alpha_list, axis=1)


def build_captioner(config: ModelConfig, seed: int | None = None) -> Captioner:
    """A freshly initialised captioner (deterministic when ``seed`` is given)."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return Captioner(config)

