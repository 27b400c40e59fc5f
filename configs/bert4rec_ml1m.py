"""BERT4Rec on MovieLens-1M with full-catalogue CE on masked items.

Sizes follow Klenitskiy & Vasilev (RecSys 2023): hidden 64, dropout 0.1, max_len 200, 2 blocks,
2 heads, mask_prob 0.2, batch 128, Adam lr 1e-3 (their public configs; benchmarks/reproduce.py
adds their Adam beta2 0.999 and 200 epochs). The CE scores only the masked positions
(BERT4Rec.target_fraction -> losses.sparse_target_ce).
"""

from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.bert4rec import BERT4RecConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-sasrec"),
        model=BERT4RecConfig(
            max_len=200,
            hidden=64,
            num_blocks=2,
            num_heads=2,
            dropout=0.1,
            mask_prob=0.2,
            loss="ce_chunked",
            ce_chunk=1024,
        ),
        # epoch normaliser: with length buckets, every masked position weighs the same, as in K&V's
        # unbucketed batches (see TrainConfig.loss_normalizer).
        train=TrainConfig(num_epochs=200, batch_size=128, micro_batch=16, learning_rate=1e-3, loss_normalizer="epoch"),
        eval=EvalConfig(every_epochs=10, num_negatives=100),
    )
