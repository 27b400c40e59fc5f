"""jaxrec: sequential recommenders in JAX/Flax (SASRec, BERT4Rec, PinnerFormer-style two-tower retrieval)."""

__version__ = "0.1.0"

# The model registry is filled on import, before any config names a model (jaxrec.registry).
import jaxrec.models  # noqa: E402, F401
