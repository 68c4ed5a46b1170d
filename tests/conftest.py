import os

from hypothesis import HealthCheck, settings

# CI explores more examples; neither profile has a per-example deadline,
# because a loaded 2-core CI machine would turn it into a flaky timing test.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
