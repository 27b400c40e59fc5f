"""Pallas kernels, each `pallas_<op>()` beside its plain-jnp `reference_<op>()`."""
