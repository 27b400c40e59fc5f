"""`validate`: range and cross-field checks of a whole Config.

The shared sections (data, train, eval, mesh) and the task sections' value ranges (retrieval, ctr) are
checked here; the model section checks itself (`cfg.model.validate()`, each model's config class). Which
`eval.select_metric` a run computes, and which keys its task reads, the task decides (`jaxrec.experiment`).
"""

from __future__ import annotations

from jaxrec.config.model import ConfigError, check, config_class_of
from jaxrec.config.sections import Config

NEGATIVES = ("in_batch", "uniform", "mixed", "popularity")
FREQUENCIES = ("exact", "count_min", "youtube")
OBJECTIVES = ("next", "dense_next", "all_action", "dense_all_action")
CTR_ACTIVATIONS = ("relu", "leaky_relu", "prelu", "dice")


def validate(cfg: Config) -> None:
    """Cross-field and range checks; raises ConfigError naming the offending key."""
    cls = config_class_of(cfg.model.name)
    if type(cfg.model) is not cls:
        raise ConfigError(
            f"model.name={cfg.model.name} takes a {cls.__name__} model section, got {type(cfg.model).__name__}"
        )
    cfg.model.validate()
    checks = [
        (cfg.train.num_epochs >= 1, "train.num_epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.micro_batch >= 0, "train.micro_batch must be >= 0"),
        (
            cfg.train.micro_batch == 0 or cfg.train.batch_size % cfg.train.micro_batch == 0,
            "train.batch_size must be divisible by train.micro_batch",
        ),
        (cfg.train.learning_rate > 0, "train.learning_rate must be > 0"),
        (cfg.train.loss_normalizer in ("batch", "epoch"), "train.loss_normalizer must be batch or epoch"),
        (cfg.eval.every_epochs >= 1, "eval.every_epochs must be >= 1"),
        (cfg.train.patience_epochs >= 0, "train.patience_epochs must be >= 0 (0 = no early stopping)"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (cfg.eval.num_negatives >= 1, "eval.num_negatives must be >= 1"),
        (cfg.data.min_user_interactions >= 0, "data.min_user_interactions must be >= 0"),
        (cfg.data.min_item_interactions >= 0, "data.min_item_interactions must be >= 0"),
        (cfg.data.validation_users >= 0, "data.validation_users must be >= 0 (0 = every user)"),
        (cfg.mesh.data >= 0 and cfg.mesh.model >= 1, "mesh.data must be >= 0 and mesh.model >= 1"),
        (cfg.mesh.cpu_devices >= 0, "mesh.cpu_devices must be >= 0"),
    ]
    retrieval = cfg.retrieval
    checks += [
        (retrieval.negatives in NEGATIVES, f"retrieval.negatives must be one of {', '.join(NEGATIVES)}"),
        (retrieval.frequency in FREQUENCIES, f"retrieval.frequency must be one of {', '.join(FREQUENCIES)}"),
        (retrieval.objective in OBJECTIVES, f"retrieval.objective must be one of {', '.join(OBJECTIVES)}"),
        (retrieval.num_sampled >= 1, "retrieval.num_sampled must be >= 1"),
        (retrieval.sketch_depth >= 1 and retrieval.sketch_width >= 1, "retrieval.sketch_depth/width must be >= 1"),
        (retrieval.temperature == 0.0 or retrieval.temperature >= 0.01, "retrieval.temperature must be 0 or >= 0.01"),
        (retrieval.temperature_init > 0.01, "retrieval.temperature_init must be > 0.01 (the floor)"),
        (retrieval.window_events >= 1, "retrieval.window_events must be >= 1"),
        (retrieval.all_action_positives >= 1, "retrieval.all_action_positives must be >= 1"),
        (retrieval.dense_positions >= 1, "retrieval.dense_positions must be >= 1"),
        (0.0 < retrieval.test_fraction < 1.0, "retrieval.test_fraction must be in (0, 1)"),
        (0.0 < retrieval.valid_fraction < 1.0, "retrieval.valid_fraction must be in (0, 1)"),
        (retrieval.eval_mode in ("once", "daily", "realtime"), "retrieval.eval_mode must be once, daily or realtime"),
        (retrieval.eval_window_unit in ("events", "days"), "retrieval.eval_window_unit must be events or days"),
        (retrieval.eval_window > 0, "retrieval.eval_window must be > 0"),
    ]
    ctr = cfg.ctr
    checks += [
        (ctr.labels in ("explicit", "implicit"), "ctr.labels must be explicit or implicit"),
        (ctr.num_negatives >= 1, "ctr.num_negatives must be >= 1"),
        (ctr.min_history >= 0, "ctr.min_history must be >= 0"),
        (0.0 < ctr.valid_fraction and 0.0 < ctr.test_fraction, "ctr.valid_fraction and ctr.test_fraction must be > 0"),
        (ctr.valid_fraction + ctr.test_fraction < 1.0, "ctr.valid_fraction + ctr.test_fraction must be < 1"),
        (all(w >= 1 for w in ctr.mlp + ctr.attention_mlp), "ctr.mlp and ctr.attention_mlp widths must be >= 1"),
        (ctr.activation in CTR_ACTIVATIONS, f"ctr.activation must be one of {', '.join(CTR_ACTIVATIONS)}"),
        (ctr.time_buckets >= 2, "ctr.time_buckets must be >= 2"),
        (ctr.l2_reg >= 0.0, "ctr.l2_reg must be >= 0"),
    ]
    check(*checks)
    if not cfg.eval.ks or min(cfg.eval.ks) < 1:
        raise ConfigError(f"eval.ks must be positive integers, got {cfg.eval.ks!r}")
    if cfg.eval.select_metric.split("/")[0] != "valid":
        raise ConfigError(
            f"eval.select_metric must be a valid/ metric (never select on test), got {cfg.eval.select_metric!r}"
        )
