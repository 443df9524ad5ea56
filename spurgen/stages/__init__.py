"""The stages of a run (train -> generate -> evaluate): each composes data, models, losses and eval."""
