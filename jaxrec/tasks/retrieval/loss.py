"""The two-tower loss: user tower, item tower, negatives, frequency estimate, sampled softmax.

Legend: B users per batch, L history length, P examples per user, N = B x P examples, M candidates,
D embedding width, V item-table rows.

A step (`jaxrec.engine.step`) does, in order: update the streaming frequency estimate with the batch's
positives (count-min sketch or Yi et al.'s estimator: the task state, so it is checkpointed), draw the
negatives (`retrieval.negatives`), and take the gradient of the sampled softmax with logQ correction
(`retrieval.logq`) at a learnable or fixed temperature.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.config import Config
from jaxrec.ops import sampling
from jaxrec.ops.losses import sampled_softmax_loss, temperature, temperature_param


def _log_freq(cfg: Config, frequency, exact_log_p_V, examples: int):
    """log p(x) (the chance one training example's positive is x), from the configured estimator."""
    if cfg.retrieval.frequency == "count_min":
        return lambda ids: sampling.cms_log_prob(frequency, ids)
    if cfg.retrieval.frequency == "youtube":
        # 1/B estimates the chance x is in a step's batch, ~ examples * p(x).
        return lambda ids: sampling.youtube_log_q(frequency, ids) - math.log(examples)
    return exact_log_p_V


def _candidates(cfg: Config, key, positive_ids_N, log_freq, exact_log_p_V, num_items: int):
    r = cfg.retrieval
    if r.negatives == "in_batch":
        return sampling.in_batch(positive_ids_N, log_freq)
    if r.negatives == "uniform":
        return sampling.uniform(key, r.num_sampled, num_items)
    if r.negatives == "mixed":
        return sampling.mixed(key, positive_ids_N, log_freq, r.num_sampled, num_items)
    return sampling.popularity(key, r.num_sampled, exact_log_p_V)


def _positive_log_q(cfg: Config, positive_ids_N, log_freq, num_items: int):
    """log Q of each positive under the sampler that could have drawn it as a negative."""
    r = cfg.retrieval
    if r.negatives in ("in_batch", "mixed"):
        return sampling.in_batch(positive_ids_N, log_freq)[1]
    if r.negatives == "uniform":
        return jnp.full(positive_ids_N.shape, math.log(r.num_sampled / num_items), jnp.float32)
    log_p = log_freq(positive_ids_N) if callable(log_freq) else log_freq[positive_ids_N]
    return math.log(r.num_sampled) + log_p


def init_frequency(cfg: Config):
    """The streaming frequency estimate `retrieval.frequency` asks for (the task state; None for exact counts)."""
    r = cfg.retrieval
    if r.frequency == "count_min":
        return sampling.cms_init(r.sketch_depth, r.sketch_width, cfg.train.seed)
    if r.frequency == "youtube":
        return sampling.youtube_init(r.sketch_depth, r.sketch_width, cfg.train.seed)
    return None


def update_frequency(cfg: Config):
    """update(frequency, batch, step) -> the estimate after the batch's positives, before the step's loss."""
    r = cfg.retrieval

    def update(frequency, batch, step):
        positives = batch["positives_BxP"]
        if r.frequency == "count_min":
            return sampling.cms_update(frequency, positives)
        if r.frequency == "youtube":
            return sampling.youtube_update(frequency, positives, step + 1, r.youtube_alpha)
        return frequency

    return update


def init_params(model, cfg: Config, example_batch: dict[str, np.ndarray]):
    """init(key) -> {"params": {"model": tower parameters, "log_tau": learnable temperature (absent when fixed)}}."""
    inputs = {k: v[:1] for k, v in example_batch.items() if not k.endswith("_BxP")}
    log_tau = temperature_param(cfg.retrieval.temperature_init)  # a Python float, outside the traced init

    def init(key):
        params = {"model": model.init({"params": key}, inputs)["params"]}
        if cfg.retrieval.temperature == 0.0:
            params["log_tau"] = jnp.asarray(log_tau, jnp.float32)
        return {"params": params}

    return init


def make_loss(model, cfg: Config, num_items: int, exact_counts_V: np.ndarray, item_features=None):
    """The task's loss (`jaxrec.engine.step`): sampled softmax over the negatives, with count 1 (a mean);
    metrics "temperature" and "accidental_hits"."""
    r = cfg.retrieval
    # Exact frequencies (and the popularity sampler's law) from training counts; add-one keeps log finite.
    exact_log_p_V = jnp.asarray(sampling.item_log_probs(exact_counts_V, smoothing=1.0))
    features_VxC = None if item_features is None else jnp.asarray(item_features, jnp.float32)

    def loss(params, model_state, frequency, batch, key):
        dropout_key, sample_key = jax.random.split(key)
        inputs = {k: v for k, v in batch.items() if not k.endswith("_BxP")}
        h_BxLxD = model.apply(
            {"params": params["model"]}, inputs, deterministic=False, rngs={"dropout": dropout_key}, method="encode"
        )
        positions_BxP, positives_BxP = batch["positions_BxP"], batch["positives_BxP"]
        batch_size, per_user = positives_BxP.shape
        query_NxD = jnp.take_along_axis(h_BxLxD, positions_BxP[..., None], axis=1).reshape(-1, h_BxLxD.shape[-1])
        positive_ids_N = positives_BxP.reshape(-1)
        log_freq = _log_freq(cfg, frequency, exact_log_p_V, positive_ids_N.size)
        candidate_ids_M, candidate_log_q_M = _candidates(
            cfg, sample_key, positive_ids_N, log_freq, exact_log_p_V, num_items
        )

        def items(ids):
            features = None if features_VxC is None else features_VxC[ids]
            return model.apply({"params": params["model"]}, ids, features, method="encode_items")

        tau = temperature(params["log_tau"]) if "log_tau" in params else r.temperature
        loss, aux = sampled_softmax_loss(
            query_NxD,
            items(positive_ids_N),
            positive_ids_N,
            _positive_log_q(cfg, positive_ids_N, log_freq, num_items),
            items(candidate_ids_M),
            candidate_ids_M,
            candidate_log_q_M,
            tau,
            logq_correction=r.logq,
            remove_accidental_hits=r.remove_accidental_hits,
            per_user_ids_N=jnp.repeat(jnp.arange(batch_size), per_user) if r.per_user_loss else None,
        )
        metrics = {"temperature": jnp.asarray(tau, jnp.float32), "accidental_hits": aux["accidental_hits"]}
        return loss, (jnp.ones((), jnp.float32), model_state, metrics)

    return loss
