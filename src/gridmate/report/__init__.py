"""Daily metrics and the daily report, built from the energy journal."""
