"""Tables and figures, rendered only from the pipeline's results/**/*.json and saved models."""
