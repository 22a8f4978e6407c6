"""LungViz: explainable chest X-ray and CT classification.

The library holds everything that is not user interface: image input, the model
registry, explanation methods, training, evaluation and figures. It never imports
Streamlit, so the CLI, the tests and the dashboard share one code path.
"""

__version__ = "0.1.0"
