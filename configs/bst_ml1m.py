"""BST (Chen et al., 2019, Behavior Sequence Transformer) CTR ranker on ML-1M ratings with timestamps, explicit labels.

The paper's settings: sequence length 20, 1 block, 8 heads, dropout 0.2, batch 256, MLP 1024-512-256 with
LeakyReLU; each position is [item, genres, embedding of the bucketed time before the recommendation],
plus its rating (`ctr.history_actions`; `--set ctr.history_actions=false` for the paper's features).
`--set model.num_blocks=2` gives the two-block row of benchmarks/ctr_table.py.
"""

from jaxrec.config import Config, CTRConfig, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.rankers import RankerConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-partial"),
        model=RankerConfig(name="bst", max_len=20, hidden=32, num_blocks=1, num_heads=8, dropout=0.2),
        train=TrainConfig(num_epochs=3, batch_size=256, learning_rate=1e-3, adam_b2=0.999, log_every=100),
        eval=EvalConfig(every_epochs=1, batch_size=1024, select_metric="valid/auc"),
        ctr=CTRConfig(
            labels="explicit",
            mlp=(1024, 512, 256),
            activation="leaky_relu",
            time_buckets=32,
            history_actions=True,
        ),
    )
