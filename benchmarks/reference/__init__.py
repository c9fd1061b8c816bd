"""The baseline every speed benchmark compares against: the pipeline as the PRM authors'
code runs it (one image at a time, one autograd backward per peak, a Python loop over
proposals with OpenCV), written here from the algorithm."""
