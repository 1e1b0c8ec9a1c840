"""The engine: an audit's settings, models, labels, datasets and the stages that run the method on them."""
