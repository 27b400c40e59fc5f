"""SASRec on generated data: runs offline in a minute, for smoke tests and CI."""

from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.sasrec import SASRecConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="synthetic", synthetic_users=1000, synthetic_items=300, synthetic_mean_length=30),
        model=SASRecConfig(max_len=50, hidden=32, num_blocks=2, num_heads=1, dropout=0.2),
        train=TrainConfig(num_epochs=20, batch_size=128, learning_rate=1e-3),
        eval=EvalConfig(every_epochs=5, num_negatives=100),
    )
