"""Side-by-side measurements: meshkit beside a reference, in the same run."""
