"""SASRec on MovieLens-1M with the paper's settings (Kang & McAuley 2018, section IV-B).

max_len 200, 2 blocks, 1 head, hidden 50, dropout 0.2, batch 128, Adam lr 1e-3 (b2 0.98).
"""

from jaxrec.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-sasrec"),
        model=ModelConfig(name="sasrec", max_len=200, hidden=50, num_blocks=2, num_heads=1, dropout=0.2),
        # micro_batch only changes speed (gradient accumulation; the update is the batch of 128).
        train=TrainConfig(num_epochs=200, batch_size=128, micro_batch=16, learning_rate=1e-3),
        eval=EvalConfig(every_epochs=20, num_negatives=100),
    )
