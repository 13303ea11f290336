"""Built-in plugins: integrations and extra probes/panels, loaded through `inspector.plugins`.

Each subpackage publishes a `register(ctx)` function under the entry-point group
`inspector.plugins` (see `pyproject.toml`); `weight_norm` is the worked example of the contract.
"""
