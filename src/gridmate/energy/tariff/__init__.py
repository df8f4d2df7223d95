"""Time-of-use tariffs: ``schedule`` turns a tariff (seasons, periods, holidays, event
days, effective dates) into each day's periods and prices; ``presets`` holds the
utilities' published plans with where each came from."""
