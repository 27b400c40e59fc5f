"""Typed experiment configuration.

A `Config` is a tree of frozen dataclasses. Experiments live in `configs/*.py` as
`get_config() -> Config`; the command line overrides single fields with
`--set section.field=value`, coerced by the field's type. Unknown keys and values
that do not parse as the field's type are rejected with a `ConfigError` that names them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "ml-1m-sasrec"  # registry: ml-1m | ml-1m-sasrec | beauty-bert4rec | file | synthetic
    path: str = ""  # `file`: the delimited file to read; other entries: optional explicit local copy
    data_dir: str = ""  # folder of local copies; "" = $JAXREC_DATA, else ../shared/data if it exists
    cache_dir: str = ""  # where downloads go; "" = $JAXREC_CACHE, else ~/.cache/jaxrec
    user_col: str = "user_id"  # `file`: name of the user column in the header
    item_col: str = "item_id"  # `file`: name of the item column in the header
    time_col: str = "timestamp"  # `file`: name of the timestamp column ("" = file order)
    delimiter: str = ""  # `file`: field separator; "" = from the extension (.csv ',', else tab)
    min_user_interactions: int = 0  # k-core: drop users with fewer interactions (0 = keep all)
    min_item_interactions: int = 0  # k-core: drop items with fewer interactions (0 = keep all)
    synthetic_users: int = 2000  # `synthetic`: number of users
    synthetic_items: int = 500  # `synthetic`: number of items
    synthetic_mean_length: int = 40  # `synthetic`: mean interactions per user
    seed: int = 0  # `synthetic` generator seed, and the seed of evaluation negatives and of validation_users
    # 0 = every user validates on its second-to-last item (SASRec); N = only N users drawn at random do, and
    # the others train on it (gSASRec's reference protocol, N = 512)
    validation_users: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # model registry entry: sasrec | bert4rec | gru4rec | mf | youtube_dnn | pinnerformer (two-tower: RetrievalConfig)
    name: str = "sasrec"
    max_len: int = 200  # history length fed to the model (left padded)
    hidden: int = 50  # embedding and hidden width
    num_blocks: int = 2  # transformer blocks
    num_heads: int = 1  # attention heads
    dropout: float = 0.2  # dropout rate on embeddings, attention weights and feed-forward
    # sasrec, bert4rec: dropout on attention weights; -1 = model.dropout (fused kernels need 0)
    attention_dropout: float = -1.0
    attention: str = "auto"  # auto|reference|xla|causal_blocked|cudnn|{cudnn_padded,pallas_flash,padded}[_causal]
    shared_output_embedding: bool = True  # False: a separate output item table (SASRec ablation)
    # sasrec: "xavier" = SASRec's TF code (Xavier-uniform tables, items scaled by sqrt(hidden));
    # "normal" = gSASRec-pytorch (torch's nn.Embedding: N(0, 1) tables, no scaling); "small_normal" =
    # Klenitskiy & Vasilev's SASRec (every table and dense kernel N(0, 0.02), items scaled by sqrt(hidden));
    # bert4rec takes xavier or small_normal (BERT's initializer_range 0.02, which BERT4Rec's code uses)
    embedding_init: str = "xavier"
    mask_prob: float = 0.2  # bert4rec: probability that the cloze task masks an item
    # bert4rec: the paper's output head (dense -> GELU -> LayerNorm, per-item bias); false = Klenitskiy &
    # Vasilev's (Hugging Face BertModel: the last block's states scored straight against the item embedding)
    output_head: bool = True
    # bert4rec: a dense layer over the attention heads' outputs, as BERT (and so BERT4Rec's and K&V's code) has;
    # off by default because the reproduction table's rows ran without it
    attention_projection: bool = False
    # sasrec, bert4rec: rows of the position table. "from_end" counts back from the newest item (SASRec's and
    # BERT4Rec's code: left-padded windows); "from_start" counts from a history's first item (Klenitskiy &
    # Vasilev's code: right-padded batches). They differ only for histories shorter than max_len.
    positions: str = "from_end"
    loss: str = "bce"  # training loss: bce | bpr | ce | ce_chunked | gbce | sampled (see jaxrec/ops/losses.py)
    num_negatives: int = 256  # gbce, sampled: negatives per step, shared by every position of the batch
    gbce_t: float = 0.75  # gbce: calibration parameter t (0 = plain BCE with num_negatives)
    # gbce: "batch" = the num_negatives are shared by every position (one BxLxK matmul, cheap); "position" =
    # num_negatives drawn for each position, as gSASRec's reference (a BxLxKxD gather: use micro_batch to bound it)
    gbce_negatives: str = "batch"
    ce_chunk: int = 4096  # ce_chunked: catalogue rows per chunk
    # pinnerformer: per-event inputs besides the item; drop a name to ablate it or when the data lacks it
    event_features: tuple[str, ...] = ("action", "surface", "duration", "time", "gap", "age")
    # pinnerformer: periods (seconds) of the sin/cos "time" features: hour, day, week, mean month, mean year
    time_periods: tuple[float, ...] = (3600.0, 86400.0, 604800.0, 2629746.0, 31556952.0)
    num_actions: int = 8  # pinnerformer: rows of the action-type embedding (ids 1..num_actions-1, 0 = padding)
    num_surfaces: int = 8  # pinnerformer: rows of the surface embedding (ids 1..num_surfaces-1, 0 = padding)
    feature_dim: int = 8  # pinnerformer, youtube_dnn: width of each categorical (event or user) feature embedding
    item_tower: str = "id"  # pinnerformer: item embeddings from the "id" table, or an "mlp" over item features + id
    sampled_negatives: str = "uniform"  # loss=sampled: uniform | in_batch (drawn from the batch's positives)
    examples_per_user: int = 0  # gru4rec, mf, youtube_dnn: only the last K positions of a sequence carry loss; 0 = all
    history_window: int = 50  # youtube_dnn: items averaged into the user vector at each position (causal window)
    tower_layers: int = 3  # youtube_dnn: ReLU layers of the user tower (the last one is hidden wide)
    tower_width: int = 256  # youtube_dnn: width of the tower's other ReLU layers
    user_features: bool = False  # youtube_dnn: add gender/age/occupation embeddings (ML-1M users.dat)


def attention_dropout_rate(model: ModelConfig) -> float:
    """The attention-weight dropout rate `model` asks for (`attention_dropout`, or `dropout` when -1)."""
    return model.dropout if model.attention_dropout < 0 else model.attention_dropout


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_epochs: int = 200  # passes over the users (one sequence per user per epoch)
    batch_size: int = 128  # sequences per step
    learning_rate: float = 1e-3  # Adam learning rate
    adam_b1: float = 0.9  # Adam beta1
    adam_b2: float = 0.98  # Adam beta2 (SASRec uses 0.98)
    weight_decay: float = 0.0  # L2 on parameters via optax.add_decayed_weights (0 = off)
    seed: int = 42  # parameter init, dropout, data order and negatives
    micro_batch: int = 0  # sequences per gradient-accumulation micro-batch (0 = whole batch); same update
    # batch: the loss is the mean over the batch's positions. epoch: the batch's summed loss over the
    # target positions a batch of random users holds on average, so that with length buckets (batches
    # of short or of long histories) every position weighs the same, as in unbucketed random batches
    # (losses on a subset of positions, as BERT4Rec's cloze, are off by a constant factor Adam ignores).
    loss_normalizer: str = "batch"
    length_buckets: str = "auto"  # static sequence lengths batches are padded to: auto | none | comma list
    log_every: int = 50  # steps between progress updates
    max_train_seconds: float = 0.0  # wall-clock cap on training (0 = none); stops at an epoch end
    # Early stopping: stop once the validation metric has not improved for this many epochs (0 = never).
    # Checked at validation epochs (eval.every_epochs). Klenitskiy & Vasilev: 10 for SASRec, 20 for BERT4Rec.
    patience_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_epochs: int = 20  # validate every N epochs (and after the last)
    batch_size: int = 256  # users per evaluation batch
    num_negatives: int = 100  # sampled protocols: negatives the user never interacted with
    popularity_negatives: bool = True  # besides uniform ('_sampled'), popularity-drawn ones ('_popsampled')
    ks: tuple[int, ...] = (1, 5, 10, 20)  # cut-offs for HR@K and NDCG@K ("1,5,10" on the command line)
    select_metric: str = "valid/ndcg@10_full"  # metric that picks the best checkpoint (higher is better)
    full_ranking: bool = True  # also rank the target against the whole catalogue


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Two-tower retrieval (model.name = pinnerformer): loss, negatives, objective, temporal evaluation."""

    negatives: str = "mixed"  # in_batch | uniform | mixed (in-batch + uniform) | popularity
    num_sampled: int = 1024  # uniform / popularity negatives per step, shared by the whole batch
    logq: bool = True  # subtract log Q(x) from each candidate's logit (sampling-bias correction)
    frequency: str = "count_min"  # Q's item frequencies: exact (training counts) | count_min | youtube (streaming)
    sketch_depth: int = 4  # count_min / youtube: hash rows
    sketch_width: int = 16384  # count_min / youtube: buckets per row (epsilon = e / width)
    youtube_alpha: float = 0.01  # youtube: learning rate of the interval estimate
    temperature: float = 0.0  # fixed softmax temperature; 0 = learnable (floor 0.01)
    temperature_init: float = 0.05  # learnable temperature's initial value
    per_user_loss: bool = True  # weight users equally (PinnerFormer), not examples
    remove_accidental_hits: bool = True  # mask a negative equal to the example's positive
    objective: str = "dense_all_action"  # next | dense_next | all_action | dense_all_action
    window_events: int = 10  # all_action objectives: the future window of positives, in events
    all_action_positives: int = 8  # all_action: positives sampled from the last position's window
    dense_positions: int = 16  # dense_all_action: positions per sequence that each predict one positive
    test_fraction: float = 0.1  # global cut-off: the last share of interactions (in time) is test
    valid_fraction: float = 0.1  # of the events before it, the last share validates (checkpoint selection)
    unseen_users_only: bool = False  # test only users without training events
    eval_mode: str = "once"  # once | daily | realtime: when user embeddings are (re)computed
    eval_window_unit: str = "events"  # events | days: the window of positives after an evaluation point
    eval_window: float = 10.0  # its length in eval_window_unit
    ks: tuple[int, ...] = (10, 50, 100)  # Recall@K cut-offs


@dataclasses.dataclass(frozen=True)
class CTRConfig:
    """Click-through-rate ranking (model.name = wdl | wdl_seq | din | bst): examples, features, regularisation."""

    labels: str = "explicit"  # explicit: the event's action gives the label | implicit: next item 1, sampled items 0
    positive_actions: tuple[str, ...] = ()  # explicit: action names labelled 1; () = ratings 4,5 / click,save
    num_negatives: int = 1  # implicit: items sampled (label 0) per positive, never ones the user interacted with
    min_history: int = 1  # an example needs at least this many events strictly before its time
    valid_fraction: float = 0.1  # examples between the valid and test time quantiles validate (checkpoint choice)
    test_fraction: float = 0.1  # the last share of examples in time is test
    user_features: bool = True  # gender, age and occupation (ML-1M users.dat; random for synthetic) when found
    mlp: tuple[int, ...] = (1024, 512, 256)  # widths of the prediction MLP's hidden layers
    attention_mlp: tuple[int, ...] = (80, 40)  # din: hidden widths of the activation unit
    activation: str = "relu"  # MLP activation: relu | leaky_relu | prelu | dice (DIN's, with batch statistics)
    time_buckets: int = 32  # bst: rows of the log2(1 + seconds before the recommendation) bucket table (32: all)
    wide: bool = False  # din, bst: add WDL's wide part (item, genre, user-field biases and crosses) to the logit
    l2_reg: float = 0.0  # mini-batch aware L2 (DIN): item and genre rows in the batch, each weighted 1 / n_j
    # wdl_seq, din, bst: each history event also carries an embedding of its action (ML-1M: the rating),
    # so the sequence says what the user thought of an item, not only that they rated it
    history_actions: bool = False


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices: a (data, model) mesh; see jaxrec/engine/mesh.py for what each axis splits."""

    data: int = 0  # devices on the data axis (batch rows); 0 = all devices not on the model axis
    model: int = 1  # devices on the model axis (item-table rows: vocabulary parallelism)
    fsdp: bool = False  # also split item-table rows over the data axis (FSDP-style)
    # CPU backend: JAX devices to split the host into (data parallel over its cores; see
    # mesh.configure_cpu_devices for why); 0 = one per core (at most 8, a divisor of the batch sizes)
    cpu_devices: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    ctr: CTRConfig = dataclasses.field(default_factory=CTRConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


ORDERED_INT_TUPLES = ("ctr.mlp", "ctr.attention_mlp")  # integer lists kept in the order given (not sorted like ks)


def _coerce(value: str, field_type: Any, key: str) -> Any:
    """Parses the command-line string `value` as `field_type`."""
    if field_type is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if field_type in (int, float):
        try:
            return field_type(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {field_type.__name__}, got {value!r}") from None
    if field_type is str:
        return value
    if key in ORDERED_INT_TUPLES:  # layer widths: order matters and repeats are allowed
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected comma-separated integers, got {value!r}") from None
    if field_type == tuple[int, ...]:
        return parse_ks(value, key)
    if field_type in (tuple[str, ...], tuple[float, ...]):
        parts = tuple(part.strip() for part in value.split(",") if part.strip())
        if field_type == tuple[str, ...]:
            return parts
        try:
            return tuple(float(part) for part in parts)
        except ValueError:
            raise ConfigError(f"{key}: expected comma-separated numbers, got {value!r}") from None
    raise ConfigError(f"{key}: fields of type {field_type} cannot be set from the command line")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(cfg: Config, key: str, value: str) -> Config:
    """Returns `cfg` with `section.field` set to `value` (a string, coerced by type)."""
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {key!r}: expected section.field, e.g. train.num_epochs")
    section_name, field_name = parts
    section_types = _field_types(Config)
    if section_name not in section_types:
        raise ConfigError(f"unknown config section {section_name!r} in {key!r}; known: {', '.join(section_types)}")
    section = getattr(cfg, section_name)
    types_ = _field_types(type(section))
    if field_name not in types_:
        raise ConfigError(f"unknown config key {key!r}; known in {section_name}: {', '.join(types_)}")
    new_value = _coerce(value, types_[field_name], key)
    return dataclasses.replace(cfg, **{section_name: dataclasses.replace(section, **{field_name: new_value})})


def apply_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Applies `key=value` strings in order."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"--set {assignment!r}: expected key=value")
        key, value = assignment.split("=", 1)
        cfg = override(cfg, key.strip(), value)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuilds a Config from `to_dict` output; unknown keys are errors."""
    sections = {}
    for name, cls in _field_types(Config).items():
        raw = dict(d.get(name, {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown config keys in {name}: {', '.join(sorted(unknown))}")
        for key, value in raw.items():
            if isinstance(value, list):  # JSON has no tuples
                raw[key] = tuple(value)
        sections[name] = cls(**raw)
    unknown_sections = set(d) - set(sections)
    if unknown_sections:
        raise ConfigError(f"unknown config sections: {', '.join(sorted(unknown_sections))}")
    return Config(**sections)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def parse_ks(ks: str, key: str = "eval.ks") -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(k) for k in ks.split(",") if k.strip()}))
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated integers, got {ks!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{key}: expected positive integers, got {ks!r}")
    return values


NEGATIVES = ("in_batch", "uniform", "mixed", "popularity")
FREQUENCIES = ("exact", "count_min", "youtube")
OBJECTIVES = ("next", "dense_next", "all_action", "dense_all_action")
LOSSES = ("bce", "bpr", "ce", "ce_chunked", "gbce", "sampled")
CTR_MODELS = ("wdl", "wdl_seq", "din", "bst")
CTR_ACTIVATIONS = ("relu", "leaky_relu", "prelu", "dice")


def validate(cfg: Config) -> None:
    """Cross-field and range checks; raises ConfigError naming the offending key."""
    checks = [
        (cfg.model.max_len >= 2, "model.max_len must be >= 2"),
        (cfg.model.hidden >= 1, "model.hidden must be >= 1"),
        (cfg.model.num_blocks >= 1, "model.num_blocks must be >= 1"),
        (cfg.model.num_heads >= 1, "model.num_heads must be >= 1"),
        (cfg.model.hidden % cfg.model.num_heads == 0, "model.hidden must be divisible by model.num_heads"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (
            cfg.model.attention_dropout == -1.0 or 0.0 <= cfg.model.attention_dropout < 1.0,
            "model.attention_dropout must be -1 or in [0, 1)",
        ),
        (cfg.model.loss in LOSSES, f"model.loss must be one of {', '.join(LOSSES)}"),
        (
            cfg.model.embedding_init in ("xavier", "normal", "small_normal"),
            "model.embedding_init must be xavier, normal or small_normal",
        ),
        (
            cfg.model.embedding_init == "xavier"
            or cfg.model.name == "sasrec"
            or (cfg.model.embedding_init == "small_normal" and cfg.model.name == "bert4rec"),
            f"model.embedding_init={cfg.model.embedding_init} is not implemented for {cfg.model.name}",
        ),
        (
            not cfg.model.attention_projection or cfg.model.name == "bert4rec",
            "model.attention_projection=true is only for bert4rec",
        ),
        (0.0 < cfg.model.mask_prob < 1.0, "model.mask_prob must be in (0, 1)"),
        (cfg.model.positions in ("from_end", "from_start"), "model.positions must be from_end or from_start"),
        (cfg.model.output_head or cfg.model.name == "bert4rec", "model.output_head=false is only for bert4rec"),
        (
            cfg.model.positions == "from_end" or cfg.model.name in ("sasrec", "bert4rec"),
            "model.positions=from_start is only implemented for sasrec and bert4rec",
        ),
        (
            cfg.model.name != "bert4rec" or cfg.model.loss not in ("bce", "bpr"),
            "bert4rec trains with ce, ce_chunked, gbce or sampled",
        ),
        (cfg.model.sampled_negatives in ("uniform", "in_batch"), "model.sampled_negatives must be uniform or in_batch"),
        (cfg.model.examples_per_user >= 0, "model.examples_per_user must be >= 0"),
        (
            cfg.model.examples_per_user == 0 or cfg.model.name in ("gru4rec", "mf", "youtube_dnn"),
            "model.examples_per_user is only used by gru4rec, mf and youtube_dnn",
        ),
        (cfg.model.history_window >= 1, "model.history_window must be >= 1"),
        (cfg.model.tower_layers >= 1 and cfg.model.tower_width >= 1, "model.tower_layers/tower_width must be >= 1"),
        (not cfg.model.user_features or cfg.model.name == "youtube_dnn", "model.user_features is youtube_dnn's"),
        (cfg.model.num_negatives >= 1, "model.num_negatives must be >= 1"),
        (0.0 <= cfg.model.gbce_t <= 1.0, "model.gbce_t must be in [0, 1]"),
        (cfg.model.gbce_negatives in ("batch", "position"), "model.gbce_negatives must be batch or position"),
        (cfg.model.ce_chunk >= 1, "model.ce_chunk must be >= 1"),
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
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if not cfg.eval.ks or min(cfg.eval.ks) < 1:
        raise ConfigError(f"eval.ks must be positive integers, got {cfg.eval.ks!r}")
    if cfg.eval.select_metric.split("/")[0] != "valid":
        raise ConfigError(
            f"eval.select_metric must be a valid/ metric (never select on test), got {cfg.eval.select_metric!r}"
        )
    if cfg.model.name == "pinnerformer":
        known = [f"valid/recall@{k}" for k in cfg.retrieval.ks]
    elif cfg.model.name in CTR_MODELS:
        known = ["valid/auc", "valid/gauc"]
    else:
        protocols = ("sampled", "full") if cfg.eval.full_ranking else ("sampled",)
        if cfg.eval.popularity_negatives:
            protocols += ("popsampled",)
        known = [f"valid/mrr_{p}" for p in protocols]
        known += [f"valid/{m}@{k}_{p}" for p in protocols for m in ("hr", "ndcg") for k in cfg.eval.ks]
    if cfg.eval.select_metric not in known:
        raise ConfigError(f"eval.select_metric {cfg.eval.select_metric!r} is not computed; choose one of {known}")
