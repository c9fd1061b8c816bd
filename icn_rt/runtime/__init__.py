"""Running a trained model: the predictor, the engines it runs the networks on, the
streaming batch job (``icn-rt infer``), the benchmark (``icn-rt bench``) and pictures."""
