"""The explorer page: one self-contained HTML file (its script, style and data inlined) and the arrays beside it.

:func:`write_explorer` reopens a run directory (:func:`selfmodels.forward.explore.open_run`), computes the
per-token data of every pair (:func:`selfmodels.forward.explore.token_data`), saves it whole as ``.npz`` and
embeds a budget of it in the page (:mod:`.page`): the first ``sequences`` held-out windows in full and the
``worst`` positions of the whole evaluation set with their context, each with its attention rows.
"""

from selfmodels.forward.explorer.page import render_page, write_explorer

__all__ = ["render_page", "write_explorer"]
