"""What a load tester shows: the live view (`watch()`), and the report written at a run's end.

- `figures`: the figures of a run (users, rates, TTD percentiles, errors) from two metric
  snapshots, per node and in total;
- `live`: the refreshing table with a progress bar;
- `recorder`: one row of figures a second while a scenario runs;
- `html`: the report directory (offline HTML with SVG plots, the series as CSV).
"""
