"""hadis's shared code: the schemas, the bus and the store, settings, policies, models and experiments."""

# hadis/__init__.py checks it: `shared` is a common package name, and another project's would
# otherwise surface as a confusing missing submodule.
DISTRIBUTION = "hadis"
