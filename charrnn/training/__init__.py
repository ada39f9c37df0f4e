"""Training: the loop, the time-budget planner, data-parallel processes."""
