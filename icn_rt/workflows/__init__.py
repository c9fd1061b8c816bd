"""Jobs that chain the runtime and training layers (the student's teach-then-learn)."""
