"""The model registry's one dict: model name -> Linen module class (its `config_class`, its `task`).

It imports nothing, so that both sides can reach it: `jaxrec.models` fills it (one line per model), and the
config package looks a model's config class up in it without importing the models (which import the config
package for their base classes). `import jaxrec` imports `jaxrec.models`, so it is full before any lookup.
"""

MODELS: dict[str, type] = {}
