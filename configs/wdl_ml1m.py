"""Wide & Deep CTR ranker on ML-1M ratings with timestamps (users 1..2999): explicit labels (rating >= 4).

Wide: candidate item bias, genre weights, user-field biases and user-field x genre crosses; deep: MLP
1024-512-256 with ReLU (Cheng et al., 2016) over [user fields, candidate item and genres].
`--set model.name=wdl_seq` adds the mean of the last `model.max_len` events to the deep input (WDL+Seq),
each event with its rating (`ctr.history_actions`; WDL itself has no history and ignores it).
Split: the last 10% of examples in time test, the 10% before validate (checkpoint by valid/auc).
"""

from jaxrec.config import Config, CTRConfig, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.rankers import RankerConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-partial"),
        model=RankerConfig(name="wdl", max_len=20, hidden=32, num_blocks=1, num_heads=1, dropout=0.0),
        train=TrainConfig(num_epochs=3, batch_size=256, learning_rate=1e-3, adam_b2=0.999, log_every=100),
        eval=EvalConfig(every_epochs=1, batch_size=1024, select_metric="valid/auc"),
        ctr=CTRConfig(
            labels="explicit",
            mlp=(1024, 512, 256),
            activation="relu",
            history_actions=True,
        ),
    )
