"""The shipped demo model (``shapes-llava``): its construction, training and location."""
