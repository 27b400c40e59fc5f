"""What the tasks have in common that the engine need not know."""

# Settings only the next-item task reads: its position-level loss (micro-batches, the epoch normaliser, length
# buckets), its leave-one-out protocols and its validation users. The example-level tasks (retrieval, CTR)
# refuse them when they are set.
NEXT_ITEM_ONLY_KEYS = (
    "train.micro_batch",
    "train.loss_normalizer",
    "train.length_buckets",
    "eval.num_negatives",
    "eval.popularity_negatives",
    "eval.ks",
    "eval.full_ranking",
    "data.validation_users",
)
