"""One module per page. Each has PATH, TITLE, `layout()` and `register(app, context)`."""
from inspector.dash_app.pages import (activations, attention, compare, experts, gradients, inference, overview,
                                        plugins, system)

PAGE_MODULES = [overview, attention, gradients, activations, experts, inference, system, compare, plugins]
"""Every page, in menu order."""
