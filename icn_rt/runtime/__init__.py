"""Running a trained model: preprocessing, the predictor, batch inference and pictures."""
