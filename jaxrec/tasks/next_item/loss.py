"""The next-item task's training loss: `model.loss` picks one of `jaxrec.ops.losses` (or its vocabulary-parallel
form in `jaxrec.ops.vocab_parallel` when the mesh splits the item table)."""

from __future__ import annotations

import jax

from jaxrec.ops.losses import (
    bce_sampled,
    bpr,
    gbce,
    sampled_candidates,
    sampled_ce,
    softmax_ce_chunked,
    softmax_ce_full,
    sparse_target_ce,
)
from jaxrec.ops.vocab_parallel import sharded_softmax_ce


def training_loss(cfg_model, num_items: int, h_BxLxD, table_VxD, batch, key, mesh=None, target_fraction=None):
    """The loss `model.loss` names, on a batch: (mean over target positions, number of them).

    With a `mesh` whose "model" axis splits the item table, ce and ce_chunked run vocabulary-parallel
    (`jaxrec.ops.vocab_parallel`: each shard's logits stay local, logsumexps combine across shards).
    `target_fraction`: the expected share of positions with a target (BERT4Rec's mask_prob); when
    given, ce and ce_chunked score only those positions (`sparse_target_ce`, same value and gradient).

    bce         SASRec: positive vs one negative per position from the pipeline (outside the history)
    bpr         -log sigmoid(pos - neg) with the same negatives (Rendle et al.'s BPR)
    ce          full-catalogue softmax cross-entropy over every position ("SASRec+")
    ce_chunked  the same, computed in catalogue chunks (never N x V logits)
    gbce        gSASRec: `num_negatives` uniform negatives, shared by the batch or drawn per position
                (`model.gbce_negatives`), calibrated
    sampled     sampled softmax: `num_negatives` candidates shared by the batch (`model.sampled_negatives`),
                logQ-corrected (Covington et al. 2016's candidate generator; Jean et al. 2015)
    """
    positives_BxL = batch["positives_BxL"]
    if cfg_model.loss == "bce":
        return bce_sampled(h_BxLxD, table_VxD, positives_BxL, batch["negatives_BxL"])
    if cfg_model.loss == "bpr":
        return bpr(h_BxLxD, table_VxD, positives_BxL, batch["negatives_BxL"])
    if cfg_model.loss == "sampled":
        ids_M, log_q_V = sampled_candidates(
            key, positives_BxL, cfg_model.num_negatives, num_items, table_VxD.shape[0], cfg_model.sampled_negatives
        )
        return sampled_ce(h_BxLxD, table_VxD, positives_BxL, ids_M, log_q_V)
    if cfg_model.loss in ("ce", "ce_chunked"):
        h_NxD = h_BxLxD.reshape(-1, h_BxLxD.shape[-1])
        targets_N = positives_BxL.reshape(-1)
        if mesh is not None and mesh.shape["model"] > 1:
            chunk = cfg_model.ce_chunk if cfg_model.loss == "ce_chunked" else 0

            def ce_fn(h_NxD, targets_N):
                return sharded_softmax_ce(h_NxD, table_VxD, targets_N, num_items, mesh, chunk=chunk)

        elif cfg_model.loss == "ce":

            def ce_fn(h_NxD, targets_N):
                return softmax_ce_full(h_NxD, table_VxD, targets_N, num_items)

        else:

            def ce_fn(h_NxD, targets_N):
                return softmax_ce_chunked(h_NxD, table_VxD, targets_N, num_items, chunk=cfg_model.ce_chunk)

        if target_fraction is None:
            return ce_fn(h_NxD, targets_N)
        groups = 1 if mesh is None else mesh.shape["data"]
        return sparse_target_ce(ce_fn, h_NxD, targets_N, target_fraction, groups)
    if cfg_model.loss == "gbce":
        shape = (cfg_model.num_negatives,)
        if cfg_model.gbce_negatives == "position":
            shape = positives_BxL.shape + shape
        negatives = jax.random.randint(key, shape, 1, num_items + 1)
        return gbce(h_BxLxD, table_VxD, positives_BxL, negatives, num_items, cfg_model.gbce_t)
    raise ValueError(f"unknown model.loss {cfg_model.loss!r}; known: bce, bpr, ce, ce_chunked, gbce, sampled")
