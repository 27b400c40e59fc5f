"""PinnerFormer-style two-tower retrieval on the ML-1M ratings with timestamps (users 1..2999).

The rating is the action type; genres are the item categories (Entropy@50). The global cut-off keeps
the last 10% of interactions for test; windows are counted in events because most ML-1M users rated
everything within a day. Mixed negatives with logQ and the dense all-action objective are
PinnerFormer's best setting; `--set retrieval.negatives=in_batch --set retrieval.logq=false` etc.
give the other rows of benchmarks/results/pinnerformer_ml1m.
"""

from jaxrec.config import Config, DataConfig, EvalConfig, RetrievalConfig, TrainConfig
from jaxrec.models.pinnerformer import PinnerFormerConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-partial"),
        model=PinnerFormerConfig(
            max_len=64,
            hidden=64,
            num_blocks=2,
            num_heads=2,
            dropout=0.1,
            event_features=("action", "time", "gap", "age"),
        ),
        train=TrainConfig(num_epochs=40, batch_size=128, learning_rate=1e-3, adam_b2=0.999),
        eval=EvalConfig(every_epochs=5, batch_size=256, select_metric="valid/recall@10"),
        retrieval=RetrievalConfig(
            negatives="mixed",
            num_sampled=1024,
            logq=True,
            frequency="count_min",
            objective="dense_all_action",
            window_events=10,
            eval_mode="once",
            eval_window=10,
        ),
    )
