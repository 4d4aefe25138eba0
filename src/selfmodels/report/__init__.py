"""Tables, plots and markdown reports, with the papers' reference numbers side by side.

- :mod:`~selfmodels.report.markdown`: markdown tables and number formatting.
- :mod:`~selfmodels.report.figures`: figures drawn without pyplot and saved as PNG atomically
  (``save_figure``); every plotting module uses it, so none switches the matplotlib backend.
"""
