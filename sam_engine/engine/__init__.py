"""The data engine: seed training, stages 1 to 3 and the final evaluation, as resumable steps of a run."""
