"""DIN (Zhou et al., KDD 2018) CTR ranker on ML-1M ratings with timestamps (users 1..2999), explicit labels.

The activation unit (MLP 80-40 over [event, candidate, difference, product]) weights the last 20 events
without softmax normalisation; MLP 200-80 with Dice, mini-batch aware L2 on the item and genre rows
(`ctr.l2_reg`, not tuned). Split: the last 10% of examples in time test, the 10% before validate.
Each history event carries its rating (`ctr.history_actions`): on explicit labels, what the user
thought of the films the candidate resembles is the signal; `--set ctr.history_actions=false` gives
the paper's ids-only events (benchmarks/ctr_table.py has both rows).
"""

from jaxrec.config import Config, CTRConfig, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.rankers import RankerConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-partial"),
        model=RankerConfig(name="din", max_len=20, hidden=32, num_blocks=1, num_heads=1, dropout=0.0),
        train=TrainConfig(num_epochs=3, batch_size=256, learning_rate=1e-3, adam_b2=0.999, log_every=100),
        eval=EvalConfig(every_epochs=1, batch_size=1024, select_metric="valid/auc"),
        ctr=CTRConfig(
            labels="explicit",
            mlp=(200, 80),
            attention_mlp=(80, 40),
            activation="dice",
            l2_reg=0.1,
            history_actions=True,
        ),
    )
