"""Digital-twin trajectory prediction: buffers, predictors, metrics."""
