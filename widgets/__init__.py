"""Front-end sources of the custom widgets (anywidget ES modules + CSS), shipped as `triangle_nb._widgets`."""
