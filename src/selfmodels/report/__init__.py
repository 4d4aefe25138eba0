"""Tables, plots and markdown reports, with the papers' reference numbers side by side."""
