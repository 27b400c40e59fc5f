"""BERT4Rec on MovieLens-1M with full-catalogue CE on masked items.

Sizes follow Klenitskiy & Vasilev (RecSys 2023): hidden 64, dropout 0.1, max_len 200, 2 blocks,
2 heads, mask_prob 0.2; batch size and learning rate are not yet checked against their public
configs (the reproduction harness of the full-catalogue issue will do that).
"""

from jaxrec.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-sasrec"),
        model=ModelConfig(
            name="bert4rec",
            max_len=200,
            hidden=64,
            num_blocks=2,
            num_heads=2,
            dropout=0.1,
            mask_prob=0.2,
            loss="ce_chunked",
            ce_chunk=1024,
        ),
        train=TrainConfig(num_epochs=200, batch_size=128, micro_batch=16, learning_rate=1e-3),
        eval=EvalConfig(every_epochs=10, num_negatives=100),
    )
