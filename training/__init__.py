"""Training pipeline for fer_async: explore, data, models, train, evaluate."""
