"""jaxrec: sequential recommenders in JAX/Flax (SASRec, BERT4Rec, PinnerFormer-style two-tower retrieval)."""

__version__ = "0.1.0"
