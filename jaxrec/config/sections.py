"""The config sections every task shares (data, train, eval, mesh), the task sections (retrieval, ctr), and
the `Config` that composes them with the model's section.

`Config.model` holds an instance of the model's own config class, chosen by `model.name`
(`jaxrec.models.config_class_of`); the default is SASRec's.
"""

from __future__ import annotations

import dataclasses

from jaxrec.config.model import ModelConfigBase, config_class_of

DEFAULT_MODEL = "sasrec"  # the model of a Config() built without one


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


def default_model_config() -> ModelConfigBase:
    """DEFAULT_MODEL's config with its defaults."""
    return config_class_of(DEFAULT_MODEL)()


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfigBase = dataclasses.field(default_factory=default_model_config)  # model.name's class
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    ctr: CTRConfig = dataclasses.field(default_factory=CTRConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
