"""The production settings, with the rate limits optionally taken from the environment.

Only for benchmarks and the scale-out test: a race of twenty requests on one account, or a
load test from one address, must reach the code being measured instead of stopping at the
per-account or per-address rate limit. Unset variables keep the production values.
"""

import os

from config.settings import *  # noqa: F403

for _name in (
    "MFA_CODE_RATE",
    "MFA_CODE_IP_RATE",
    "MFA_LOGIN_USER_RATE",
    "MFA_LOGIN_IP_RATE",
):
    if os.environ.get(_name):
        globals()[_name] = os.environ[_name]
